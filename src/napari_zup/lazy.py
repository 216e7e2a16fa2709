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
