"""Out-of-core, resumable reconstruction on dask.distributed, written to OME-Zarr.

    >>> from napari_zup.distributed import reconstruct_to_zarr
    >>> reconstruct_to_zarr("in.zarr", "out.zarr", "of-linear", 4, workers=4)  # doctest: +SKIP
    >>> reconstruct_to_zarr("in.tif", "out.zarr", "linear", 4,
    ...                     scheduler="tcp://host:8786")                     # doctest: +SKIP

How it works:

* Every output chunk is one dask task. It reads only the input region it needs (its knots,
  the method's z-context and y/x halo), renders its slices with the engine's one block
  function (:func:`napari_zup.engine.render_output_block`, slab by slab as the engine does),
  writes its own zarr chunk and then a *done marker*. The client only submits tasks and
  counts finished chunks; it never gathers image data.
* Output chunks are split along z at knots (a multiple of the factor's numerator, and of the
  method's slab length for axial methods), so no interval is split between two tasks when the
  defaults are used; each task writes whole chunks that no other task touches.
* Pyramid levels (2x in y/x per level) are tasks too: a level-``l`` chunk reads the four
  level-``l-1`` chunks below it and runs as soon as those are written.
* Resume: the store's attributes hold a *signature* (method, parameters, checkpoint hash,
  factor, input shape/dtype/content fingerprint, value range, chunks, levels, version) and a
  ``status`` that stays ``"incomplete"`` until the last chunk is written. A rerun with the
  same signature skips every chunk that has a done marker (a chunk written without its marker,
  e.g. by a killed process, is recomputed), and gives the same bytes as an uninterrupted run.
  A store from a run with another signature is refused unless ``overwrite=True``.
* Faults: tasks are submitted with ``retries``; a worker that dies is replaced by its nanny
  and its tasks rerun elsewhere. A task that keeps failing (e.g. disk full) stops the run with
  :class:`ReconstructionFailed`; finished chunks stay on disk and a rerun resumes.
* Learned methods are instantiated once per worker process and cached (keyed by method and
  parameters), so a model is loaded once per worker; ``device="auto"`` in ``method_params``
  is resolved on each worker, so each worker uses its own accelerator.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import signal
import threading
import time
import uuid
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from . import __version__, grid, io
from .engine import ReconstructionCancelled, render_output_block, validate_volume
from .engine import read_window  # the engine's own tile read window
from .methods.base import create_method, dtype_value_range, get_info
from .pyramid import auto_levels, downsample_yx, level_shape

__all__ = [
    "reconstruct_to_zarr",
    "ReconstructionFailed",
    "SchedulerUnreachable",
    "OutputConflict",
    "ReconstructionCancelled",
]

log = logging.getLogger(__name__)

try:  # distributed is an optional dependency (pip install napari-zup[distributed])
    from distributed import WorkerPlugin as _WorkerPlugin
except ImportError:  # pragma: no cover
    _WorkerPlugin = object

#: Target number of output slices per chunk along z (rounded to whole knot intervals).
CHUNK_Z = 16
#: y/x chunk edge; methods with a large halo get larger chunks so the halo stays cheap.
CHUNK_YX = 512
CHUNK_YX_LARGE_HALO = 1024
#: Tasks submitted but not finished, at most: the client and the scheduler hold only these,
#: so a run of millions of chunks needs no more client memory than a small one.
MIN_IN_FLIGHT = 64
IN_FLIGHT_PER_THREAD = 4
#: Name of the group (inside the store) that holds the per-chunk done markers during a run.
DONE_GROUP = "zup_done"
SIGNATURE_FORMAT = 1


class ReconstructionFailed(RuntimeError):
    """A chunk task failed for good; finished chunks are kept and a rerun resumes."""


class SchedulerUnreachable(ConnectionError):
    """The dask scheduler address could not be reached; nothing was written."""


class OutputConflict(FileExistsError):
    """The output store exists and belongs to another run (or to no zup run at all)."""


# ================================================================================================
# Worker side: everything below runs inside dask workers (and must be importable there).
# ================================================================================================

_CACHE_LOCK = threading.Lock()
_METHODS: dict = {}  # (name, params_json) -> (Method, Lock)
_SOURCES: dict = {}  # (path, level, fingerprint) -> sliceable array
_OUTPUTS: dict = {}  # (path, level, run_id) -> zarr array
#: Method objects this process has created, per (name, params) (loaded once per worker).
METHOD_LOADS: dict = {}


def _worker_method(name: str, params_json: str):
    key = (name, params_json)
    with _CACHE_LOCK:
        entry = _METHODS.get(key)
        if entry is None:
            method = create_method(name, **json.loads(params_json))
            entry = (method, threading.Lock())
            _METHODS[key] = entry
            METHOD_LOADS[key] = METHOD_LOADS.get(key, 0) + 1
    return entry


def _cached(cache: dict, key, make):
    with _CACHE_LOCK:
        value = cache.get(key)
        if value is None:
            if len(cache) > 16:  # stores of old runs: drop them
                cache.clear()
            value = cache[key] = make()
    return value


@dataclass(frozen=True)
class _PathSource:
    """An input file/store, opened lazily (once per worker process)."""

    path: str
    level: int
    fingerprint: str

    def array(self):
        return _cached(_SOURCES, (self.path, self.level, self.fingerprint),
                       lambda: io.read_volume(self.path, level=self.level, lazy=True).data)

    def __getitem__(self, key) -> np.ndarray:
        region = self.array()[key]
        if hasattr(region, "compute"):
            region = region.compute(scheduler="sync")
        return np.asarray(region)


class _Window:
    """A region of the input that answers the engine's slicing in full-volume coordinates."""

    def __init__(self, data: np.ndarray, offset, shape):
        self.data, self.offset, self.shape = data, tuple(offset), tuple(shape)
        self.dtype, self.ndim = data.dtype, 3

    def __getitem__(self, key):
        local = []
        for s, o, n in zip(key, self.offset, self.data.shape):
            start, stop = s.start - o, s.stop - o
            if start < 0 or stop > n:
                raise IndexError(f"read {key} outside the task's input region")
            local.append(slice(start, stop))
        return self.data[tuple(local)]


