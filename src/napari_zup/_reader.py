"""napari reader: TIFF (ImageJ / OME metadata) and Zarr / OME-Zarr -> an Image layer whose
``scale`` is the voxel size (z, y, x) and whose units come from the file.

napari's builtin TIFF reader ignores ImageJ's voxel size (napari#5165); this one goes through
:func:`napari_zup.io.read_volume`, which reads it, and opens large files lazily (dask).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8")


def _is_zarr(p: Path) -> bool:
    return p.suffix.lower() == ".zarr" or (
        p.is_dir() and any((p / f).exists() for f in (".zattrs", ".zarray", ".zgroup", "zarr.json"))
    )


def get_reader(path):
    """npe2 ``get_reader``: a reader function for a TIFF file or a Zarr folder, else None."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None  # one volume at a time; napari then tries other readers
        path = path[0]
    p = Path(path)
    if p.suffix.lower() in TIFF_SUFFIXES or _is_zarr(p):
        return read_layer_data
    return None


def layer_data_from_volume(vol, name: str | None = None, extra_metadata: dict | None = None):
    """(data, add_kwargs, "image") for a :class:`napari_zup.io.Volume`."""
    data = vol.data
    kwargs: dict = {"name": name or (Path(vol.path).name if vol.path else "volume")}
    meta = {"zup": {"voxel_size": list(vol.voxel_size) if vol.voxel_size else None,
                    "unit": vol.unit, "source": vol.path, **(extra_metadata or {})},
            "file": vol.metadata}
    if data.ndim == 3:
        kwargs["axis_labels"] = ("z", "y", "x")
        if vol.voxel_size:
            kwargs["scale"] = tuple(float(s) for s in vol.voxel_size)
            kwargs["units"] = (vol.unit,) * 3
    if not isinstance(data, np.ndarray) and data.ndim >= 2:
        # Lazy data: contrast from the middle slice instead of a pass over the whole file.
        mid = np.asarray(data[data.shape[0] // 2])
        lo, hi = float(mid.min()), float(mid.max())
        kwargs["contrast_limits"] = (lo, hi if hi > lo else lo + 1)
    kwargs["metadata"] = meta
    return data, kwargs, "image"


def read_layer_data(path):
    """Read ``path`` into one Image layer (see :func:`get_reader`)."""
    from .io import read_volume

    if isinstance(path, (list, tuple)):
        path = path[0]
    vol = read_volume(path)
    return [layer_data_from_volume(vol)]
