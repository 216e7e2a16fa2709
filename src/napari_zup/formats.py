"""The other inputs volume-EM users have: a folder or glob of 2D slices (TIFF, PNG), HDF5
(``file.h5:/volumes/raw``) and MRC. Each reader returns an :class:`napari_zup.io.Volume`
with the voxel size (z, y, x) in nm where the file records it; :func:`napari_zup.io.read_volume`
dispatches here, so the CLI, the napari reader and the widgets all accept them.

Large inputs stay on disk: the data is a dask array over a small picklable reader (one file,
one HDF5 dataset or one memory-mapped MRC per task), so a distributed run can ship it to its
workers. Small inputs (under :data:`napari_zup.io.LAZY_BYTES`) are read into numpy.
"""
from __future__ import annotations

import glob
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from .io import UNKNOWN_UNIT, Volume, VolumeReadError, is_pixel_unit, unit_to_nm

SLICE_SUFFIXES = (".tif", ".tiff", ".png")
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5")
MRC_SUFFIXES = (".mrc", ".rec", ".map")
_ZARR_MARKERS = (".zattrs", ".zarray", ".zgroup", "zarr.json")
_HDF5_SPEC = re.compile(r"^(?P<file>.+?\.(?:h5|hdf5|hdf|he5))(?::(?P<dataset>.*))?$", re.I)
#: HDF5 attributes that hold the voxel size (z, y, x) and the factor to nm.
_HDF5_VOXEL_ATTRS = (("resolution", 1.0), ("element_size_um", 1e3))


# -- which reader ------------------------------------------------------------------------------

def is_zarr_dir(p: Path) -> bool:
    return p.suffix.lower() == ".zarr" or (
        p.is_dir() and any((p / m).exists() for m in _ZARR_MARKERS))


def _has_magic(text: str) -> bool:
    return any(c in text for c in "*?[")


def format_of(path) -> str | None:
    """"slices", "hdf5" or "mrc" when one of this module's readers handles ``path``; None for
    what :mod:`napari_zup.io` reads itself (TIFF stacks, Zarr) or does not read."""
    text = str(path)
    p = Path(text)
    if _has_magic(text) and not p.exists():
        return "slices"
    if _HDF5_SPEC.match(text):
        return "hdf5"
    if p.suffix.lower() in MRC_SUFFIXES:
        return "mrc"
    if p.is_dir() and not is_zarr_dir(p):
        return "slices"
    return None


def input_paths(spec) -> list[str]:
    """The files or folders an input names: a glob's matches, an HDF5 spec's file, else itself
    (what :func:`napari_zup.io.check_not_input` compares an output with)."""
    text = str(spec)
    kind = format_of(text)
    if kind == "slices" and not Path(text).is_dir():
        return sorted(glob.glob(text)) or [text]
    if kind == "hdf5":
        return [split_hdf5(text)[0]]
    return [text]


def read_format(path, kind: str | None = None, lazy: bool | None = None) -> Volume:
    """Read ``path`` with the reader :func:`format_of` names."""
    kind = kind or format_of(path)
    if kind == "slices":
        return read_slices(path, lazy)
    if kind == "hdf5":
        return read_hdf5(path, lazy=lazy)
    if kind == "mrc":
        return read_mrc(path, lazy)
    raise VolumeReadError(f"{str(path)!r}: not a slice folder/glob, HDF5 or MRC file")


def _use_lazy(shape, dtype, lazy: bool | None) -> bool:
    from . import io

    if lazy is not None:
        return lazy
    return int(np.prod(shape)) * np.dtype(dtype).itemsize > io.LAZY_BYTES


def _as_dask(reader, z_chunk: int = 1):
    import dask.array as da

    z, y, x = reader.shape
    return da.from_array(reader, chunks=(max(1, min(z_chunk, z)), y, x), inline_array=True,
                         meta=np.empty((0, 0, 0), reader.dtype), name=f"zup-{reader.token()}")


def _z_indices(key, n: int):
    """(z indices, the rest of the key, whether z was an integer) for a getitem key."""
    key = key if isinstance(key, tuple) else (key,)
    if any(k is Ellipsis for k in key):
        i = key.index(Ellipsis)
        key = key[:i] + (slice(None),) * (3 - len(key) + 1) + key[i + 1:]
    first = key[0] if key else slice(None)
    scalar = isinstance(first, (int, np.integer))
    idx = np.atleast_1d(np.arange(n)[first])
    return idx, tuple(key[1:]), scalar


# -- a folder or glob of 2D slices -----------------------------------------------------------