@dataclass(frozen=True)
class _RunSpec:
    out_path: str
    run_id: str
    method: str
    params_json: str
    factor: Fraction
    in_shape: tuple
    out_shape: tuple
    dtype: str
    value_range: tuple
    chunks: tuple
    locked: bool  # serialise render calls on a method object (learned models)


@dataclass(frozen=True)
class _ChunkJob:
    index: tuple  # (iz, iy, ix)
    out_z: tuple  # (i0, i1) output slices
    ys: slice
    xs: slice
    region: tuple  # (z0, z1, y0, y1, x0, x1), end-exclusive, input coordinates
    groups: tuple  # ((a, b), ...) consecutive output ranges, one render call each


def _out_array(path: str, level: int, run_id: str):
    import zarr

    def make():
        arr = zarr.open_array(os.path.join(path, str(level)), mode="r+")
        # Write every chunk, also all-zero ones: "written" must mean "a file exists".
        return arr.with_config({"write_empty_chunks": True})

    return _cached(_OUTPUTS, (path, level, run_id), make)


def _write_chunk(arr, selection, block: np.ndarray) -> None:
    """Write one whole zarr chunk (separate function so tests can simulate a full disk)."""
    arr[selection] = block


def _marker(path: str, level: int, index) -> str:
    return os.path.join(path, DONE_GROUP, str(level), ".".join(map(str, index)))


def _mark_done(path: str, level: int, index) -> None:
    with open(_marker(path, level, index), "wb"):
        pass


def _render_chunk(src, spec: _RunSpec, job: _ChunkJob, src_is_region: bool = False) -> dict:
    """One output chunk of level 0: read, render, write, mark done."""
    t0, c0 = time.perf_counter(), time.process_time()
    z0, z1, y0, y1, x0, x1 = job.region
    if src_is_region:
        data = np.asarray(src)
    else:
        data = np.asarray(src[z0:z1, y0:y1, x0:x1])
    window = _Window(data, (z0, y0, x0), spec.in_shape)
    t1 = time.perf_counter()
    method, lock = _worker_method(spec.method, spec.params_json)
    i0, i1 = job.out_z
    out = np.empty((i1 - i0, job.ys.stop - job.ys.start, job.xs.stop - job.xs.start),
                   np.dtype(spec.dtype))
    for a, b in job.groups:
        if spec.locked:
            with lock:
                block, _ = render_output_block(window, method, spec.factor, range(a, b),
                                               job.ys, job.xs, spec.value_range)
        else:
            block, _ = render_output_block(window, method, spec.factor, range(a, b),
                                           job.ys, job.xs, spec.value_range)
        out[a - i0:b - i0] = block
    t2 = time.perf_counter()
    arr = _out_array(spec.out_path, 0, spec.run_id)
    _write_chunk(arr, (slice(i0, i1), job.ys, job.xs), out)
    _mark_done(spec.out_path, 0, job.index)
    t3 = time.perf_counter()
    return {"level": 0, "read": t1 - t0, "compute": t2 - t1, "write": t3 - t2,
            "cpu": time.process_time() - c0, "in_bytes": data.nbytes, "out_bytes": out.nbytes}


