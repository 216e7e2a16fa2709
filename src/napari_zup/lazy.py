"""On-demand reconstruction: the whole output as a dask array whose chunks compute when read.

``lazy_reconstruct(volume, "of-linear", 4)[137]`` renders only the z-slab holding output slice
137, reading only the knots it needs (plus the method's z context) and each tile plus its halo:
the same :func:`napari_zup.engine.render_output_block` calls the streaming engine makes, so a
lazily read slice equals the eagerly computed one. Chunks are the engine's own units of work:
one z-slab (``engine.plan_slabs``) by one (y, x) tile.

Works for inputs larger than memory (a lazily read TIFF or OME-Zarr): nothing is read until a
chunk is computed. Results are not cached here; wrap with ``dask.cache`` / napari's own cache,
or persist the chunks you need.
"""
from __future__ import annotations

import dask.array as da
import numpy as np
from dask.local import get_sync

from .engine import _method, _tiles, make_plan, plan_slabs, render_output_block


def lazy_reconstruct(volume, method="linear", factor=2, *, method_params: dict | None = None,
                     tile_size=None, value_range=None) -> da.Array:
    """The reconstruction of ``volume`` at ``factor`` as a lazy dask array (z, y, x).

    Same arguments as :func:`napari_zup.engine.reconstruct`; nothing is computed until the
    array (or part of it) is computed. The method object (a loaded model for learned methods)
    lives as long as the array's graph.

    >>> out = lazy_reconstruct(stack, "of-linear", 4)   # doctest: +SKIP
    >>> xy = out[100].compute()                          # one slab of work, not the volume
    """
    method_obj, _ = _method(method, method_params)
    plan = make_plan(volume, method_obj.info.name, factor, tile_size, method_obj, value_range)
    slabs = plan_slabs(plan.in_shape[0], plan.factor, method_obj)
    tiles = _tiles(plan.in_shape[1:], plan.tile)
    ys = sorted({t[0].start: t[0] for t in tiles}.values(), key=lambda s: s.start)
    xs = sorted({t[1].start: t[1] for t in tiles}.values(), key=lambda s: s.start)
    chunks = (tuple(len(s) for s in slabs), tuple(s.stop - s.start for s in ys),
              tuple(s.stop - s.start for s in xs))

    def block(block_id=None):
        iz, iy, ix = block_id
        out, _ = render_output_block(volume, method_obj, plan.factor, slabs[iz], ys[iy], xs[ix],
                                     plan.value_range)
        return out

    name = f"zup-{method_obj.info.name}-x{float(plan.factor):g}"
    arr = da.map_blocks(block, chunks=chunks, dtype=plan.dtype, name=f"{name}-{id(method_obj):x}",
                        meta=np.empty((0, 0, 0), plan.dtype))
    return arr


