"""The reconstruction engine: streaming, tiled, cancellable, the same for every method.

    >>> import numpy as np
    >>> vol = np.random.default_rng(0).integers(0, 255, (5, 32, 32), dtype=np.uint8)
    >>> out = reconstruct(vol, "linear", 4)
    >>> out.shape, bool((out[::4] == vol).all())
    ((17, 32, 32), True)

One mechanism does all the work: :func:`render_output_block` computes a block of output
slices for one (y, x) tile, reading only the knots it needs plus the method's z-context and
y/x halo (overlap-and-crop, as dask's ``map_overlap``: every kept pixel is at least ``halo``
pixels from a tile edge, so tiles join without seams). :func:`reconstruct_events` runs it over
z-slabs and tiles in a thread pool and yields finished slices in z order as progress events
(:mod:`napari_zup.progress`; :func:`iter_reconstruct` yields just the slices); the cluster
runner (:mod:`napari_zup.distributed`) maps the same function over output chunks.
"""
from __future__ import annotations

import math
import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator, Sequence

import numpy as np

from . import grid
from .methods.base import Method, MethodInfo, create_method, dtype_value_range, get_info
from .progress import Progress, drive

#: Default y/x tile edge when the input is a numpy array (dask arrays use their own chunks,
#: see ``_tile_shape``).
DEFAULT_TILE = 2048


class ReconstructionCancelled(RuntimeError):
    """Raised by :func:`iter_reconstruct` when its ``cancel`` event is set."""


@dataclass(frozen=True)
class Plan:
    """What a reconstruction will produce; computed before any work (validates the input)."""

    method: str
    factor: Fraction
    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]
    dtype: np.dtype
    value_range: tuple[float, float]
    tile: tuple[int, int]
    halo: int

    @property
    def out_nbytes(self) -> int:
        return int(np.prod(self.out_shape)) * np.dtype(self.dtype).itemsize


# -- validation ---------------------------------------------------------------------------------

def validate_volume(volume, min_slices: int = 2, method: str | None = None) -> None:
    """Raise ValueError naming what is wrong with ``volume`` and what to do."""
    shape = tuple(getattr(volume, "shape", ()))
    ndim = len(shape)
    who = f"method {method!r} " if method else ""
    if ndim == 2:
        raise ValueError(
            f"got a 2D image of shape {shape}; z-reconstruction needs a 3D stack (z, y, x) "
            "with at least 2 slices"
        )
    if ndim == 4 and shape[-1] in (3, 4):
        raise ValueError(
            f"got an RGB/RGBA stack of shape {shape}; convert it to grayscale or pick one "
            "channel first (EM data is single-channel)"
        )
    if ndim != 3:
        raise ValueError(
            f"got an array with {ndim} dimensions, shape {shape}; expected a 3D stack "
            "(z, y, x). For multichannel or time series, reconstruct one channel/time point "
            "at a time"
        )
    dtype = np.dtype(volume.dtype)
    if dtype.kind not in "uif":
        raise ValueError(f"unsupported voxel type {dtype}; use uint8, uint16 or float32")
    if shape[0] < min_slices:
        raise ValueError(
            f"{who}needs at least {min_slices} slices along z, got {shape[0]}"
        )
    if shape[1] < 1 or shape[2] < 1:
        raise ValueError(f"slices are empty (shape {shape})")


def volume_value_range(volume) -> tuple[float, float]:
    """Intensity scale: the dtype range for integers, min/max for floats.

    Float volumes with NaN or inf voxels are refused (policy: we do not guess values).
    """
    rng = dtype_value_range(volume.dtype)
    if rng is not None:
        return rng
    import dask.array as da

    arr = volume if isinstance(volume, da.Array) else da.from_array(np.asarray(volume))
    lo, hi, n_bad = da.compute(da.nanmin(arr), da.nanmax(arr), (~da.isfinite(arr)).sum())
    if n_bad:
        raise ValueError(
            f"the volume has {int(n_bad)} NaN/inf voxels; replace them first "
            "(e.g. numpy.nan_to_num) so that no values have to be invented"
        )
    return float(lo), float(hi)


def parse_method_factor(method: str, factor) -> tuple[MethodInfo, Fraction]:
    """``method``'s info and ``factor`` as an exact Fraction; ValueError for an unknown method
    or a fractional factor that the method does not support (the one check every driver,
    the cluster runner included, makes)."""
    info = get_info(method)
    f = grid.parse_factor(factor)
    if f.denominator != 1 and not info.fractional:
        raise ValueError(
            f"method {method!r} supports only integer factors, got {float(f):g}"
        )
    return info, f


