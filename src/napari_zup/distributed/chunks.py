"""How a cluster run cuts its output into tasks: chunk shapes (z borders on knots and, for
axial methods, on slab borders), each level-0 chunk's input region and render calls (from the
engine's own planner: :func:`~napari_zup.engine.plan_slabs`,
:func:`~napari_zup.engine.knot_window`, :func:`~napari_zup.engine.read_window`), and the lazy
stream of tasks still to do."""
from __future__ import annotations

import math
from typing import Iterator

import numpy as np

from .. import grid
from ..engine import knot_window, plan_slabs, read_window
from .worker import _ChunkJob

#: Target number of output slices per chunk along z (rounded to whole knot intervals).
CHUNK_Z = 16
#: y/x chunk edge; methods with a large halo get larger chunks so the halo stays cheap.
CHUNK_YX = 512
CHUNK_YX_LARGE_HALO = 1024


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
    """Every level-0 chunk: its input region and its render calls, the engine's slabs cut at
    the chunk's z borders (so a chunk renders exactly what the streaming engine would)."""
    n_z, h, w = in_shape
    cz, cy, cx = chunks
    halo, zc, min_tile = geom["halo"], geom["z_context"], geom["min_tile"]
    slabs = [(s[0], s[-1] + 1) for s in plan_slabs(n_z, f, geom["slab_intervals"])]
    for iz, i0 in enumerate(range(0, out_shape[0], cz)):
        i1 = min(i0 + cz, out_shape[0])
        parts = tuple((max(a, i0), min(b, i1)) for a, b in slabs if a < i1 and b > i0)
        z0, z1 = knot_window(i0, i1, f, n_z, zc)
        for iy, y in enumerate(range(0, h, cy)):
            ys = slice(y, min(y + cy, h))
            for ix, x in enumerate(range(0, w, cx)):
                xs = slice(x, min(x + cx, w))
                region = (z0, z1, *read_window(ys, halo, min_tile, h),
                          *read_window(xs, halo, min_tile, w))
                yield _ChunkJob((iz, iy, ix), (i0, i1), ys, xs, region, parts)


def _grid_counts(shape, chunks):
    return tuple(math.ceil(s / c) for s, c in zip(shape, chunks))


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