class OnDemandVolume:
    """A read-only array over a lazy reconstruction that never blocks its reader.

    Indexing returns at once: chunks already computed come from a bounded cache, missing ones
    read as ``placeholder`` and are queued for a background thread pool; ``on_ready()`` is
    called (from a pool thread) whenever a queued chunk has arrived, so a viewer can refresh.
    This is what a napari layer needs to browse a reconstruction of any size while it is
    computed where the user looks (xy slices as the slider moves, xz/yz planes tile by tile).

    >>> view = OnDemandVolume(lazy_reconstruct(stack, "of-linear", 4), on_ready=refresh)
    ... # doctest: +SKIP
    """

    def __init__(self, lazy: da.Array, *, on_ready=None, cache_bytes: int = 1 << 30,
                 workers: int = 1, placeholder=0):
        import threading
        from collections import OrderedDict
        from concurrent.futures import ThreadPoolExecutor

        self.lazy = lazy
        self.shape, self.dtype, self.ndim = lazy.shape, lazy.dtype, lazy.ndim
        self.on_ready = on_ready
        self.placeholder = placeholder
        self.cache_bytes = int(cache_bytes)
        self._cache: OrderedDict = OrderedDict()
        self._queued: set = set()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="zup-on-demand")
        self._starts = [np.cumsum((0,) + c) for c in lazy.chunks]
        self.errors: list[BaseException] = []

    # -- array protocol (what napari reads) ---------------------------------------------------
    def __len__(self):
        return self.shape[0]

    def __array__(self, dtype=None, copy=None):
        out = self[...]
        return out.astype(dtype) if dtype is not None else out

    def __getitem__(self, key):
        box, squeeze = self._box(key)
        out = np.full(tuple(b.stop - b.start for b in box), self.placeholder, self.dtype)
        for cid in self._chunk_ids(box):
            block = self._cached(cid)
            if block is None:
                self._queue(cid)
                continue
            src, dst = [], []
            for ax, (b, c) in enumerate(zip(box, cid)):
                c0, c1 = self._starts[ax][c], self._starts[ax][c + 1]
                lo, hi = max(b.start, c0), min(b.stop, c1)
                src.append(slice(lo - c0, hi - c0))
                dst.append(slice(lo - b.start, hi - b.start))
            out[tuple(dst)] = block[tuple(src)]
        return out[tuple(0 if s else slice(None) for s in squeeze)]

    # -- bookkeeping -----------------------------------------------------------------------
    def ready(self, key=...) -> bool:
        """Whether every chunk under ``key`` is computed (cached)."""
        box, _ = self._box(key)
        with self._lock:
            return all(c in self._cache for c in self._chunk_ids(box))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _box(self, key):
        if not isinstance(key, tuple):
            key = (key,)
        if any(k is Ellipsis for k in key):
            i = next(n for n, k in enumerate(key) if k is Ellipsis)
            key = key[:i] + (slice(None),) * (self.ndim - len(key) + 1) + key[i + 1:]
        key = key + (slice(None),) * (self.ndim - len(key))
        box, squeeze = [], []
        for k, n in zip(key, self.shape):
            if isinstance(k, slice):
                start, stop, step = k.indices(n)
                if step != 1:
                    raise IndexError("OnDemandVolume supports unit-step slices only")
                box.append(slice(start, max(start, stop)))
                squeeze.append(False)
            else:
                k = int(k) + (n if int(k) < 0 else 0)
                if not 0 <= k < n:
                    raise IndexError(f"index {k} out of range for size {n}")
                box.append(slice(k, k + 1))
                squeeze.append(True)
        return box, squeeze

    def _chunk_ids(self, box):
        import itertools

        ranges = []
        for ax, b in enumerate(box):
            s = self._starts[ax]
            first = int(np.searchsorted(s, b.start, side="right")) - 1
            last = int(np.searchsorted(s, max(b.stop - 1, b.start), side="right")) - 1
            ranges.append(range(first, last + 1) if b.stop > b.start else range(0))
        return list(itertools.product(*ranges))

    def _cached(self, cid):
        with self._lock:
            block = self._cache.get(cid)
            if block is not None:
                self._cache.move_to_end(cid)
            return block

    def _queue(self, cid):
        with self._lock:
            if cid in self._queued:
                return
            self._queued.add(cid)
        self._pool.submit(self._compute, cid)

    def _compute(self, cid):
        try:
            # dask's synchronous scheduler, given as the function itself: named schedulers
            # make dask import dask.distributed first (~0.25 s on the first view)
            block = np.asarray(self.lazy.blocks[cid].compute(scheduler=get_sync))
        except BaseException as exc:  # kept for the caller to show; the view stays usable
            self.errors.append(exc)
            with self._lock:
                self._queued.discard(cid)
            if self.on_ready is not None:
                self.on_ready()
            return
        with self._lock:
            self._cache[cid] = block
            self._queued.discard(cid)
            total = sum(b.nbytes for b in self._cache.values())
            while total > self.cache_bytes and len(self._cache) > 1:
                _, old = self._cache.popitem(last=False)
                total -= old.nbytes
        if self.on_ready is not None:
            self.on_ready()