def _downsample_chunk(spec: _RunSpec, level: int, index, *_deps) -> dict:
    """One chunk of pyramid level ``level`` from the level below (already written)."""
    t0, c0 = time.perf_counter(), time.process_time()
    iz, iy, ix = index
    cz, cy, cx = spec.chunks
    below = _out_array(spec.out_path, level - 1, spec.run_id)
    zs = slice(iz * cz, min((iz + 1) * cz, spec.out_shape[0]))
    src = below[zs, 2 * iy * cy:2 * (iy + 1) * cy, 2 * ix * cx:2 * (ix + 1) * cx]
    out = downsample_yx(src)
    t1 = time.perf_counter()
    arr = _out_array(spec.out_path, level, spec.run_id)
    ys = slice(iy * cy, iy * cy + out.shape[1])
    xs = slice(ix * cx, ix * cx + out.shape[2])
    _write_chunk(arr, (zs, ys, xs), out)
    _mark_done(spec.out_path, level, index)
    t2 = time.perf_counter()
    return {"level": level, "read": 0.0, "compute": t1 - t0, "write": t2 - t1,
            "cpu": time.process_time() - c0, "in_bytes": src.nbytes, "out_bytes": out.nbytes}


def method_loads() -> dict:
    """``{"method params_json": times created}`` in this process (run it on the workers with
    ``client.run(method_loads)`` to check that each worker loaded each model once)."""
    return {f"{k[0]} {k[1]}": v for k, v in METHOD_LOADS.items()}


class _WorkerThreads(_WorkerPlugin):
    """Worker plugin: OpenCV's own thread pool follows the worker's thread count (it would
    otherwise use every core in every worker process: N workers x all cores). Not applied in
    the client's own process (``processes=False``), whose settings belong to the caller."""

    name = "napari-zup-opencv-threads"

    def __init__(self, client_pid: int):
        self.client_pid = client_pid

    def setup(self, worker):
        if os.getpid() != self.client_pid:
            import cv2

            cv2.setNumThreads(max(1, int(worker.state.nthreads)))


def _method_geometry(name: str, params_json: str) -> dict:
    """What the client needs to know about a method to plan chunks (runs on a worker, so a
    learned model is loaded where it will be used, not on the client)."""
    method, _ = _worker_method(name, params_json)
    return {"halo": int(method.halo()), "min_tile": int(method.min_tile()),
            "z_context": int(method.z_context),
            "slab_intervals": max(1, int(method.slab_intervals))}


def _region_minmax(src, z0: int, z1: int):
    data = np.asarray(src[z0:z1])
    if not np.isfinite(data).all():
        return None
    return float(data.min()), float(data.max())


# ================================================================================================
# Client side
# ================================================================================================