def make_plan(volume, method: str, factor, tile_size=None, method_obj: Method | None = None,
              value_range=None) -> Plan:
    info, f = parse_method_factor(method, factor)
    validate_volume(volume, info.min_slices, method)
    z, h, w = (int(s) for s in volume.shape)
    halo = method_obj.halo() if method_obj is not None else 0
    tile = _tile_shape(volume, tile_size, halo)
    if method_obj is not None:
        method_obj.prepare(volume)
    vr = tuple(value_range) if value_range is not None else volume_value_range(volume)
    return Plan(method, f, (z, h, w), (grid.output_length(z, f), h, w),
                np.dtype(volume.dtype), vr, tile, halo)


#: A tile follows the input's dask chunks, but is at least this many halos wide: a 512 px
#: chunk with of-linear's 256 px halo would compute 1024 x 1024 pixels for every 512 x 512.
MIN_TILE_HALOS = 4


def _tile_shape(volume, tile_size, halo: int = 0) -> tuple[int, int]:
    h, w = int(volume.shape[1]), int(volume.shape[2])
    if tile_size:
        ty, tx = (tile_size, tile_size) if np.isscalar(tile_size) else tile_size
        if int(ty) < 1 or int(tx) < 1:
            raise ValueError(f"tile_size must be >= 1 pixel, got {tile_size}")
        return min(int(ty), h), min(int(tx), w)
    chunks = getattr(volume, "chunks", None)
    if chunks is not None and isinstance(chunks, tuple) and isinstance(chunks[1], tuple):
        # dask: follow its (y, x) chunks, whole multiples of them when the halo is large
        def edge(chunk, n):
            k = max(1, -(-MIN_TILE_HALOS * int(halo) // chunk))
            return min(k * chunk, max(chunk, DEFAULT_TILE), n)
        return edge(max(chunks[1]), h), edge(max(chunks[2]), w)
    return min(DEFAULT_TILE, h), min(DEFAULT_TILE, w)


def _tiles(shape_yx, tile) -> list[tuple[slice, slice]]:
    h, w = shape_yx
    ty, tx = tile
    return [(slice(y, min(y + ty, h)), slice(x, min(x + tx, w)))
            for y in range(0, h, ty) for x in range(0, w, tx)]


def plan_slabs(n_slices: int, factor, method: Method | int) -> list[list[int]]:
    """Output indices grouped into the z-slabs the engine renders in one call each:
    ``method.slab_intervals`` knot intervals per slab (the streaming engine's unit of work,
    the lazy array's z-chunks and the cluster runner's render calls, so that all three
    compute exactly the same blocks). ``method``: a Method, or its ``slab_intervals`` (the
    cluster client plans for a method that exists only on its workers)."""
    groups = grid.interval_indices(n_slices, factor)
    step = max(1, method if isinstance(method, int) else method.slab_intervals)
    return [np.concatenate(groups[s:s + step]).tolist() for s in range(0, len(groups), step)]


# -- the one block function -----------------------------------------------------------------------

def render_output_block(
    volume,
    method: Method,
    factor,
    out_indices: Sequence[int],
    ys: slice,
    xs: slice,
    value_range: tuple[float, float],
    want_flows: bool = False,
    out: np.ndarray | None = None,
):
    """Output slices ``out_indices`` (consecutive) restricted to the tile ``(ys, xs)``.

    Reads from ``volume`` (numpy, dask or zarr; anything sliceable) only the knots these
    slices need plus ``method.z_context`` knots each side and ``method.halo()`` pixels around
    the tile. Returns ``(block, flows)``: (len(out_indices), tile_h, tile_w) in the volume's
    dtype (written into ``out`` when given), and a list of per-slice flow fields (or None).
    """
    f = grid.parse_factor(factor)
    n_z, h, w = (int(s) for s in volume.shape)
    positions = [Fraction(i) / f for i in out_indices]
    z0, z1 = knot_window(out_indices[0], out_indices[-1] + 1, f, n_z, method.z_context)
    halo = method.halo()
    min_extent = method.min_tile()
    y0, y1 = read_window(ys, halo, min_extent, h)
    x0, x1 = read_window(xs, halo, min_extent, w)
    block = np.asarray(volume[z0:z1, y0:y1, x0:x1])
    crop = (slice(ys.start - y0, ys.stop - y0), slice(xs.start - x0, xs.stop - x0))

    if out is None:
        out = np.empty((len(positions), ys.stop - ys.start, xs.stop - xs.start), block.dtype)
    flows: list | None = [None] * len(positions) if want_flows else None
    todo = []
    for j, p in enumerate(positions):
        if method.copies_knots and p.denominator == 1:
            out[j] = block[(int(p) - z0, *crop)]
        else:
            todo.append(j)
    if todo:
        res = method.render(block, [float(positions[j] - z0) for j in todo],
                            value_range=value_range, want_flows=want_flows)
        for n, j in enumerate(todo):
            out[j] = res.slices[(n, *crop)]
            if want_flows and res.flows is not None:
                flows[j] = res.flows[n][crop]
    return out, flows


def knot_window(i0: int, i1: int, factor, n_slices: int, z_context: int = 0) -> tuple[int, int]:
    """Input slices ``z0:z1`` (end-exclusive) that output slices ``i0 .. i1 - 1`` are rendered
    from: the knots either side of them plus ``z_context`` knots each side, clipped to the
    volume (a single knot at the end still gets the interval before it)."""
    f = grid.parse_factor(factor)
    k_lo = min(math.floor(Fraction(i0) / f), n_slices - 2)
    k_hi = max(math.ceil(Fraction(i1 - 1) / f), k_lo + 1)
    return max(k_lo - z_context, 0), min(k_hi + z_context, n_slices - 1) + 1


def read_window(sl: slice, halo: int, min_extent: int, size: int) -> tuple[int, int]:
    """Read window of a tile: the tile plus ``halo`` each side, grown to ``min_extent`` when
    the method needs a minimum size (Farnebäck drops pyramid levels on small images),
    clipped to the volume."""
    lo, hi = max(sl.start - halo, 0), min(sl.stop + halo, size)
    short = min_extent - (hi - lo)
    if short > 0:
        lo = max(lo - (short + 1) // 2, 0)
        hi = min(lo + max(min_extent, hi - lo), size)
        lo = max(min(lo, hi - min_extent), 0)
    return lo, hi


# -- streaming driver -------------------------------------------------------------------------

def iter_reconstruct(
    volume,
    method: str | Method = "linear",
    factor=2,
    *,
    method_params: dict | None = None,
    tile_size=None,
    workers: int | None = None,
    want_flows: bool = False,
    cancel: threading.Event | None = None,
    value_range=None,
    out: np.ndarray | None = None,
) -> Iterator[tuple]:
    """Yield ``(z_index, slice)`` in z order as soon as each output slice is finished.

    With ``want_flows=True`` yields ``(z_index, slice, flow)``, flow (H, W, 2) or None.
    ``volume``: numpy or dask array (z, y, x). Tiles follow a dask array's (y, x) chunks, or
    ``tile_size``. ``cancel``: a threading.Event; when set, the run stops after the tiles in
    progress and :class:`ReconstructionCancelled` is raised. Closing the iterator also stops.
    ``out``: optional preallocated output array (numpy) that tiles are written into directly
    (the yielded slices are then views of it).

    The payloads of :func:`reconstruct_events` (the same run, as progress events).
    """
    events = reconstruct_events(
        volume, method, factor, method_params=method_params, tile_size=tile_size,
        workers=workers, want_flows=want_flows, cancel=cancel, value_range=value_range, out=out)
    try:
        for event in events:
            yield event.payload
    finally:
        events.close()


# Long because it is one generator: the pool, the slabs submitted ahead and the cancel checks
# share the state that its `finally` must cancel and close; split, that state would be spread.
def reconstruct_events(
    volume,
    method: str | Method = "linear",
    factor=2,
    *,
    method_params: dict | None = None,
    tile_size=None,
    workers: int | None = None,
    want_flows: bool = False,
    cancel: threading.Event | None = None,
    value_range=None,
    out: np.ndarray | None = None,
) -> Iterator[Progress]:
    """The streaming reconstruction as :class:`napari_zup.progress.Progress` events: one per
    output slice, in z order, ``done`` = slices finished, ``total`` = output slices,
    ``payload`` = ``(z_index, slice)`` (``(z_index, slice, flow)`` with ``want_flows``).
    Arguments as :func:`iter_reconstruct`; once ``cancel`` is set no further event comes
    (:class:`ReconstructionCancelled` at the next ``next()``).
    """
    method_obj, owned = _method(method, method_params)
    name = method_obj.info.name
    try:
        plan = make_plan(volume, name, factor, tile_size, method_obj, value_range)
    except Exception:
        if owned:
            method_obj.close()
        raise
    workers = max(1, workers or os.cpu_count() or 1)
    if method_obj.max_workers:
        workers = min(workers, method_obj.max_workers)
    tiles = _tiles(plan.in_shape[1:], plan.tile)
    slabs = plan_slabs(plan.in_shape[0], plan.factor, method_obj)

    def job(indices, tile, dest):
        if cancel is not None and cancel.is_set():
            return None
        return render_output_block(volume, method_obj, plan.factor, indices, *tile,
                                   plan.value_range, want_flows, out=dest)

    n_done, n_total = 0, plan.out_shape[0]
    message = f"{name} ×{float(plan.factor):g}"
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="zup")
    pending: deque = deque()
    try:
        slab_iter = iter(slabs)
        ahead = max(2, 2 * workers)

        def submit_next():
            indices = next(slab_iter, None)
            if indices is None:
                return False
            if out is not None:  # tiles write straight into the caller's array
                slab = out[indices[0]:indices[-1] + 1]
            else:
                slab = np.empty((len(indices),) + plan.out_shape[1:], plan.dtype)
            futures = [(t, pool.submit(job, indices, t, slab[:, t[0], t[1]])) for t in tiles]
            pending.append((indices, slab, futures))
            return True

        for _ in range(ahead):
            if not submit_next():
                break
        while pending:
            indices, slab, futures = pending.popleft()
            submit_next()
            slab_flows = [None] * len(indices) if want_flows else None
            for (ys, xs), fut in futures:
                result = fut.result()
                if result is None or (cancel is not None and cancel.is_set()):
                    raise ReconstructionCancelled("reconstruction cancelled")
                if want_flows and result[1] is not None:
                    for j, fl in enumerate(result[1]):
                        if fl is None:
                            continue
                        if slab_flows[j] is None:
                            slab_flows[j] = np.zeros(plan.out_shape[1:] + (2,), np.float32)
                        slab_flows[j][ys, xs] = fl
            for j, i in enumerate(indices):
                if cancel is not None and cancel.is_set():  # within one slice of the request
                    raise ReconstructionCancelled("reconstruction cancelled")
                n_done += 1
                item = (i, slab[j], slab_flows[j]) if want_flows else (i, slab[j])
                yield Progress(n_done, n_total, message, item)
    finally:
        for _, _, futures in pending:
            for _, fut in futures:
                fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
        if owned:
            method_obj.close()


def _method(method, params) -> tuple[Method, bool]:
    if isinstance(method, Method):
        if params:
            raise ValueError("pass method_params only with a method name")
        return method, False
    return create_method(method, **(params or {})), True


def check_fits_in_memory(nbytes: int, what: str = "the output", fraction: float = 0.8) -> None:
    """Raise MemoryError with advice when ``nbytes`` exceed ``fraction`` of free RAM."""
    import psutil

    free = psutil.virtual_memory().available
    if nbytes > fraction * free:
        raise MemoryError(
            f"{what} would need {nbytes / 1e9:.1f} GB but only {free / 1e9:.1f} GB of memory "
            "is free; write to a Zarr store instead (zup reconstruct IN OUT.zarr, or "
            "napari_zup.io.write_volume) or stream with iter_reconstruct"
        )


def reconstruct(volume, method: str | Method = "linear", factor=2, *, lazy: bool = False,
                **kwargs):
    """The whole reconstructed volume as a numpy array (see :func:`iter_reconstruct`).

    Refuses (MemoryError, with advice) when the output would not fit in free memory.
    ``lazy=True``: a dask array instead, whose chunks compute only when read
    (:func:`napari_zup.lazy.lazy_reconstruct`; any output size).
    """
    if lazy:
        from .lazy import lazy_reconstruct

        return lazy_reconstruct(volume, method, factor, **kwargs)
    f = grid.parse_factor(factor)
    validate_volume(volume)
    out_shape = (grid.output_length(int(volume.shape[0]), f),) + tuple(volume.shape[1:])
    check_fits_in_memory(int(np.prod(out_shape)) * np.dtype(volume.dtype).itemsize)
    out = np.empty(out_shape, volume.dtype)
    drive(reconstruct_events(volume, method, f, out=out, **kwargs))
    return out