def natural_key(name: str):
    """Sort key that puts slice2 before slice10."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def slice_files(spec) -> list[Path]:
    """The slice files of a folder or glob, in natural order; refuses an empty or mixed set."""
    text = str(spec)
    p = Path(text)
    if p.is_dir():
        files = [f for f in p.iterdir() if f.is_file() and not f.name.startswith(".")
                 and f.suffix.lower() in SLICE_SUFFIXES]
        where = f"folder {text!r}"
    else:
        files = [Path(f) for f in glob.glob(text) if Path(f).is_file()]
        where = f"pattern {text!r}"
        if not files:
            raise VolumeReadError(f"no file matches {where}; check the folder and the pattern "
                                  '(quote it: "slices/*.tif")')
        odd = [f for f in files if f.suffix.lower() not in SLICE_SUFFIXES]
        if odd:
            raise VolumeReadError(
                f"{where} matches {odd[0].name!r}, which is not a .tif/.tiff/.png slice; "
                "narrow the pattern (e.g. \"slices/*.tif\")")
    if not files:
        raise VolumeReadError(
            f"{where} holds no .tif/.tiff/.png slices and is not a Zarr store; give a folder "
            "of 2D slices, a glob (\"slices/*.tif\"), a TIFF stack or an OME-Zarr store")
    kinds = {".png" if f.suffix.lower() == ".png" else ".tif" for f in files}
    if len(kinds) > 1:
        raise VolumeReadError(
            f"{where} mixes TIFF and PNG files; give a glob that picks one kind "
            "(e.g. \"slices/*.tif\")")
    return sorted(files, key=lambda f: natural_key(f.name))


_PIL_DTYPES = {"L": np.uint8, "I;16": np.uint16, "I;16L": np.uint16, "I;16B": np.uint16,
               "I": np.int32, "F": np.float32}


def _slice_header(f: Path):
    """(shape, dtype) of a 2D slice without reading its pixels; refuses stacks and colour."""
    if f.suffix.lower() == ".png":
        from PIL import Image

        try:
            with Image.open(f) as im:
                mode, (w, h) = im.mode, im.size
        except Exception as exc:
            raise VolumeReadError(f"cannot read slice {f.name!r} ({exc})") from None
        if mode not in _PIL_DTYPES:
            raise VolumeReadError(
                f"slice {f.name!r} is a {mode} (colour or palette) image; EM slices are "
                "single-channel: convert them to grayscale first")
        return (h, w), np.dtype(_PIL_DTYPES[mode])
    import tifffile

    try:
        with tifffile.TiffFile(f) as tif:
            series = tif.series[0]
            shape = tuple(n for n in series.shape if n > 1) or (1,)
            dtype, axes = series.dtype, series.axes
    except Exception as exc:
        raise VolumeReadError(f"cannot read slice {f.name!r} as a TIFF ({exc})") from None
    if len(shape) == 3 and ("S" in axes or shape[-1] in (3, 4)):
        raise VolumeReadError(
            f"slice {f.name!r} is an RGB image {shape}; EM slices are single-channel: "
            "convert them to grayscale first")
    if len(shape) != 2:
        raise VolumeReadError(
            f"{f.name!r} holds an array of shape {shape}, not one 2D slice; a slice folder "
            "has one 2D image per file (open a stack file directly)")
    return shape, np.dtype(dtype)


def _read_slice_file(f: Path, shape, dtype) -> np.ndarray:
    if f.suffix.lower() == ".png":
        import cv2

        data = cv2.imread(str(f), cv2.IMREAD_UNCHANGED)
        if data is None:
            raise VolumeReadError(f"cannot read slice {f.name!r}")
    else:
        import tifffile

        data = tifffile.imread(f).reshape(shape)
    if data.shape != tuple(shape) or data.dtype != dtype:
        raise VolumeReadError(
            f"slice {f.name!r} is {data.shape} {data.dtype}, expected {tuple(shape)} {dtype} "
            "like the first slice (did the file change?)")
    return data


class SliceStack:
    """A (z, y, x) array-like over 2D slice files: indexing reads only the slices it needs."""

    def __init__(self, files, shape2d, dtype):
        self.files = [Path(f) for f in files]
        self.shape = (len(self.files),) + tuple(shape2d)
        self.dtype = np.dtype(dtype)
        self.ndim = 3

    def token(self) -> str:
        import hashlib

        h = hashlib.sha1("|".join(str(f) for f in self.files).encode())
        return h.hexdigest()[:16]

    def __getitem__(self, key):
        idx, rest, scalar = _z_indices(key, self.shape[0])
        out = np.empty((len(idx),) + self.shape[1:], self.dtype)
        for n, z in enumerate(idx):
            out[n] = _read_slice_file(self.files[z], self.shape[1:], self.dtype)
        out = out[(slice(None),) + rest]
        return out[0] if scalar else out


def tiff_voxel_size(tif) -> tuple[tuple[float, float, float] | None, str, dict]:
    """(voxel size (z, y, x) in nm, or in pixels with unit "pixel"; None when the z or x size
    is not recorded; unit; metadata) of an open ``tifffile.TiffFile``: OME ``PhysicalSize*``
    first, then ImageJ ``unit`` / resolution / ``spacing``."""
    meta: dict = {}
    unit = "nm"
    z = y = x = None
    if tif.is_ome and tif.ome_metadata:
        try:
            root = ET.fromstring(tif.ome_metadata)
            pix = next(el for el in root.iter() if el.tag.endswith("Pixels"))
            sizes = []
            for ax in "ZYX":
                v = pix.get(f"PhysicalSize{ax}")
                u = pix.get(f"PhysicalSize{ax}Unit", "µm")
                sizes.append(float(v) * unit_to_nm(u) if v else None)
            z, y, x = sizes
            meta["ome"] = True
        except (ET.ParseError, StopIteration, ValueError):
            pass
    if tif.is_imagej and (z is None or x is None):
        ij = tif.imagej_metadata or {}
        meta["imagej"] = {k: v for k, v in ij.items() if isinstance(v, (str, int, float))}
        factor = unit_to_nm(ij.get("unit", "nm")) if ij.get("unit") else None
        if is_pixel_unit(ij.get("unit")):  # written without a known voxel size
            factor, unit = 1.0, UNKNOWN_UNIT
        page = tif.pages[0]
        res = page.tags.get("XResolution")
        res_y = page.tags.get("YResolution")
        if res is not None and factor is not None:
            num, den = res.value
            if num:
                x = den / num * factor
            if res_y is not None and res_y.value[0]:
                y = res_y.value[1] / res_y.value[0] * factor
        if "spacing" in ij and factor is not None:
            z = float(ij["spacing"]) * factor
    if x is None or z is None:
        return None, unit, meta
    y = y if y is not None else x
    return (float(z), float(y), float(x)), unit, meta


def _first_slice_voxel_size(f: Path):
    """(voxel size or None, unit, xy pixel size or None) from the first TIFF slice's metadata
    (a size in pixels is no voxel size)."""
    if f.suffix.lower() == ".png":
        return None, "nm", None
    import tifffile

    try:
        with tifffile.TiffFile(f) as tif:
            voxel, unit, _ = tiff_voxel_size(tif)
            if voxel is not None and not is_pixel_unit(unit):
                return voxel, unit, (voxel[1], voxel[2])
            ij = (tif.imagej_metadata or {}) if tif.is_imagej else {}
            res = tif.pages[0].tags.get("XResolution")
            if ij.get("unit") and not is_pixel_unit(ij["unit"]) and res is not None \
                    and res.value[0]:
                x = res.value[1] / res.value[0] * unit_to_nm(ij["unit"])
                return None, "nm", (x, x)
    except Exception:  # metadata is a bonus: an unreadable tag is no voxel size
        pass
    return None, "nm", None


def read_slices(spec, lazy: bool | None = None) -> Volume:
    """A folder or glob of 2D slices, in natural order, as one (z, y, x) volume.

    Every file must have the first one's shape and dtype (the message names the odd one).
    The voxel size comes from the first file's metadata when it records z too (ImageJ
    ``spacing`` or OME ``PhysicalSizeZ``); a recorded xy pixel size alone is kept in
    ``metadata["pixel_size_yx"]``.
    """
    files = slice_files(spec)
    shape, dtype = _slice_header(files[0])
    for f in files[1:]:
        s, d = _slice_header(f)
        if s != shape or d != dtype:
            raise VolumeReadError(
                f"slice {f.name!r} is {s} {d} but {files[0].name!r} is {shape} {dtype}: every "
                "slice must have the same size and type (remove or fix that file)")
    stack = SliceStack(files, shape, dtype)
    data = _as_dask(stack) if _use_lazy(stack.shape, dtype, lazy) else stack[:]
    voxel, unit, yx = _first_slice_voxel_size(files[0])
    meta = {"format": "slices", "files": len(files), "first": files[0].name,
            "last": files[-1].name}
    if yx is not None:
        meta["pixel_size_yx"] = tuple(float(v) for v in yx)
    return Volume(data, voxel, unit, meta, str(spec))


# -- HDF5 ---------------------------------------------------------------------------------------

def split_hdf5(spec) -> tuple[str, str | None]:
    """``"file.h5:/volumes/raw"`` -> ("file.h5", "/volumes/raw"); no dataset -> None."""
    m = _HDF5_SPEC.match(str(spec))
    if not m:
        raise VolumeReadError(f"{str(spec)!r} is not an HDF5 file name (.h5/.hdf5/.hdf)")
    ds = m.group("dataset")
    return m.group("file"), ("/" + ds.lstrip("/")) if ds else None


def hdf5_datasets(path, ndim: int | None = 3) -> list[tuple[str, tuple, str]]:
    """(name, shape, dtype) of the datasets in an HDF5 file (only ``ndim``-D ones unless None)."""
    import h5py

    found: list = []
    with _open_h5(path) as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and (ndim is None or obj.ndim == ndim):
                found.append(("/" + name, tuple(obj.shape), str(obj.dtype)))
        f.visititems(visit)
    return found


def _open_h5(path):
    import h5py

    p = Path(path)
    if not p.exists():
        raise VolumeReadError(f"{str(p)!r} does not exist")
    try:
        return h5py.File(p, "r")
    except OSError as exc:
        raise VolumeReadError(f"cannot open {p.name!r} as HDF5 ({exc})") from None


class MultipleDatasetsError(VolumeReadError):
    """An HDF5 file holds several 3D datasets and none was named; ``datasets`` lists them."""

    def __init__(self, message: str, path: str, datasets: list):
        super().__init__(message)
        self.path, self.datasets = path, datasets


def _describe(datasets) -> str:
    return ", ".join(f"{n} {tuple(s)} {d}" for n, s, d in datasets)


def _hdf5_voxel_size(ds):
    for attr, factor in _HDF5_VOXEL_ATTRS:
        if attr in ds.attrs:
            try:
                v = [float(x) for x in np.ravel(ds.attrs[attr])]
            except (TypeError, ValueError):
                continue
            unit = ds.attrs.get("unit", ds.attrs.get("units"))
            if unit is not None and attr == "resolution":
                unit = unit.decode() if isinstance(unit, bytes) else str(unit)
                if is_pixel_unit(unit):
                    return None, None
                factor = unit_to_nm(unit)
            if len(v) == 3 and all(s > 0 for s in v):
                return tuple(s * factor for s in v), attr
    return None, None


class Hdf5Dataset:
    """A picklable (z, y, x) array-like over one HDF5 dataset, opened once per process."""

    def __init__(self, path, name, shape, dtype):
        self.path, self.name = str(path), name
        self.shape, self.dtype, self.ndim = tuple(shape), np.dtype(dtype), len(shape)
        self._ds = None

    def token(self) -> str:
        import hashlib

        st = Path(self.path).stat()
        key = f"{Path(self.path).resolve()}|{self.name}|{st.st_mtime_ns}|{st.st_size}"
        return hashlib.sha1(key.encode()).hexdigest()[:16]

    def __getstate__(self):
        return {**self.__dict__, "_ds": None}

    def __getitem__(self, key):
        if self._ds is None:
            import h5py

            self._ds = h5py.File(self.path, "r")[self.name]
        idx, rest, scalar = _z_indices(key, self.shape[0])
        if len(idx) and np.all(np.diff(idx) == 1):
            out = self._ds[int(idx[0]):int(idx[-1]) + 1]
        else:
            out = np.stack([self._ds[int(z)] for z in idx]) if len(idx) else \
                np.empty((0,) + self.shape[1:], self.dtype)
        out = out[(slice(None),) + rest]
        return out[0] if scalar else out


def read_hdf5(spec, dataset: str | None = None, lazy: bool | None = None) -> Volume:
    """One 3D dataset of an HDF5 file: ``file.h5:/volumes/raw`` or ``dataset=``; a file with
    exactly one 3D dataset needs no name. Voxel size from the dataset's ``resolution``
    attribute (CREMI: z, y, x in nm) or ``element_size_um`` (z, y, x in µm)."""
    import h5py

    path, named = split_hdf5(spec)
    name = dataset or named
    with _open_h5(path) as f:
        if name is None:
            found = hdf5_datasets(path)
            if not found:
                every = hdf5_datasets(path, None)
                raise VolumeReadError(
                    f"{Path(path).name!r} holds no 3D dataset"
                    + (f" (it has: {_describe(every)})" if every else " (it is empty)"))
            if len(found) > 1:
                example = next((n for n, _, _ in found if "raw" in n.lower()), found[0][0])
                raise MultipleDatasetsError(
                    f"{Path(path).name!r} holds several 3D datasets: {_describe(found)}; name "
                    f"one, e.g. \"{path}:{example}\"", path, found)
            name = found[0][0]
        obj = f.get(name)
        if not isinstance(obj, h5py.Dataset):
            found = hdf5_datasets(path)
            raise VolumeReadError(
                f"{Path(path).name!r} has no dataset {name!r}"
                + (f"; its 3D datasets: {_describe(found)}" if found else "; it has no 3D dataset"))
        if obj.ndim != 3:
            raise VolumeReadError(
                f"{Path(path).name}:{name} has shape {obj.shape}; napari-zup needs a 3D "
                "dataset (z, y, x)")
        voxel, attr = _hdf5_voxel_size(obj)
        reader = Hdf5Dataset(path, name, obj.shape, obj.dtype)
        z_chunk = obj.chunks[0] if obj.chunks else 1
    data = _as_dask(reader, z_chunk) if _use_lazy(reader.shape, reader.dtype, lazy) else reader[:]
    meta = {"format": "hdf5", "dataset": name}
    if attr:
        meta["voxel_size_from"] = attr
    return Volume(data, voxel, "nm", meta, f"{path}:{name}")


# -- MRC -----------------------------------------------------------------------------------------

class MrcData:
    """A picklable (z, y, x) array-like over a memory-mapped MRC file, mapped once per process."""

    def __init__(self, path, shape, dtype):
        self.path = str(path)
        self.shape, self.dtype, self.ndim = tuple(shape), np.dtype(dtype), len(shape)
        self._mrc = None

    def token(self) -> str:
        import hashlib

        st = Path(self.path).stat()
        key = f"{Path(self.path).resolve()}|{st.st_mtime_ns}|{st.st_size}"
        return hashlib.sha1(key.encode()).hexdigest()[:16]

    def __getstate__(self):
        return {**self.__dict__, "_mrc": None}

    def __getitem__(self, key):
        if self._mrc is None:
            import mrcfile

            self._mrc = mrcfile.mmap(self.path, mode="r", permissive=True)
        return np.array(self._mrc.data[key])


def read_mrc(path, lazy: bool | None = None) -> Volume:
    """An MRC volume (memory-mapped; cryo FIB-SEM, EMPIAR); voxel size from the header
    (Ångström -> nm), None when the header leaves it at 0."""
    import warnings

    import mrcfile

    p = Path(path)
    if not p.exists():
        raise VolumeReadError(f"{str(p)!r} does not exist")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            mrc = mrcfile.mmap(p, mode="r", permissive=True)
    except Exception as exc:
        raise VolumeReadError(f"cannot read {p.name!r} as MRC ({type(exc).__name__}: {exc})") \
            from None
    with mrc:
        if mrc.data is None:
            why = "; ".join(str(w.message) for w in caught) or "no data block"
            raise VolumeReadError(f"cannot read {p.name!r} as MRC ({why})")
        shape, dtype = mrc.data.shape, mrc.data.dtype
        vs = mrc.voxel_size
        ang = (float(vs.z), float(vs.y), float(vs.x))
        h = mrc.header
        axes = (int(h.mapc), int(h.mapr), int(h.maps))
    if len(shape) != 3:
        raise VolumeReadError(f"{p.name!r} holds an array of shape {shape}; napari-zup needs "
                              "a 3D volume (z, y, x)")
    voxel = tuple(a * 0.1 for a in ang) if all(a > 0 for a in ang) else None
    reader = MrcData(p, shape, dtype)
    data = _as_dask(reader) if _use_lazy(shape, dtype, lazy) else reader[:]
    meta = {"format": "mrc", "voxel_size_angstrom": ang}
    if axes != (1, 2, 3):
        meta["axis_order_mapc_mapr_maps"] = axes
    return Volume(data, voxel, "nm", meta, str(p))


# -- what a file says, without reading it -------------------------------------------------------

def file_voxel_size(path) -> tuple[tuple[float, float, float], str] | None:
    """(voxel size (z, y, x), unit) recorded in ``path``'s metadata, or None (also when the file
    cannot be read). Reads headers only: for the widgets' "this layer has no voxel size"."""
    from . import io

    try:
        p = Path(str(path))
        if p.suffix.lower() in (".tif", ".tiff", ".btf", ".tf8") and p.is_file():
            import tifffile

            with tifffile.TiffFile(p) as tif:
                voxel, unit, _ = tiff_voxel_size(tif)
        else:
            vol = io.read_volume(path, lazy=True)
            voxel, unit = vol.voxel_size, vol.unit
    except Exception:
        return None
    return (tuple(float(v) for v in voxel), unit) if voxel else None
