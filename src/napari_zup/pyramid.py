"""Multiscale levels of an OME-Zarr output: each level halves y and x (z is kept).

A level-``l`` chunk is the 2x2 mean of the matching level-``l-1`` region, so every level can
be computed chunk by chunk (one task per chunk) right after the chunks it reads are written.
Integer means are rounded half up in exact integer arithmetic, so the result does not depend on
how the work was split.
"""
from __future__ import annotations

import math

import numpy as np

from .methods.base import to_dtype

#: Automatic levels stop once the largest y/x edge is at most this many pixels.
SMALLEST_EDGE = 512
MAX_LEVELS = 10


def level_shape(shape, level: int) -> tuple[int, int, int]:
    """Shape of pyramid level ``level`` for a level-0 ``shape`` (z, y, x)."""
    z, h, w = (int(s) for s in shape)
    d = 2 ** level
    return z, math.ceil(h / d), math.ceil(w / d)


def auto_levels(shape, smallest_edge: int = SMALLEST_EDGE) -> int:
    """Number of levels (including level 0) until max(y, x) <= ``smallest_edge``."""
    n = 1
    while max(level_shape(shape, n - 1)[1:]) > smallest_edge and n < MAX_LEVELS:
        n += 1
    return n


def downsample_yx(block: np.ndarray) -> np.ndarray:
    """2x2 mean in y/x of a (z, y, x) block, in the block's dtype.

    An odd last row/column is averaged with itself (edge replication), so edges keep their
    brightness.
    """
    b = np.asarray(block)
    if b.shape[1] % 2 or b.shape[2] % 2:
        b = np.pad(b, ((0, 0), (0, b.shape[1] % 2), (0, b.shape[2] % 2)), mode="edge")
    dtype = np.dtype(block.dtype)
    if dtype.kind in "ui" and dtype.itemsize <= 2:  # exact: 4 x 16 bit fits in 32 bit
        acc = b[:, 0::2, 0::2].astype(np.int32)
        acc += b[:, 1::2, 0::2]
        acc += b[:, 0::2, 1::2]
        acc += b[:, 1::2, 1::2]
        acc += 2
        acc >>= 2  # floor((sum + 2) / 4): round half up
        return acc.astype(dtype)
    acc = b[:, 0::2, 0::2].astype(np.float64)
    acc += b[:, 1::2, 0::2]
    acc += b[:, 0::2, 1::2]
    acc += b[:, 1::2, 1::2]
    acc *= 0.25
    return to_dtype(acc, dtype)
