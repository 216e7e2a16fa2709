"""napari writer: an Image layer to TIFF (ImageJ, or OME for BigTIFF) or OME-Zarr, keeping
its scale as the voxel size (napari#5162: voxel size lost on save)."""
from __future__ import annotations

import numpy as np


def _unit(meta: dict) -> str:
    """The short name (io.short_unit) of the layer's length unit, else what zup recorded."""
    from .io import short_unit

    units = meta.get("units")
    if units and short_unit(units[0]):
        return short_unit(units[0])
    return str(meta.get("metadata", {}).get("zup", {}).get("unit") or "nm")


def write_image(path: str, data, meta: dict) -> list[str]:
    """npe2 single-layer writer: ``path`` ends in .tif/.tiff or .zarr (OME-Zarr)."""
    from .io import write_volume

    if getattr(data, "ndim", 0) != 3 or meta.get("rgb"):
        raise ValueError(
            f"napari-zup writes 3D grayscale stacks (z, y, x); this layer has shape "
            f"{tuple(getattr(data, 'shape', ()))}{' (RGB)' if meta.get('rgb') else ''}. "
            "Save it with napari's builtin writer instead"
        )
    scale = tuple(float(s) for s in meta.get("scale", (1.0, 1.0, 1.0)))
    voxel = None if all(s == 1.0 for s in scale) and not meta.get("units") else scale
    zup_meta = {k: v for k, v in meta.get("metadata", {}).get("zup", {}).items()
                if isinstance(v, (str, int, float, bool, list)) or v is None}
    # napari's save dialog has already asked before replacing an existing file.
    out = write_volume(path, data if hasattr(data, "shape") else np.asarray(data),
                       voxel_size=voxel, unit=_unit(meta), overwrite=True,
                       metadata=zup_meta or None)
    return [str(out)]
