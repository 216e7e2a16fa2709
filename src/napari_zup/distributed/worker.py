"""Worker side of the cluster runner: everything here runs inside dask workers (and must be
importable there). The client sends :class:`_RunSpec` and :class:`_ChunkJob` descriptions;
a task reads its input region, renders with the engine's block function, writes its own
zarr chunk and then its done marker (:mod:`.store`)."""
from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from .. import io
from ..engine import render_output_block
from ..methods.base import create_method
from ..pyramid import downsample_yx
from .store import _mark_done

try:  # distributed is an optional dependency (pip install napari-zup[distributed])
    from distributed import WorkerPlugin as _WorkerPlugin
except ImportError:  # pragma: no cover
    _WorkerPlugin = object

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
