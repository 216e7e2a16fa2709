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


def blend(images: Sequence[np.ndarray], weights: Sequence[float], dtype) -> np.ndarray:
    """``sum(w * image)`` rounded and saturated into ``dtype`` (float dtypes: plain sum)."""
    dtype = np.dtype(dtype)
    depth = _CV_DEPTH.get(dtype)
    if depth is None:  # uncommon dtypes (int32, ...): exact numpy path
        from .base import to_dtype

        acc = sum(w * im.astype(np.float64) for w, im in zip(weights, images))
        return to_dtype(acc, dtype)
    if len(images) == 1:
        return images[0].copy() if weights[0] == 1 else cv2.addWeighted(
            images[0], weights[0], images[0], 0.0, 0.0, dtype=depth)
    if len(images) == 2:
        return cv2.addWeighted(images[0], weights[0], images[1], weights[1], 0.0, dtype=depth)
    if len(images) == 4:
        acc_depth = cv2.CV_64F if dtype == np.float64 else cv2.CV_32F
        s1 = cv2.addWeighted(images[1], weights[1], images[2], weights[2], 0.0, dtype=acc_depth)
        s2 = cv2.addWeighted(images[0], weights[0], images[3], weights[3], 0.0, dtype=acc_depth)
        return cv2.add(s1, s2, dtype=depth)
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
            out[j] = blend([block[k], block[k + 1]], [1.0 - t, t], block.dtype)
        return RenderResult(out)


class Cubic(Method):
    info = MethodInfo(
        name="cubic", kind="pair", fractional=True, min_slices=2,
        description="Catmull-Rom cubic (a = 1/2) over four slices (eq. 37), outer knots clamped.",
    )
    z_context = 1

    def render(self, block, positions, *, value_range, want_flows=False):
        n = len(block)
        out = np.empty((len(positions),) + block.shape[1:], block.dtype)
        for j, p in enumerate(positions):
            k, t = _split(p, n)
            idx = [min(max(k + d, 0), n - 1) for d in (-1, 0, 1, 2)]
            out[j] = blend([block[i] for i in idx], catmull_rom_weights(t), block.dtype)
        return RenderResult(out)


register(Nearest.info, Nearest)
register(Linear.info, Linear)
register(Cubic.info, Cubic)
