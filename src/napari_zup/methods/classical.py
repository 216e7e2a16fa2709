"""Classical z-interpolation baselines: nearest, linear and cubic (Catmull-Rom, a = 1/2).

Blending runs in OpenCV (``cv2.addWeighted`` / ``cv2.add``): SIMD, releases the GIL, and
saturating rounding into the output dtype in the same pass; several times faster than numpy.
"""
from __future__ import annotations

import math
from typing import Sequence

import cv2
import numpy as np

from .base import Method, MethodInfo, RenderResult, register

_CV_DEPTH = {
    np.dtype(np.uint8): cv2.CV_8U,
    np.dtype(np.uint16): cv2.CV_16U,
    np.dtype(np.int16): cv2.CV_16S,
    np.dtype(np.float32): cv2.CV_32F,
    np.dtype(np.float64): cv2.CV_64F,
}


def catmull_rom_weights(t: float) -> tuple[float, float, float, float]:
    """Weights of knots k-1, k, k+1, k+2 for position k + t (Keys' cubic kernel, a = 1/2)."""
    t2, t3 = t * t, t * t * t
    return (
        0.5 * (-t3 + 2 * t2 - t),
        0.5 * (3 * t3 - 5 * t2 + 2),
        0.5 * (-3 * t3 + 4 * t2 + t),
        0.5 * (t3 - t2),
    )


def blend(images: Sequence[np.ndarray], weights: Sequence[float], dtype,
          dst: np.ndarray | None = None) -> np.ndarray:
    """``sum(w * image)`` rounded and saturated into ``dtype`` (float dtypes: plain sum),
    written into ``dst`` when given (a contiguous (H, W) array of ``dtype``)."""
    dtype = np.dtype(dtype)
    depth = _CV_DEPTH.get(dtype)
    if depth is None:  # uncommon dtypes (int32, ...): exact numpy path
        from .base import to_dtype

        acc = sum(w * im.astype(np.float64) for w, im in zip(weights, images))
        res = to_dtype(acc, dtype)
        if dst is not None:
            dst[...] = res
            return dst
        return res
    if dst is not None and not (dst.flags.c_contiguous and dst.dtype == dtype):
        dst[...] = blend(images, weights, dtype)
        return dst
    if len(images) == 1:
        return cv2.addWeighted(images[0], weights[0], images[0], 0.0, 0.0, dst=dst,
                               dtype=depth)
    if len(images) == 2:
        return cv2.addWeighted(images[0], weights[0], images[1], weights[1], 0.0, dst=dst,
                               dtype=depth)
    if len(images) == 4:
        # Two float partial sums per band of rows: the temporaries stay in cache, and
        # addWeighted(float, float -> int) is SIMD where cv2.add with a dtype change is not.
        acc_depth = cv2.CV_64F if dtype == np.float64 else cv2.CV_32F
        h, w = images[0].shape
        if dst is None:
            dst = np.empty((h, w), dtype)
        band = max(1, min(h, (1 << 17) // max(w, 1)))
        acc = np.float64 if dtype == np.float64 else np.float32
        s1 = np.empty((band, w), acc)
        s2 = np.empty((band, w), acc)
        for r in range(0, h, band):
            rows = slice(r, min(r + band, h))
            n = rows.stop - rows.start
            a1, a2 = s1[:n], s2[:n]
            cv2.addWeighted(images[1][rows], weights[1], images[2][rows], weights[2], 0.0,
                            dst=a1, dtype=acc_depth)
            cv2.addWeighted(images[0][rows], weights[0], images[3][rows], weights[3], 0.0,
                            dst=a2, dtype=acc_depth)
            cv2.addWeighted(a1, 1.0, a2, 1.0, 0.0, dst=dst[rows], dtype=depth)
        return dst
    raise ValueError("blend takes 1, 2 or 4 images")


def _split(position: float, n: int) -> tuple[int, float]:
    """Knot index k (so that block[k], block[k+1] exist) and fraction t of a position."""
    k = min(int(math.floor(position)), n - 2)
    return k, float(position - k)


class Nearest(Method):
    info = MethodInfo(
        name="nearest", kind="pair", fractional=True, min_slices=2,
        description="Nearest input slice (ties go to the lower slice): blocky, never invents.",
    )

    def render(self, block, positions, *, value_range, want_flows=False):
        n = len(block)
        out = np.empty((len(positions),) + block.shape[1:], block.dtype)
        for j, p in enumerate(positions):
            k, t = _split(p, n)
            out[j] = block[k + 1] if t > 0.5 else block[k]
        return RenderResult(out)


class Linear(Method):
    info = MethodInfo(
        name="linear", kind="pair", fractional=True, min_slices=2,
        description="Linear blend of the two neighbouring slices (eq. 36): fast, blurs motion.",
    )

    def render(self, block, positions, *, value_range, want_flows=False):
        n = len(block)
        out = np.empty((len(positions),) + block.shape[1:], block.dtype)
        for j, p in enumerate(positions):
            k, t = _split(p, n)
            blend([block[k], block[k + 1]], [1.0 - t, t], block.dtype, dst=out[j])
        return RenderResult(out)


class Cubic(Method):
    info = MethodInfo(
        name="cubic", kind="pair", fractional=True, min_slices=2,
        description="Catmull-Rom cubic (a = 1/2) over four slices (eq. 37); outer knots clamped at the ends, so 2-3 slices work too.",
    )
    z_context = 1

    def render(self, block, positions, *, value_range, want_flows=False):
        n = len(block)
        out = np.empty((len(positions),) + block.shape[1:], block.dtype)
        for j, p in enumerate(positions):
            k, t = _split(p, n)
            idx = [min(max(k + d, 0), n - 1) for d in (-1, 0, 1, 2)]
            blend([block[i] for i in idx], catmull_rom_weights(t), block.dtype, dst=out[j])
        return RenderResult(out)


register(Nearest.info, Nearest)
register(Linear.info, Linear)
register(Cubic.info, Cubic)
