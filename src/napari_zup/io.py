"""Reading and writing volumes with their voxel size: TIFF (ImageJ or OME metadata) and
Zarr / OME-Zarr.

Voxel sizes are (z, y, x) in ``unit`` (nm by default). Every writer writes under a temporary
name beside the target and renames only on success, so an interrupted or failed write never
leaves an output that looks complete; the input file is never opened for writing.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

#: Above this many bytes a TIFF input is opened lazily (dask over tifffile's zarr interface).
LAZY_BYTES = 1 << 30
#: Above this many bytes the TIFF output is a BigTIFF (OME metadata: ImageJ has no BigTIFF).
BIGTIFF_BYTES = (1 << 32) - (1 << 25)

#: The unit recorded when a file carries no physical voxel size: sizes are in pixels.
UNKNOWN_UNIT = "pixel"

#: The one unit table. Length units by the short name files record -> (nm per unit, symbol
#: shown to users, OME-NGFF name, other spellings read; case is ignored).
_LENGTH_UNITS = {
    "nm": (1.0, "nm", "nanometer", ("nanometer",)),
    "um": (1e3, "µm", "micrometer", ("µm", "μm", "micron", "microns", "micrometer")),
    "mm": (1e6, "mm", "millimeter", ("millimeter",)),
    "pm": (1e-3, "pm", "picometer", ()),
    "angstrom": (0.1, "Å", "angstrom", ("å",)),
}
_SPELLINGS = {s: short for short, row in _LENGTH_UNITS.items() for s in (short, *row[3])}


@dataclass
class Volume:
    """A 3D stack and what we know about it."""

    data: object  # numpy or dask array (z, y, x)
    voxel_size: tuple[float, float, float] | None = None  # (z, y, x) in `unit`
    unit: str = "nm"
    metadata: dict = field(default_factory=dict)
    path: str | None = None

    @property
    def anisotropy(self) -> float | None:
        """z step / xy pixel size, or None when the voxel size is unknown."""
        if not self.voxel_size or not self.voxel_size[2]:
            return None
        return self.voxel_size[0] / self.voxel_size[2]


class VolumeReadError(ValueError):
    """The file cannot be read as a volume; the message says why."""


# -- reading ----------------------------------------------------------------------------------

def read_volume(path, level: int = 0, lazy: bool | None = None) -> Volume:
    """Read a TIFF stack or a Zarr/OME-Zarr store, with its voxel size when recorded.

    ``lazy``: None = numpy for small TIFFs, dask above 1 GiB (Zarr is always lazy).
    ``level``: the OME-Zarr multiscale level to open (0 = full resolution).
    A folder or glob of 2D slices, ``file.h5:/dataset`` and MRC go to :mod:`napari_zup.formats`.
    """
    from .formats import format_of, read_format

    kind = format_of(path)
    if kind:
        return read_format(path, kind, lazy)
    p = Path(path)
    if not p.exists():
        raise VolumeReadError(f"{str(p)!r} does not exist")
    if p.is_dir() or p.suffix.lower() == ".zarr":
        return _read_zarr(p, level)
    if p.suffix.lower() in (".tif", ".tiff", ".btf", ".tf8"):
        return _read_tiff(p, lazy)
    raise VolumeReadError(
        f"{p.name!r}: unsupported file type; napari-zup reads .tif/.tiff stacks, .zarr / "
        "OME-Zarr, a folder or glob of .tif/.png slices, .h5/.hdf5 (file.h5:/dataset) and "
        ".mrc/.rec/.map"
    )


def _read_tiff(p: Path, lazy: bool | None) -> Volume:
    import tifffile

    from .formats import tiff_voxel_size

    try:
        with _tifffile_errors() as logged, tifffile.TiffFile(p) as tif:
            series = tif.series[0]
            shape, dtype, axes = series.shape, series.dtype, series.axes
            _check_tiff_complete(tif, p.name, shape, axes, logged)
            voxel, unit, meta = tiff_voxel_size(tif)
            nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
            use_lazy = nbytes > LAZY_BYTES if lazy is None else lazy
            if not use_lazy:
                data = series.asarray()
    except VolumeReadError:
        raise
    except Exception as exc:
        raise VolumeReadError(
            f"cannot read {p.name!r} as a TIFF stack ({type(exc).__name__}: {exc}); the file "
            "may be truncated or corrupt"
        ) from None
    if use_lazy:
        import dask.array as da
        import zarr

        store = tifffile.imread(p, aszarr=True)
        data = da.from_zarr(zarr.open(store, mode="r"))
    data = _squeeze_to_zyx(data, axes, p.name)
    meta["source_axes"] = axes
    return Volume(data, voxel, unit, meta, str(p))


@contextlib.contextmanager
def _tifffile_errors():
    """Collect what tifffile logs while a file is opened (it logs, rather than raises, a page
    chain that points past the end of a truncated file)."""
    records: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    logger = logging.getLogger("tifffile")
    handler = _Collect(logging.WARNING)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def _declared_planes(tif) -> int | None:
    """Number of image planes the file's own metadata declares (ImageJ ``images`` or
    channels x slices x frames; OME SizeZ x SizeC x SizeT of the first image), or None."""
    if tif.is_imagej:
        ij = tif.imagej_metadata or {}
        if ij.get("images"):
            return int(ij["images"])
        n = 1
        for k in ("channels", "slices", "frames"):
            n *= int(ij.get(k, 1) or 1)
        return n if n > 1 else None
    if tif.is_ome and tif.ome_metadata:
        try:
            root = ET.fromstring(tif.ome_metadata)
            pix = next(el for el in root.iter() if el.tag.endswith("Pixels"))
            return (int(pix.get("SizeZ", 1)) * int(pix.get("SizeC", 1))
                    * int(pix.get("SizeT", 1)))
        except (ET.ParseError, StopIteration, ValueError):
            return None
    return None


def _check_tiff_complete(tif, name: str, shape, axes: str, logged: list[str]) -> None:
    """Refuse a TIFF with fewer planes than its metadata declares, or whose page chain is cut
    off: a stack cut at a page boundary otherwise reads as a shorter (or 2D) stack."""
    found = int(np.prod([n for ax, n in zip(axes, shape) if ax not in "YXS"] or [1]))
    declared = _declared_planes(tif)
    if declared is not None and found < declared:
        raise VolumeReadError(
            f"{name!r} is truncated or corrupt: its metadata declares {declared} images but "
            f"only {found} can be read; copy or export the file again"
        )
    cut = [m for m in logged if "invalid page offset" in m or "corrupted file" in m]
    if declared is None and cut:
        raise VolumeReadError(
            f"{name!r} is truncated or corrupt: {len(tif.pages)} page(s) can be read, then "
            f"the file's page chain points past its end ({cut[0]}); copy or export the file "
            "again"
        )


def _squeeze_to_zyx(data, axes: str, name: str):
    """Drop singleton axes (T, C of ImageJ hyperstacks); keep anything else for validation."""
    keep = [i for i, (ax, n) in enumerate(zip(axes, data.shape)) if n > 1 or ax in "ZYX"]
    if len(keep) < data.ndim:
        idx = tuple(slice(None) if i in keep else 0 for i in range(data.ndim))
        data = data[idx]
    return data


def is_pixel_unit(unit) -> bool:
    return str(unit or "").strip().lower() in ("pixel", "pixels", "px")


def short_unit(unit) -> str | None:
    """The name files record for the length unit ``unit`` in any spelling (nanometer -> nm,
    micrometer / micron / µm -> um, Å -> angstrom), or None for a pixel or unknown unit."""
    return _SPELLINGS.get(str(unit).strip().lower().replace("\\u00b5", "µ"))


def unit_symbol(unit) -> str | None:
    """``unit`` as shown to users (micrometer -> µm, angstrom -> Å), or None (see short_unit)."""
    short = short_unit(unit)
    return _LENGTH_UNITS[short][1] if short else None


def unit_to_nm(unit) -> float:
    """nm per ``unit`` (1 for pixel); VolumeReadError for a unit that is not a length.

    >>> unit_to_nm("micrometer"), unit_to_nm("Å"), unit_to_nm("pixel")
    (1000.0, 0.1, 1.0)
    """
    short = short_unit(unit)
    if short is None and not is_pixel_unit(unit):
        raise VolumeReadError(f"unknown length unit {unit!r} in the file's metadata")
    return _LENGTH_UNITS[short][0] if short else 1.0


unit_factor = unit_to_nm  # the older name


def _refuse_unfinished_run(p: Path, zup) -> None:
    """A store that a zup cluster run has not finished holds zeros where chunks are missing."""
    if not isinstance(zup, dict) or zup.get("status") != "incomplete":
        return
    sig = zup.get("signature") if isinstance(zup.get("signature"), dict) else {}
    cmd = (f"zup reconstruct {zup.get('source') or 'INPUT'} {p} --method "
           f"{sig.get('method', 'METHOD')} --factor {sig.get('factor', 'F')} --workers N")
    raise VolumeReadError(
        f"{p.name!r} is an unfinished zup run (marked incomplete: chunks not yet written read "
        f"as zeros); finish it first by rerunning the command that made it, which resumes: "
        f"{cmd}"
    )


def _read_zarr(p: Path, level: int) -> Volume:
    import dask.array as da
    import zarr

    try:
        node = zarr.open(str(p), mode="r")
    except Exception as exc:
        raise VolumeReadError(f"cannot open {p.name!r} as a Zarr store ({exc})") from None
    attrs = dict(node.attrs)
    _refuse_unfinished_run(p, attrs.get("zup"))
    ms = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if ms:
        try:
            m = ms[0]
            datasets = m["datasets"]
            if not 0 <= level < len(datasets):
                raise VolumeReadError(
                    f"{p.name!r} has {len(datasets)} multiscale levels (0..{len(datasets) - 1}); "
                    f"level {level} does not exist"
                )
            ds = datasets[level]
            arr = node[ds["path"]]
            scale = next((t["scale"] for t in ds.get("coordinateTransformations", [])
                          if t.get("type") == "scale"), None)
            axes = m.get("axes", [])
            unit = next((a.get("unit") for a in axes if isinstance(a, dict) and a.get("unit")),
                        None)
            voxel = tuple(float(s) for s in scale[-3:]) if scale else None
        except VolumeReadError:
            raise
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            raise VolumeReadError(
                f"{p.name!r}: its OME-Zarr metadata (multiscales) is broken "
                f"({type(exc).__name__}: {exc}); fix the .zattrs / zarr.json, or open the array "
                "inside the store directly (e.g. path/to/store.zarr/0)"
            ) from None
        if voxel is not None and unit and not is_pixel_unit(unit):
            voxel, unit = tuple(v * unit_to_nm(unit) for v in voxel), "nm"
        elif voxel is not None:  # a scale without a unit: sizes in pixels, honestly
            unit = UNKNOWN_UNIT
        meta = {"ome_zarr": True, "level": level, "levels": len(datasets),
                "zup": attrs.get("zup", {})}
        return Volume(da.from_zarr(arr), voxel, unit or "nm", meta, str(p))
    if isinstance(node, zarr.Array):
        return Volume(da.from_zarr(node), None, "nm", {}, str(p))
    raise VolumeReadError(
        f"{p.name!r} is a Zarr group without OME multiscales metadata; open the array inside "
        "it (e.g. path/to/store.zarr/0)"
    )


# -- writing ----------------------------------------------------------------------------------

def same_path(a, b) -> bool:
    """True when ``a`` and ``b`` name the same file or folder: same resolved path (``..``,
    symlinks) or, when both exist, the same file on disk (hard links, bind mounts)."""
    pa, pb = Path(a), Path(b)
    try:
        if pa.resolve() == pb.resolve():
            return True
        return pa.exists() and pb.exists() and os.path.samefile(pa, pb)
    except OSError:
        return False


def _inside(child: Path, parent: Path) -> bool:
    try:
        return parent.is_dir() and child.resolve().is_relative_to(parent.resolve())
    except OSError:
        return False


def check_not_input(out, *inputs) -> None:
    """Refuse an output that is one of the inputs, lies inside an input store, or is a store
    that contains an input: writing it would destroy what is being read, ``--overwrite`` or
    not."""
    from .formats import input_paths  # a glob or "file.h5:/dataset" -> the files it reads

    for src in [f for s in inputs if s is not None for f in input_paths(s)]:
        if same_path(out, src) or _inside(Path(out), Path(src)) or _inside(Path(src), Path(out)):
            raise ValueError(
                f"output {str(out)!r} is the input {str(src)!r} (or inside it / contains it); "
                "the input is never written to: choose another output name"
            )


def check_output_path(path, overwrite: bool = False, nbytes: int | None = None,
                      inputs=()) -> Path:
    """Refuse an output that is an input (:func:`check_not_input`), an existing output (unless
    ``overwrite``), an unwritable folder, or too little free disk space; return the path."""
    p = Path(path)
    if p.suffix.lower() not in (".tif", ".tiff", ".zarr"):
        raise ValueError(f"output {p.name!r}: use a .tif/.tiff or .zarr name")
    check_not_input(p, *inputs)
    if p.exists() and not overwrite:
        raise FileExistsError(f"output {str(p)!r} already exists; use --overwrite to replace it")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(f"output folder {str(parent)!r} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise PermissionError(f"output folder {str(parent)!r} is not writable; choose another")
    if nbytes is not None:
        free = shutil.disk_usage(parent).free
        if nbytes > free:
            raise OSError(
                f"output needs about {nbytes / 1e9:.1f} GB but {str(parent)!r} has only "
                f"{free / 1e9:.1f} GB free; choose another folder"
            )
    return p


#: Voxel types an ImageJ TIFF holds; others are converted (losslessly, or float64 -> float32)
#: or refused, before any work, the same way for every TIFF output.
_TIFF_DTYPES = ("uint8", "uint16", "int16", "float32")


def output_dtype(path, dtype) -> tuple[np.dtype, str | None]:
    """The voxel type written to ``path`` for data of ``dtype``, and a note when it differs.

    Zarr keeps every type. TIFF output (ImageJ, and OME for BigTIFF, the same rule for both
    so the result does not depend on the size): float64 -> float32 (7 significant digits),
    int8 -> int16; 32/64-bit integers and bool are refused (ValueError: write .zarr)."""
    dtype = np.dtype(dtype)
    if Path(path).suffix.lower() == ".zarr" or dtype.name in _TIFF_DTYPES:
        return dtype, None
    if dtype.kind == "f":
        return np.dtype(np.float32), (f"TIFF output holds float32, not {dtype.name}: the "
                                      "output is written as float32 (about 7 significant "
                                      "digits); write .zarr to keep float64")
    if dtype == np.int8:
        return np.dtype(np.int16), "TIFF output has no int8: the output is written as int16"
    raise ValueError(
        f"voxel type {dtype.name} cannot be written to TIFF without loss (TIFF output holds "
        f"{', '.join(_TIFF_DTYPES)}); write a .zarr output instead, or convert the input first"
    )


def _partial_name(p: Path) -> Path:
    return p.with_name(f".{p.name}.partial-{os.getpid()}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_partials(path) -> list[Path]:
    """Remove ``.NAME.partial-PID`` leftovers next to ``path`` whose process is gone (a run
    killed with SIGKILL, or a crash); returns what was removed. Partials of live processes
    (another run writing the same name right now) are left alone."""
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    removed = []
    if not parent.is_dir():
        return removed
    prefix = f".{p.name}.partial-"
    for q in parent.iterdir():
        pid = q.name[len(prefix):]
        if q.name.startswith(prefix) and pid.isdigit() and int(pid) != os.getpid() \
                and not _pid_alive(int(pid)):
            _remove(q)
            removed.append(q)
    return removed


def _commit(tmp: Path, p: Path) -> None:
    if p.is_dir():  # os.replace replaces a file in one step, but not a folder
        shutil.rmtree(p)
    os.replace(tmp, p)


def _remove(tmp: Path) -> None:
    if tmp.is_dir():
        shutil.rmtree(tmp, ignore_errors=True)
    elif tmp.exists():
        tmp.unlink()


@contextlib.contextmanager
def atomic_output(path) -> Iterator[Path]:
    """Write ``path`` (a file or a folder) all at once or not at all: yields the temporary
    ``.NAME.partial-PID`` beside it to write to (stale partials of dead runs are removed
    first); on success it replaces ``path``, on any exception (Ctrl-C too) it is removed.

    >>> with atomic_output(folder / "scores.json") as part:   # doctest: +SKIP
    ...     part.write_text("{}")
    """
    p = Path(path)
    remove_stale_partials(p)
    tmp = _partial_name(p)
    _remove(tmp)
    try:
        yield tmp
        _commit(tmp, p)
    except BaseException:
        _remove(tmp)
        raise


def write_volume(
    path,
    data,
    voxel_size=None,
    unit: str = "nm",
    *,
    shape=None,
    dtype=None,
    overwrite: bool = False,
    metadata: dict | None = None,
    chunks=None,
    inputs=(),
) -> Path:
    """Write a volume to ``path`` (.tif/.tiff or .zarr) with its voxel size.

    ``voxel_size`` None (unknown) is written as such: ImageJ unit "pixel", OME-Zarr axes
    without a unit. ``inputs``: paths being read, which ``path`` must not be
    (:func:`check_not_input`). The voxel type follows :func:`output_dtype`.

    ``data``: an array (numpy/dask) or an iterator of ``(z_index, slice)`` in z order (then
    give ``shape`` and ``dtype``): slices are written as they come, so the volume is never
    held in memory. Written under a temporary name and renamed on success.
    """
    if hasattr(data, "shape") and hasattr(data, "dtype"):
        shape, dtype = tuple(data.shape), np.dtype(data.dtype)
        items = ((z, data[z]) for z in range(shape[0]))
    else:
        if shape is None or dtype is None:
            raise ValueError("writing from an iterator needs shape= and dtype=")
        shape, dtype = tuple(shape), np.dtype(dtype)
        items = iter(data)
    if len(shape) != 3:
        raise ValueError(f"write_volume writes 3D stacks (z, y, x), got shape {shape}")
    out_dtype, _ = output_dtype(path, dtype)
    if out_dtype != dtype:
        items = ((z, np.asarray(sl).astype(out_dtype)) for z, sl in items)
        dtype = out_dtype
    nbytes = int(np.prod(shape)) * dtype.itemsize
    p = check_output_path(path, overwrite, nbytes, inputs)
    with atomic_output(p) as tmp:
        if p.suffix.lower() == ".zarr":
            _write_ome_zarr(tmp, items, shape, dtype, voxel_size, unit, metadata, chunks)
        else:
            _write_tiff(tmp, items, shape, dtype, voxel_size, unit, metadata, nbytes)
    return p


def _ordered_slices(items: Iterable, shape) -> Iterator[np.ndarray]:
    expected = 0
    for z, sl in items:
        if z != expected:
            raise ValueError(f"slices must arrive in z order: expected {expected}, got {z}")
        yield np.asarray(sl)
        expected += 1
    if expected != shape[0]:
        raise ValueError(f"got {expected} slices, expected {shape[0]}: output incomplete")


def _write_tiff(tmp: Path, items, shape, dtype, voxel_size, unit, metadata, nbytes):
    import tifffile

    slices = _ordered_slices(items, shape)
    extra = {"zup": json.dumps(metadata)} if metadata else {}
    known = bool(voxel_size) and not is_pixel_unit(unit)
    if nbytes < BIGTIFF_BYTES:
        # Unknown voxel size: ImageJ's unit "pixel" (not a made-up "nm"); a z spacing in
        # pixels (e.g. 1/F after a reconstruction) is still written.
        kw = {"imagej": True, "metadata": {"axes": "ZYX", "unit": unit if known else
                                           UNKNOWN_UNIT, **extra}}
        if voxel_size:
            z, y, x = voxel_size
            kw["resolution"] = (1.0 / x, 1.0 / y)
            kw["metadata"]["spacing"] = z
    else:  # ImageJ has no BigTIFF: write OME-TIFF, whose metadata carries the voxel size
        kw = {"bigtiff": True, "ome": True, "metadata": {"axes": "ZYX"}}
        if known:  # OME has no pixel unit: an unknown size is left out
            z, y, x = voxel_size
            kw["metadata"].update(PhysicalSizeZ=z, PhysicalSizeY=y, PhysicalSizeX=x,
                                  PhysicalSizeZUnit=unit, PhysicalSizeYUnit=unit,
                                  PhysicalSizeXUnit=unit)
    tifffile.imwrite(tmp, data=slices, shape=shape, dtype=dtype, **kw)


def ome_zarr_attrs(shape, voxel_size, unit, metadata=None, n_levels: int = 1) -> dict:
    """OME-Zarr 0.4 multiscales attributes (levels downsampled 2x in y/x each)."""
    scale = list(voxel_size) if voxel_size else [1.0, 1.0, 1.0]
    datasets = []
    for i in range(n_levels):
        d = 2 ** i
        # A level-i pixel is the mean of d x d level-0 pixels (pyramid.downsample_yx): its
        # centre lies (d - 1) / 2 level-0 pixels in from theirs, so levels stay aligned.
        datasets.append({"path": str(i), "coordinateTransformations": [
            {"type": "scale", "scale": [scale[0], scale[1] * d, scale[2] * d]},
            {"type": "translation",
             "translation": [0.0, scale[1] * (d - 1) / 2, scale[2] * (d - 1) / 2]}]})
    attrs = {"multiscales": [{
        "version": "0.4",
        "name": "zup",
        "axes": [_ome_axis(a, unit if voxel_size else None) for a in "zyx"],
        "datasets": datasets,
    }]}
    if metadata:
        attrs["zup"] = metadata
    return attrs


def _ome_axis(name: str, unit) -> dict:
    """An OME-Zarr axis; an unknown unit (no voxel size, or sizes in pixels) is left out
    rather than claimed (the spec's units are physical)."""
    axis = {"name": name, "type": "space"}
    if unit and not is_pixel_unit(unit):
        axis["unit"] = _ome_unit(unit)
    return axis


def output_voxel_size(voxel_size, unit, factor):
    """The voxel size of a reconstruction at ``factor``: the z step divided by the factor.
    Unknown (None) input sizes give (1/F, 1, 1) in pixels, so the output still records its
    z step relative to x/y without claiming a physical unit. Returns (voxel, unit)."""
    f = float(factor)
    if not voxel_size:
        return (1.0 / f, 1.0, 1.0), UNKNOWN_UNIT
    z, y, x = (float(v) for v in voxel_size)
    return (z / f, y, x), unit


def _ome_unit(unit: str) -> str:
    short = short_unit(unit)
    return _LENGTH_UNITS[short][2] if short else unit


def default_chunks(shape) -> tuple[int, int, int]:
    return (min(shape[0], 16), min(shape[1], 512), min(shape[2], 512))


def _write_ome_zarr(tmp: Path, items, shape, dtype, voxel_size, unit, metadata, chunks):
    import zarr

    chunks = tuple(chunks) if chunks else default_chunks(shape)
    root = zarr.open_group(str(tmp), mode="w", zarr_format=2)
    arr = root.create_array("0", shape=shape, chunks=chunks, dtype=dtype, fill_value=0)
    root.attrs.update(ome_zarr_attrs(shape, voxel_size, unit, metadata))
    cz = chunks[0]
    buf = np.empty((cz,) + tuple(shape[1:]), dtype)
    start = 0
    for n, sl in enumerate(_ordered_slices(items, shape)):
        buf[n - start] = sl
        if n - start + 1 == cz or n + 1 == shape[0]:
            arr[start:n + 1] = buf[:n - start + 1]
            start = n + 1
