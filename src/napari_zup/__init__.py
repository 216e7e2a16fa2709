"""napari-zup: isotropic reconstruction of anisotropic volume-EM stacks.

Qt-free core: :mod:`napari_zup.engine` (streaming, tiled reconstruction),
:mod:`napari_zup.methods` (one module per method), :mod:`napari_zup.evaluation` (the fixed
drop-and-restore protocol), :mod:`napari_zup.io` (TIFF / OME-Zarr with voxel size).
The napari widgets live in :mod:`napari_zup._qt` and only call the core.
"""
__version__ = "0.1.0"

from .engine import iter_reconstruct, reconstruct  # noqa: E402

__all__ = ["__version__", "iter_reconstruct", "reconstruct"]
