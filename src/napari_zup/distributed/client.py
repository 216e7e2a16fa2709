"""Client side of the cluster runner: checks the request, starts or connects to a cluster,
plans the chunks, submits at most a window of tasks at a time and counts finished chunks
(it never gathers image data)."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Generator, Iterator

import numpy as np

from .. import grid, io
from ..engine import ReconstructionCancelled, parse_method_factor, validate_volume
from ..methods.base import MethodInfo, dtype_value_range
from ..progress import Progress, drive
from ..pyramid import auto_levels, level_shape
from .chunks import _grid_counts, _plan_chunks, _task_stream
from .store import (_check_existing, _create_store, _done_markers, _fingerprint,
                    _mark_complete, _read_zup_attrs, _reopen_store, _run_signature)
from .worker import (_downsample_chunk, _method_geometry, _PathSource, _region_minmax,
                     _render_chunk, _RunSpec, _WorkerThreads)

log = logging.getLogger("napari_zup.distributed")

#: Tasks submitted but not finished, at most: the client and the scheduler hold only these,
#: so a run of millions of chunks needs no more client memory than a small one.
MIN_IN_FLIGHT = 64
IN_FLIGHT_PER_THREAD = 4
#: The message of the cluster runner's progress events.
_MESSAGE = "chunks written"


class ReconstructionFailed(RuntimeError):
    """A chunk task failed for good; finished chunks are kept and a rerun resumes."""


class SchedulerUnreachable(ConnectionError):
    """The dask scheduler address could not be reached; nothing was written."""


@dataclass(frozen=True)
class _Request:
    """A checked :func:`reconstruct_to_zarr` call: what :func:`_run` needs besides the cluster
    and the source."""

    out: Path
    name: str
    params: dict
    info: MethodInfo
    factor: Fraction
    in_shape: tuple
    out_shape: tuple
    dtype: np.dtype
    voxel_size: tuple | None  # of the input; None: unknown
    unit: str
    chunks: object
    levels: int | None
    input_level: int
    overwrite: bool
    resume: bool
    value_range: tuple | None
    retries: int
    cancel: threading.Event | None
    stats: dict | None
    t_start: float


def reconstruct_to_zarr(source, out_path, method: str = "linear", factor=2, *,
                        progress: Callable[[int, int], None] | None = None, **kwargs) -> Path:
    """Reconstruct ``source`` into the OME-Zarr store ``out_path`` on a dask cluster; returns
    the output path. Arguments as :func:`iter_reconstruct_to_zarr` (which this runs to its
    end); ``progress(done, total)`` is called with finished chunks over all levels.
    """
    events = iter_reconstruct_to_zarr(source, out_path, method, factor, **kwargs)
    return drive(events, None if progress is None else lambda ev: progress(ev.done, ev.total))


# Over 80 lines only by its signature and docstring (the public API of cluster runs); the
# body checks the call and starts the cluster, the work is in _run.
def iter_reconstruct_to_zarr(
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
    cancel: threading.Event | None = None,
    connect_timeout: float = 5.0,
    stats: dict | None = None,
) -> Generator[Progress, None, Path]:
    """Reconstruct ``source`` into the OME-Zarr store ``out_path`` on a dask cluster, as a
    progress generator (:mod:`napari_zup.progress`): yields ``Progress(done, total)`` with the
    finished chunks over all levels (the first event counts those a resumed run skips) and
    returns the output path. Nothing is checked or started before the first ``next()``.

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

    ``cancel`` (a ``threading.Event``) stops the run (ReconstructionCancelled; the store
    stays resumable); closing the generator stops it too. ``stats``: a dict filled with
    per-chunk timings (read/compute/write seconds, summed) for benchmarks.
    """
    from distributed import Client, LocalCluster

    t_start = time.perf_counter()
    out = Path(out_path)
    _check_output_and_cluster(out, workers, scheduler, client)
    params = _normalise_params(method_params)
    info, f = parse_method_factor(method, factor)
    name = info.name

    src, src_array, meta = _resolve_source(source, input_level)
    if meta.get("path"):
        io.check_not_input(out, meta["path"])
    validate_volume(src_array, info.min_slices, name)
    _fit_input_range(info, params, src_array)
    in_shape = tuple(int(s) for s in src_array.shape)
    vox_in, unit = _input_voxel_size(voxel_size, unit, meta)
    _check_output_folder(out)
    req = _Request(
        out=out, name=name, params=params, info=info, factor=f, in_shape=in_shape,
        out_shape=(grid.output_length(in_shape[0], f),) + in_shape[1:],
        dtype=np.dtype(src_array.dtype), voxel_size=vox_in, unit=unit, chunks=chunks,
        levels=levels, input_level=input_level, overwrite=overwrite, resume=resume,
        value_range=value_range, retries=retries, cancel=cancel, stats=stats,
        t_start=t_start)

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
        return (yield from _run(client, src, src_array, meta, req))
    finally:
        if own_client is not None:
            own_client.close()
        if own_cluster is not None:
            own_cluster.close()


def _check_output_and_cluster(out: Path, workers, scheduler, client) -> None:
    if out.suffix.lower() != ".zarr":
        raise ValueError(f"output {out.name!r}: the distributed runner writes OME-Zarr; "
                         "use a name ending in .zarr")
    if sum(x is not None for x in (scheduler, client)) > 1 or (
            workers is not None and (scheduler is not None or client is not None)):
        raise ValueError("give at most one of workers=, scheduler= or client=")
    if workers is not None and int(workers) < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")


def _input_voxel_size(voxel_size, unit: str, meta: dict):
    """(voxel size of the input or None, unit): the caller's, else the file's."""
    if voxel_size is not None:
        vox_in = tuple(float(v) for v in voxel_size)
        if len(vox_in) != 3 or min(vox_in) <= 0:
            raise ValueError(f"voxel_size must be three positive numbers (z, y, x), got "
                             f"{voxel_size}")
        return vox_in, unit
    return meta.get("voxel_size"), meta.get("unit", unit) or unit


def _check_output_folder(out: Path) -> None:
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(f"output folder {str(parent)!r} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise PermissionError(f"output folder {str(parent)!r} is not writable; choose another")


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


def _fit_input_range(info: MethodInfo, params: dict, src_array) -> None:
    """A learned method's intensity map, fitted here once (:mod:`napari_zup.intensity`) and
    passed to every worker as ``input_range``, so that all chunks use the same one."""
    if not info.needs_checkpoint or "input_range" in params or not params.get("normalize", True):
        return
    from ..checkpoints import default_checkpoint, peek_metadata
    from ..intensity import input_range_for

    path = params.get("checkpoint") or default_checkpoint(info.name)
    if path is None or not Path(path).is_file():
        return  # the workers' own refusal names what is missing
    rng = input_range_for(src_array, peek_metadata(path))
    if rng is not None:
        params["input_range"] = [float(rng[0]), float(rng[1])]


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


def _run(client, src, src_array, meta: dict, req: _Request) -> Generator[Progress, None, Path]:
    """Plan, check or create the store, compute every chunk not done yet (yielding progress),
    mark complete."""
    out, f = req.out, req.factor
    params_json = json.dumps(req.params, sort_keys=True)
    try:
        client.register_plugin(_WorkerThreads(os.getpid()))
    except Exception as exc:  # an old or restricted cluster: run without it
        log.info("could not register the OpenCV threads plugin: %s", exc)
    geom = client.submit(_method_geometry, req.name, params_json, pure=False).result()
    existing = _read_zup_attrs(out) if out.exists() else None
    chunks, levels = _chunks_and_levels(req, existing, geom)
    vr = _value_range(client, src, src_array, req.dtype, req.value_range)
    signature = _run_signature(
        name=req.name, params=req.params, info=req.info, factor=f, in_shape=req.in_shape,
        dtype=req.dtype, input_level=meta.get("level", req.input_level),
        fingerprint=meta["fingerprint"], value_range=vr, chunks=chunks, levels=levels)
    shapes = [level_shape(req.out_shape, lv) for lv in range(levels)]
    counts = [_grid_counts(s, chunks) for s in shapes]
    total = sum(int(np.prod(c)) for c in counts)

    if out.exists() and _check_existing(out, existing, signature, overwrite=req.overwrite,
                                        resume=req.resume):
        yield Progress(total, total, _MESSAGE)
        if req.stats is not None:
            req.stats.update(total_chunks=total, skipped=total, already_complete=True,
                             seconds=time.perf_counter() - req.t_start, chunks=tuple(chunks),
                             levels=levels, out_shape=req.out_shape)
        return out
    if not out.exists():
        run_id = _create_store(out, shapes=shapes, chunks=chunks, dtype=req.dtype,
                               signature=signature, source_path=meta.get("path"),
                               voxel_size=req.voxel_size, unit=req.unit, factor=f)
    else:
        run_id = _reopen_store(out, existing, levels)

    spec = _RunSpec(str(out), run_id, req.name, params_json, f, req.in_shape, req.out_shape,
                    req.dtype.str, (float(vr[0]), float(vr[1])), tuple(chunks),
                    req.info.needs_checkpoint)
    done = [_done_markers(out, lv) for lv in range(levels)]
    n_skipped = sum(len(d) for d in done)
    totals = yield from _compute_chunks(client, src, spec, req, geom, counts, done, n_skipped,
                                        total)
    _mark_complete(out)
    if req.stats is not None:
        req.stats.update(totals)
        req.stats.update(total_chunks=total, skipped=n_skipped,
                         seconds=time.perf_counter() - req.t_start, chunks=tuple(chunks),
                         levels=levels, out_shape=req.out_shape)
    return out


def _chunks_and_levels(req: _Request, existing, geom) -> tuple[tuple, int]:
    """Output chunks and pyramid levels: the caller's, else (resume) the store's, else the
    defaults."""
    chunks = req.chunks
    if chunks is None and existing and existing.get("signature", {}).get("chunks"):
        chunks = existing["signature"]["chunks"]  # resume with the store's own chunks
    chunks = _plan_chunks(chunks, req.out_shape, req.factor, geom)
    levels = req.levels
    if levels is None:
        levels = (existing.get("signature", {}).get("levels") if existing else None) \
            or auto_levels(req.out_shape)
    levels = int(levels)
    if not 1 <= levels <= 16:
        raise ValueError(f"levels must be between 1 and 16, got {levels}")
    return chunks, levels


def _compute_chunks(client, src, spec: _RunSpec, req: _Request, geom, counts, done,
                    n_skipped: int, total: int) -> Generator[Progress, None, dict]:
    """Every chunk not marked done, on the cluster; returns the summed per-chunk timings."""
    if isinstance(src, np.ndarray):
        src = client.scatter(src, hash=False)  # once; workers fetch it when they need it
        src_kind = "future"
    else:
        src_kind = "path" if isinstance(src, _PathSource) else (
            "dask" if hasattr(src, "dask") else "future")
    nthreads = sum(client.nthreads().values()) if hasattr(client, "nthreads") else 0
    window = max(MIN_IN_FLIGHT, IN_FLIGHT_PER_THREAD * nthreads)
    yield Progress(n_skipped, total, _MESSAGE)
    totals = {"read": 0.0, "compute": 0.0, "write": 0.0, "cpu": 0.0, "chunks": 0,
              "in_bytes": 0, "out_bytes": 0, "level0_chunks": 0, "level0_compute": 0.0,
              "level0_cpu": 0.0, "by_level": {}}
    tasks = _task_stream(req.in_shape, req.out_shape, req.factor, spec.chunks, geom, counts,
                         done)
    yield from _submit_and_wait(client, tasks, src, src_kind, spec, req, window=window,
                                n_done=n_skipped, total=total, totals=totals)
    return totals


def _submit_and_wait(client, tasks, src, src_kind, spec, req: _Request, *, window: int,
                     n_done: int, total: int, totals: dict) -> Iterator[Progress]:
    """Keep at most ``window`` tasks in flight; yield progress; stop on cancel or failure."""
    from distributed import as_completed

    ac = as_completed([], loop=client.loop, with_results=False)
    pending: set = set()
    by_chunk: dict = {}  # (level, index) -> future, for the z-chunk being submitted
    exhausted = False
    retries, cancel = req.retries, req.cancel

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
                yield Progress(n_done, total, _MESSAGE)
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
