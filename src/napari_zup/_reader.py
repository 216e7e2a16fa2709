"""napari reader: TIFF (ImageJ / OME metadata), Zarr / OME-Zarr, a folder of 2D slices
(TIFF/PNG), HDF5 (every 3D dataset) and MRC -> Image layers whose ``scale`` is the voxel size
(z, y, x) and whose units come from the file.

napari's builtin TIFF reader ignores ImageJ's voxel size (napari#5165); this one goes through
:func:`napari_zup.io.read_volume`, which reads it, and opens large files lazily (dask).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .formats import HDF5_SUFFIXES, MRC_SUFFIXES, SLICE_SUFFIXES, is_zarr_dir

TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8")
#: HDF5 integer datasets with these words in their name open as Labels layers.
_LABEL_NAMES = re.compile(r"label|seg|ids|mask", re.I)


def _is_slice_folder(p: Path) -> bool:
    return p.is_dir() and not is_zarr_dir(p) and any(
        f.suffix.lower() in SLICE_SUFFIXES and not f.name.startswith(".") for f in p.iterdir())


def get_reader(path):
    """npe2 ``get_reader``: a reader function for a TIFF, HDF5 or MRC file, a Zarr folder or a
    folder of 2D slices, else None."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None  # one volume at a time; napari then tries other readers
        path = path[0]
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in TIFF_SUFFIXES or suffix in MRC_SUFFIXES or is_zarr_dir(p):
        return read_layer_data
    if suffix in HDF5_SUFFIXES or re.search(r"\.(h5|hdf5|hdf|he5):", str(path), re.I):
        return read_layer_data
    if _is_slice_folder(p):
        return read_layer_data
    return None


def _layer_name(vol) -> str:
    if not vol.path:
        return "volume"
    fmt = vol.metadata.get("format") if vol.metadata else None
    if fmt == "hdf5":  # "file.h5:/volumes/raw", not "raw"
        file, _, dataset = vol.path.rpartition(":")
        return f"{Path(file).name}:{dataset}"
    p = Path(vol.path)
    if fmt == "slices" and not p.is_dir():  # a glob: name it after its folder
        return f"{p.parent.name or '.'}/{p.name}"
    return p.name


def layer_data_from_volume(vol, name: str | None = None, extra_metadata: dict | None = None):
    """(data, add_kwargs, "image") for a :class:`napari_zup.io.Volume`."""
    data = vol.data
    kwargs: dict = {"name": name or _layer_name(vol)}
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
    """Read ``path`` into Image layers (see :func:`get_reader`): one per volume; an HDF5 file
    without a dataset path gives one layer per 3D dataset (label-like integer ones as Labels)."""
    from .formats import MultipleDatasetsError, read_hdf5
    from .io import read_volume

    if isinstance(path, (list, tuple)):
        path = path[0]
    try:
        vol = read_volume(path)
    except MultipleDatasetsError as exc:
        layers = []
        for name, _, dtype in exc.datasets:
            v = read_hdf5(exc.path, dataset=name)
            data, kw, kind = layer_data_from_volume(v, name=f"{Path(exc.path).name}:{name}")
            if np.dtype(dtype).kind in "ui" and _LABEL_NAMES.search(name):
                kind = "labels"
                kw.pop("contrast_limits", None)
            layers.append((data, kw, kind))
        return layers
    return [layer_data_from_volume(vol)]