def reconstruct_to_zarr(
    source,
    out_path,
    method: str = "linear",
    factor=2,
    *,
    method_params: dict | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    client=None,
    processes: bool = True,
    threads_per_worker: int = 1,
    chunks=None,
    levels: int | None = None,
    input_level: int = 0,
    overwrite: bool = False,
    resume: bool = True,
    voxel_size=None,
    unit: str = "nm",
    value_range=None,
    retries: int = 2,
    progress: Callable[[int, int], None] | None = None,
    cancel: threading.Event | None = None,
    connect_timeout: float = 5.0,
    stats: dict | None = None,
) -> Path:
    """Reconstruct ``source`` into the OME-Zarr store ``out_path`` on a dask cluster.

    ``source``: a path (.zarr / OME-Zarr: pick the level with ``input_level``; .tif/.tiff: read
    lazily through tifffile's zarr interface), an :class:`io.Volume`, or a numpy/dask array
    (z, y, x). Paths are opened by the workers themselves; a numpy array is scattered once.

    Cluster: ``scheduler`` ("tcp://host:8786") or ``client`` (a ``distributed.Client``) to use
    an existing cluster; otherwise a LocalCluster with ``workers`` processes (default: one per
    CPU core; ``processes=False`` for threads in this process) is started and closed again.

    Output: OME-Zarr 0.4 (zarr format 2), dataset "0" plus ``levels - 1`` levels halving y/x
    (``levels=None``: until y/x <= 512 px). ``chunks`` (z, y, x): default 16 slices rounded to
    whole intervals x 512 (1024 for methods with a halo > 64 px). Voxel size: ``voxel_size``
    (of the *input*, in ``unit``) or the one recorded in the input file; the output's z step is
    divided by the factor.

    Resume/overwrite: an existing store of the same run is resumed (``resume=True``) or
    refused; one of another run is refused unless ``overwrite=True`` (then deleted first).

    ``progress(done, total)`` is called with finished chunks over all levels; ``cancel`` (a
    ``threading.Event``) stops the run (ReconstructionCancelled; the store stays resumable).
    ``stats``: a dict filled with per-chunk timings (read/compute/write seconds, summed).
    Returns the output path.
    """
    from distributed import Client, LocalCluster

    t_start = time.perf_counter()
    out = Path(out_path)
    if out.suffix.lower() != ".zarr":
        raise ValueError(f"output {out.name!r}: the distributed runner writes OME-Zarr; "
                         "use a name ending in .zarr")
    if sum(x is not None for x in (scheduler, client)) > 1 or (
            workers is not None and (scheduler is not None or client is not None)):
        raise ValueError("give at most one of workers=, scheduler= or client=")
    if workers is not None and int(workers) < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    params = _normalise_params(method_params)
    info = get_info(method)
    name = info.name
    f = grid.parse_factor(factor)
    if f.denominator != 1 and not info.fractional:
        raise ValueError(f"method {name!r} supports only integer factors, got {float(f):g}")

    src, src_array, meta = _resolve_source(source, input_level)
    if meta.get("path"):
        io.check_not_input(out, meta["path"])
    validate_volume(src_array, info.min_slices, name)
    in_shape = tuple(int(s) for s in src_array.shape)
    dtype = np.dtype(src_array.dtype)
    out_shape = (grid.output_length(in_shape[0], f),) + in_shape[1:]
    if voxel_size is not None:
        vox_in = tuple(float(v) for v in voxel_size)
        if len(vox_in) != 3 or min(vox_in) <= 0:
            raise ValueError(f"voxel_size must be three positive numbers (z, y, x), got "
                             f"{voxel_size}")
    else:
        vox_in, unit = meta.get("voxel_size"), meta.get("unit", unit) or unit
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(f"output folder {str(parent)!r} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise PermissionError(f"output folder {str(parent)!r} is not writable; choose another")

    own_client = own_cluster = None
    if client is None:
        if scheduler is not None:
            own_client = client = _connect(scheduler, connect_timeout)
        else:
            n = int(workers) if workers is not None else (os.cpu_count() or 1)
            with _workers_ignore_ctrl_c():
                own_cluster = LocalCluster(
                    n_workers=n, threads_per_worker=int(threads_per_worker),
                    processes=processes, dashboard_address=":0", silence_logs=logging.ERROR)
            own_client = client = Client(own_cluster, set_as_default=False)
    try:
        return _run(client, src, src_array, meta, out, name, params, info, f, in_shape,
                    out_shape, dtype, vox_in, unit, chunks, levels, input_level, overwrite,
                    resume, value_range, retries, progress, cancel, stats, t_start)
    finally:
        if own_client is not None:
            own_client.close()
        if own_cluster is not None:
            own_cluster.close()


@contextlib.contextmanager
def _workers_ignore_ctrl_c():
    """Worker processes started inside this block ignore SIGINT. Ctrl-C in a terminal goes to
    the whole process group: the client alone should stop (cancel its tasks, mark nothing
    complete, close the cluster), not every worker with a traceback of its own."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can be changed from the main thread only
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _connect(address: str, timeout: float):
    from distributed import Client

    try:
        return Client(address, timeout=f"{max(float(timeout), 0.5)}s", set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise SchedulerUnreachable(
            f"cannot reach the dask scheduler at {address!r} within {timeout:g} s "
            f"({type(exc).__name__}: {exc}); check that it is running (`dask scheduler`) and "
            "that the address and port are right, or leave out the scheduler to run on this "
            "machine. Nothing was written."
        ) from None


def _normalise_params(params: dict | None) -> dict:
    params = dict(params or {})
    try:
        return json.loads(json.dumps(params, sort_keys=True))
    except TypeError as exc:
        raise ValueError(f"method parameters must be plain numbers/strings/lists: {exc}") from None


def _resolve_source(source, level: int):
    """-> (what tasks read from, an array-like for shape/dtype/fingerprint, metadata)."""
    meta: dict = {}
    if isinstance(source, (str, os.PathLike)):
        vol = io.read_volume(source, level=level, lazy=True)
        path = str(Path(source).resolve())
        meta.update(voxel_size=vol.voxel_size, unit=vol.unit, path=path, level=level)
        arr = vol.data
        fp = _fingerprint(arr)
        meta["fingerprint"] = fp
        return _PathSource(path, level, fp), arr, meta
    if isinstance(source, io.Volume):
        meta.update(voxel_size=source.voxel_size, unit=source.unit)
        if source.path and Path(source.path).exists():
            lvl = int(source.metadata.get("level", 0)) if source.metadata else 0
            src, arr, m = _resolve_source(source.path, lvl)
            if tuple(arr.shape) == tuple(source.data.shape):
                m.update({k: v for k, v in meta.items() if v is not None})
                return src, arr, m
        source = source.data
    arr = source
    if not hasattr(arr, "shape") or not hasattr(arr, "dtype"):
        arr = np.asarray(arr)
    meta["fingerprint"] = _fingerprint(arr)
    return arr, arr, meta


def _fingerprint(arr) -> str:
    """Content fingerprint from a few small patches (first, middle, last slice), with shape
    and dtype: cheap even for terabyte inputs, and catches a different file at the same path."""
    h = hashlib.sha256(f"{tuple(arr.shape)}|{np.dtype(arr.dtype).str}".encode())
    if len(arr.shape) != 3:
        return h.hexdigest()
    z, hh, ww = (int(s) for s in arr.shape)
    for zi in sorted({0, z // 2, z - 1}):
        for yc, xc in ((0, 0), (hh // 2, ww // 2), (max(hh - 64, 0), max(ww - 64, 0))):
            patch = arr[zi, yc:yc + 64, xc:xc + 64]
            if hasattr(patch, "compute"):
                patch = patch.compute(scheduler="sync")
            h.update(np.ascontiguousarray(patch).tobytes())
    return h.hexdigest()


def _file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _checkpoint_identity(name: str, info, params: dict):
    ckpt = params.get("checkpoint")
    if ckpt is None and info.needs_checkpoint:
        from .checkpoints import default_checkpoint

        ckpt = default_checkpoint(name)
    if ckpt is None:
        return None
    p = Path(ckpt)
    if not p.is_file():
        return {"path": str(ckpt), "sha256": None}
    return {"path": p.name, "sha256": _file_sha256(p)}


def z_chunk_unit(factor, slab_intervals: int = 1) -> int:
    """Smallest number of output slices between two chunk borders that both fall on a knot
    (and on a slab border of an axial method): numerator of F x slab length / gcd."""
    f = grid.parse_factor(factor)
    p, q = f.numerator, f.denominator
    s = max(1, int(slab_intervals))
    return p * (s // math.gcd(s, q))


def default_output_chunks(out_shape, factor, halo: int = 0, slab_intervals: int = 1):
    unit = z_chunk_unit(factor, slab_intervals)
    cz = unit * max(1, round(CHUNK_Z / unit))
    yx = CHUNK_YX_LARGE_HALO if halo > 64 else CHUNK_YX
    return (min(cz, out_shape[0]), min(yx, out_shape[1]), min(yx, out_shape[2]))


def _plan_chunks(chunks, out_shape, f, geom):
    if chunks is None:
        return default_output_chunks(out_shape, f, geom["halo"], geom["slab_intervals"])
    c = tuple(int(v) for v in (chunks if not np.isscalar(chunks) else (chunks,) * 3))
    if len(c) != 3 or min(c) < 1:
        raise ValueError(f"chunks must be three positive integers (z, y, x), got {chunks}")
    if geom["slab_intervals"] > 1:  # axial methods: chunk borders on slab borders
        unit = z_chunk_unit(f, geom["slab_intervals"])
        c = (unit * math.ceil(c[0] / unit),) + c[1:]
    return tuple(min(v, s) for v, s in zip(c, out_shape))


def _level0_jobs(in_shape, out_shape, f, chunks, geom) -> Iterator[_ChunkJob]:
    n_z, h, w = in_shape
    cz, cy, cx = chunks
    halo, zc, min_tile = geom["halo"], geom["z_context"], geom["min_tile"]
    step = geom["slab_intervals"]
    groups = grid.intervals(n_z, f)
    slabs = [(items[0][0], items[-1][0] + 1) for items in
             ([i for _, it in groups[s:s + step] for i in it] for s in range(0, len(groups), step))]
    for iz, i0 in enumerate(range(0, out_shape[0], cz)):
        i1 = min(i0 + cz, out_shape[0])
        parts = tuple((max(a, i0), min(b, i1)) for a, b in slabs if a < i1 and b > i0)
        p0, p1 = Fraction(i0) / f, Fraction(i1 - 1) / f
        k_lo = min(math.floor(p0), n_z - 2)
        k_hi = max(math.ceil(p1), k_lo + 1)
        z0, z1 = max(k_lo - zc, 0), min(k_hi + zc, n_z - 1) + 1
        for iy, y in enumerate(range(0, h, cy)):
            ys = slice(y, min(y + cy, h))
            for ix, x in enumerate(range(0, w, cx)):
                xs = slice(x, min(x + cx, w))
                region = (z0, z1, *read_window(ys, halo, min_tile, h),
                          *read_window(xs, halo, min_tile, w))
                yield _ChunkJob((iz, iy, ix), (i0, i1), ys, xs, region, parts)


def _grid_counts(shape, chunks):
    return tuple(math.ceil(s / c) for s, c in zip(shape, chunks))


def _done_markers(out: Path, level: int) -> set:
    d = out / DONE_GROUP / str(level)
    try:
        names = os.listdir(d)
    except FileNotFoundError:
        return set()
    done = set()
    for n in names:
        try:
            done.add(tuple(int(v) for v in n.split(".")))
        except ValueError:
            continue
    return done


def _read_zup_attrs(out: Path):
    import zarr

    try:
        return dict(zarr.open_group(str(out), mode="r").attrs).get("zup")
    except Exception:
        return None


def _describe_difference(old: dict, new: dict) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys[:4])


def _value_range(client, src, src_array, dtype, given):
    if given is not None:
        lo, hi = (float(v) for v in given)
        return lo, hi
    rng = dtype_value_range(dtype)
    if rng is not None:
        return rng
    # Float input: min/max over the volume, computed by the workers slab by slab.
    step = max(1, int(2 ** 26 // max(1, int(np.prod(src_array.shape[1:])) * dtype.itemsize)))
    n = int(src_array.shape[0])
    if isinstance(src, _PathSource):
        futs = [client.submit(_region_minmax, src, z, min(z + step, n), pure=False)
                for z in range(0, n, step)]
    else:
        remote = client.scatter(src, hash=False) if isinstance(src, np.ndarray) else None
        if remote is None:
            import dask.array as da

            lo, hi, bad = client.compute([da.nanmin(src), da.nanmax(src),
                                          (~da.isfinite(src)).sum()], sync=True)
            if bad:
                raise ValueError(f"the volume has {int(bad)} NaN/inf voxels; replace them first")
            return float(lo), float(hi)
        futs = [client.submit(_region_minmax, remote, z, min(z + step, n), pure=False)
                for z in range(0, n, step)]
    parts = client.gather(futs)
    if any(p is None for p in parts):
        raise ValueError("the volume has NaN/inf voxels; replace them first (e.g. "
                         "numpy.nan_to_num) so that no values have to be invented")
    return min(p[0] for p in parts), max(p[1] for p in parts)


def _run(client, src, src_array, meta, out, name, params, info, f, in_shape, out_shape, dtype,
         vox_in, unit, chunks, levels, input_level, overwrite, resume, value_range, retries,
         progress, cancel, stats, t_start):
    import zarr

    params_json = json.dumps(params, sort_keys=True)
    try:
        client.register_plugin(_WorkerThreads(os.getpid()))
    except Exception as exc:  # an old or restricted cluster: run without it
        log.info("could not register the OpenCV threads plugin: %s", exc)
    geom = client.submit(_method_geometry, name, params_json, pure=False).result()
    existing = _read_zup_attrs(out) if out.exists() else None
    if chunks is None and existing and existing.get("signature", {}).get("chunks"):
        chunks = existing["signature"]["chunks"]  # resume with the store's own chunks
    chunks = _plan_chunks(chunks, out_shape, f, geom)
    if levels is None:
        levels = (existing.get("signature", {}).get("levels") if existing else None) \
            or auto_levels(out_shape)
    levels = int(levels)
    if not 1 <= levels <= 16:
        raise ValueError(f"levels must be between 1 and 16, got {levels}")
    vr = _value_range(client, src, src_array, dtype, value_range)
    signature = {
        "format": SIGNATURE_FORMAT,
        "zup_version": __version__,
        "method": name,
        "method_params": params,
        "checkpoint": _checkpoint_identity(name, info, params),
        "factor": str(f),
        "input": {"shape": list(in_shape), "dtype": dtype.str,
                  "level": int(meta.get("level", input_level)),
                  "fingerprint": meta["fingerprint"]},
        "value_range": [float(vr[0]), float(vr[1])],
        "chunks": list(chunks),
        "levels": levels,
    }
    shapes = [level_shape(out_shape, lv) for lv in range(levels)]
    counts = [_grid_counts(s, chunks) for s in shapes]
    total = sum(int(np.prod(c)) for c in counts)

    if out.exists():
        if existing is None or "signature" not in existing:
            if not overwrite:
                raise OutputConflict(
                    f"output {str(out)!r} exists and was not written by a zup distributed run; "
                    "choose another name or pass overwrite=True (--overwrite) to replace it")
        elif existing["signature"] != signature:
            if not overwrite:
                raise OutputConflict(
                    f"output {str(out)!r} holds a run with other settings "
                    f"({_describe_difference(existing['signature'], signature)}); choose "
                    "another name or pass overwrite=True (--overwrite) to replace it")
        elif existing.get("status") == "complete" and not overwrite:
            if progress:
                progress(total, total)
            if stats is not None:
                stats.update(total_chunks=total, skipped=total, already_complete=True,
                             seconds=time.perf_counter() - t_start, chunks=tuple(chunks),
                             levels=levels, out_shape=out_shape)
            return out
        elif not resume and not overwrite:
            raise OutputConflict(
                f"output {str(out)!r} holds an unfinished run with the same settings; pass "
                "resume=True (--resume) to finish it or overwrite=True to start again")
        if overwrite:
            if out.is_dir():
                shutil.rmtree(out)
            else:
                out.unlink()

    nbytes = sum(int(np.prod(s)) for s in shapes) * dtype.itemsize
    if not out.exists():
        io.check_output_path(out, overwrite=False, nbytes=nbytes)
        run_id = uuid.uuid4().hex
        vox_out, unit = io.output_voxel_size(vox_in, unit, f)  # unknown: pixels, no unit
        zup = {"status": "incomplete", "run_id": run_id, "signature": signature,
               "source": meta.get("path"), "voxel_size_known": vox_in is not None}
        root = zarr.open_group(str(out), mode="w", zarr_format=2)
        for lv, s in enumerate(shapes):
            root.create_array(str(lv), shape=s, chunks=tuple(min(c, n) for c, n in zip(chunks, s)),
                              dtype=dtype, fill_value=0)
        done_group = root.create_group(DONE_GROUP)
        done_group.attrs["note"] = ("per-chunk done markers of an unfinished zup run; removed "
                                    "when the run completes")
        for lv in range(levels):
            (out / DONE_GROUP / str(lv)).mkdir()
        root.attrs.update(io.ome_zarr_attrs(out_shape, vox_out, unit, zup, n_levels=levels))
    else:
        run_id = existing["run_id"]
        (out / DONE_GROUP).mkdir(exist_ok=True)
        for lv in range(levels):
            (out / DONE_GROUP / str(lv)).mkdir(exist_ok=True)

    spec = _RunSpec(str(out), run_id, name, params_json, f, in_shape, out_shape, dtype.str,
                    (float(vr[0]), float(vr[1])), tuple(chunks), info.needs_checkpoint)
    done = [_done_markers(out, lv) for lv in range(levels)]
    n_skipped = sum(len(d) for d in done)

    if isinstance(src, np.ndarray):
        src = client.scatter(src, hash=False)  # once; workers fetch it when they need it
        src_kind = "future"
    else:
        src_kind = "path" if isinstance(src, _PathSource) else (
            "dask" if hasattr(src, "dask") else "future")
    nthreads = sum(client.nthreads().values()) if hasattr(client, "nthreads") else 0
    window = max(MIN_IN_FLIGHT, IN_FLIGHT_PER_THREAD * nthreads)
    n_done = n_skipped
    if progress:
        progress(n_done, total)
    totals = {"read": 0.0, "compute": 0.0, "write": 0.0, "cpu": 0.0, "chunks": 0,
              "in_bytes": 0, "out_bytes": 0, "level0_chunks": 0, "level0_compute": 0.0,
              "level0_cpu": 0.0, "by_level": {}}
    tasks = _task_stream(in_shape, out_shape, f, chunks, geom, counts, done)
    try:
        _submit_and_wait(client, tasks, src, src_kind, spec, retries, window, cancel, progress,
                         n_done, total, totals)
    finally:
        src = None
    # All chunks written: only now does the store say so.
    root = zarr.open_group(str(out), mode="r+", zarr_format=2)
    attrs = dict(root.attrs)
    zup = dict(attrs.get("zup", {}))
    zup["status"] = "complete"
    attrs["zup"] = zup
    root.attrs.update(attrs)
    shutil.rmtree(out / DONE_GROUP, ignore_errors=True)
    if stats is not None:
        stats.update(totals)
        stats.update(total_chunks=total, skipped=n_skipped, seconds=time.perf_counter() - t_start,
                     chunks=tuple(chunks), levels=levels, out_shape=out_shape)
    return out


def _task_stream(in_shape, out_shape, f, chunks, geom, counts, done):
    """Tasks still to do, z-chunk by z-chunk: level 0, then each pyramid level above it.
    Yields ``(level, index, job_or_None, dependency_keys)``; lazily, so a terabyte run does not
    hold millions of task descriptions on the client."""
    levels = len(counts)
    jobs0 = _level0_jobs(in_shape, out_shape, f, chunks, geom)
    job = next(jobs0, None)
    for iz in range(counts[0][0]):
        while job is not None and job.index[0] == iz:
            if job.index not in done[0]:
                yield 0, job.index, job, ()
            job = next(jobs0, None)
        for lv in range(1, levels):
            _, ny, nx = counts[lv]
            below = counts[lv - 1]
            for iy in range(ny):
                for ix in range(nx):
                    idx = (iz, iy, ix)
                    if idx in done[lv]:
                        continue
                    deps = tuple((lv - 1, (iz, y, x)) for y in (2 * iy, 2 * iy + 1)
                                 for x in (2 * ix, 2 * ix + 1)
                                 if y < below[1] and x < below[2])
                    yield lv, idx, None, deps
        yield None, iz, None, ()  # end of this z-chunk


def _submit_and_wait(client, tasks, src, src_kind, spec, retries, window, cancel, progress,
                     n_done, total, totals):
    """Keep at most ``window`` tasks in flight; report progress; stop on cancel or failure."""
    from distributed import as_completed

    ac = as_completed([], loop=client.loop, with_results=False)
    pending: set = set()
    by_chunk: dict = {}  # (level, index) -> future, for the z-chunk being submitted
    exhausted = False

    def submit(level, index, job, deps):
        if level == 0:
            if src_kind == "dask":
                import dask

                z0, z1, y0, y1, x0, x1 = job.region
                fut = client.compute(dask.delayed(_render_chunk, pure=False)(
                    src[z0:z1, y0:y1, x0:x1], spec, job, True), retries=retries)
            else:
                fut = client.submit(_render_chunk, src, spec, job, retries=retries, pure=False)
        else:
            dep_futs = [by_chunk[k] for k in deps if k in by_chunk]
            fut = client.submit(_downsample_chunk, spec, level, index, *dep_futs,
                                retries=retries, pure=False)
        by_chunk[(level, index)] = fut
        pending.add(fut)
        ac.add(fut)

    try:
        while True:
            while not exhausted and len(pending) < window:
                item = next(tasks, None)
                if item is None:
                    exhausted = True
                elif item[0] is None:  # a z-chunk is fully submitted: its futures may go
                    by_chunk.clear()
                else:
                    submit(*item)
            if exhausted and not pending:
                return
            if cancel is not None and cancel.is_set():
                raise ReconstructionCancelled(
                    f"reconstruction cancelled after {n_done} of {total} chunks; rerun the "
                    "same command to resume")
            batch = ac.next_batch(block=False)
            if not batch:
                time.sleep(0.02)
                continue
            for fut in batch:
                pending.discard(fut)
                if fut.status != "finished":
                    exc = fut.exception() if fut.status == "error" else None
                    raise ReconstructionFailed(
                        f"a chunk task failed ({type(exc).__name__ if exc else fut.status}: "
                        f"{exc}); {n_done} of {total} chunks are written and kept; fix the "
                        "cause (e.g. free disk space) and rerun the same command to resume"
                    ) from exc
                _account(fut.result(), totals)
                n_done += 1
                if progress:
                    progress(n_done, total)
    except BaseException:
        for fut in list(pending) + list(by_chunk.values()):
            fut.cancel()
        raise


def _account(r: dict, totals: dict) -> None:
    for k in ("read", "compute", "write", "cpu", "in_bytes", "out_bytes"):
        totals[k] += r.get(k, 0)
    totals["chunks"] += 1
    lv = totals["by_level"].setdefault(r["level"], {"chunks": 0, "read": 0.0, "compute": 0.0,
                                                     "write": 0.0, "cpu": 0.0})
    lv["chunks"] += 1
    for k in ("read", "compute", "write", "cpu"):
        lv[k] += r.get(k, 0)
    if r["level"] == 0:
        totals["level0_chunks"] += 1
        totals["level0_compute"] += r["read"] + r["compute"] + r["write"]
        totals["level0_cpu"] += r.get("cpu", 0)
