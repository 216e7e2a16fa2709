"""Dense optical flow between slices (OpenCV Farnebäck) and flow-based warping (cv2.remap).

Convention: ``flow = estimate_flow(a, b)`` has shape (H, W, 2) with (dx, dy) in pixels such
that ``a[y, x] ~ b[y + dy, x + dx]``: a structure at x in ``a`` moved to x + flow(x) in ``b``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import cv2
import numpy as np


#: Farnebäck iterations per pyramid level of the OF-FIBSEM paper (our default is 2).
PAPER_ITERATIONS = 3


@dataclass(frozen=True)
class FarnebackParams:
    """Parameters of ``cv2.calcOpticalFlowFarneback``; defaults follow the OF-FIBSEM paper
    (3 pyramid levels, 129 px window) and the reference of docs/evaluation.md, except
    ``iterations``: 2, not 3 (:data:`PAPER_ITERATIONS`), a quarter less time per flow at
    equal or better SSIM on the FlyEM cube and on both ssTEM stacks (docs/benchmarks.md
    section 15); a texture moving 8 px between knots under a 21 px window is restored
    less well (mean error 4.7 instead of 3.2 grey levels, linear: 17.5). The paper's exact
    flows: ``iterations=3`` (CLI ``--iterations 3 --backward-flow farneback``)."""

    pyr_scale: float = 0.5
    levels: int = 3
    winsize: int = 129
    iterations: int = 2
    poly_n: int = 7
    poly_sigma: float = 1.5
    flags: int = 0

    def __post_init__(self):
        for f in fields(self):  # the declaration is the check: "abc" for a float is refused
            kind = int if f.type in (int, "int") else float
            value = getattr(self, f.name)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (
                kind is float or float(value).is_integer())
            if not ok or not math.isfinite(value):
                raise ValueError(f"{f.name} must be {'an integer' if kind is int else 'a number'}"
                                 f", got {value!r}")
            object.__setattr__(self, f.name, kind(value))
        if not 0 < self.pyr_scale < 1:
            raise ValueError(f"pyr_scale must be in (0, 1), got {self.pyr_scale}")
        if self.levels < 1:
            raise ValueError(f"levels must be >= 1, got {self.levels}")
        if self.winsize < 3:
            raise ValueError(f"winsize must be >= 3, got {self.winsize}")
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")
        if self.poly_n not in (5, 7):
            raise ValueError(f"poly_n must be 5 or 7, got {self.poly_n}")

    def halo(self) -> int:
        """Y/x context a tile needs to match the untiled flow. Measured on real FIB-SEM
        (docs/benchmarks.md): 2 x window x coarsest pyramid step brings tiled output to
        within 1 grey level; beyond 256 px nothing changes measurably, so it is capped."""
        coarsest = (1.0 / self.pyr_scale) ** (self.levels - 1)
        return int(min(2 * self.winsize * coarsest, 256))

    def min_extent(self) -> int:
        """Smallest image edge that keeps every pyramid level: OpenCV skips levels whose
        image would be under 32 px, which changes the flow of small tiles."""
        return int(np.ceil(32 / self.pyr_scale ** self.levels))

    def as_dict(self) -> dict:
        return asdict(self)


def to_uint8(image: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    """Image scaled to 0..255 uint8 for Farnebäck (float input in [0, 1] gives ~zero flow)."""
    if image.dtype == np.uint8:
        return np.ascontiguousarray(image)
    lo, hi = value_range
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    return cv2.convertScaleAbs(image.astype(np.float32), alpha=scale, beta=-lo * scale)


def estimate_flow(
    a: np.ndarray,
    b: np.ndarray,
    params: FarnebackParams = FarnebackParams(),
    value_range: tuple[float, float] = (0.0, 255.0),
) -> np.ndarray:
    """Farnebäck flow from slice ``a`` to slice ``b``: (H, W, 2) float32 (dx, dy) in pixels.

    >>> a = np.zeros((64, 64), np.uint8); a[20:40, 20:40] = 200
    >>> b = np.roll(a, 3, axis=1)
    >>> round(float(estimate_flow(a, b, FarnebackParams(winsize=15))[30, 30, 0]))
    3
    """
    a8 = to_uint8(a, value_range)
    b8 = to_uint8(b, value_range)
    p = params
    return cv2.calcOpticalFlowFarneback(
        a8, b8, None, p.pyr_scale, p.levels, p.winsize, p.iterations, p.poly_n, p.poly_sigma,
        p.flags,
    )


#: Fixed-point steps of :func:`invert_flow`: 1, 2 and 4 give the same SSIM to 1e-5 on
#: sample2 and 2 reach 0.02 px of a backward Farnebäck call (docs/benchmarks.md section 15).
INVERT_ITERATIONS = 2


def invert_flow(flow: np.ndarray, iterations: int = INVERT_ITERATIONS) -> np.ndarray:
    """The flow from ``b`` back to ``a`` given ``flow = estimate_flow(a, b)``.

    The inverse ``g`` satisfies ``g(p) = -flow(p + g(p))`` (a point p of ``b`` came from
    p + g(p) in ``a``); solved by fixed-point iteration from ``g = -flow``, each step one
    bilinear resampling of the field. Farnebäck fields with the paper's window are smooth
    (their Jacobian's deviation from identity is far below 1), so a few steps converge; the
    residual is measured in docs/benchmarks.md. About 1/10 of a second Farnebäck call.

    >>> f = np.zeros((32, 32, 2), np.float32); f[..., 0] = 2.5; f[..., 1] = -1.0
    >>> g = invert_flow(f)
    >>> float(g[16, 16, 0]), float(g[16, 16, 1])
    (-2.5, 1.0)
    """
    h, w = flow.shape[:2]
    gx, gy = _grid(h, w)
    inv = -flow
    for _ in range(iterations):
        map_x = gx + inv[..., 0]
        map_y = gy + inv[..., 1]
        inv = -cv2.remap(flow, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return inv


def volume_flows(volume, pairs, params: FarnebackParams = FarnebackParams(),
                 value_range: tuple[float, float] | None = None):
    """Flow from slice k to k + 1 of ``volume`` (z, y, x) for each k of ``pairs``: an iterator
    of ``(k, flow)``, flows as :func:`estimate_flow`.

    ``value_range`` None: the volume's (``engine.volume_value_range``: an integer dtype's range,
    a float volume's min/max), taken once so that every pair sees the same intensity scale, as
    in a reconstruction; NaN/inf voxels are refused (ValueError) by this call, before any flow.
    A slice shared by consecutive pairs is read once.

    >>> v = np.zeros((3, 64, 64), np.uint8); v[:, 20:40, 20:40] = 200
    >>> v[1] = np.roll(v[0], 3, axis=1)
    >>> flows = volume_flows(v, [0, 1], FarnebackParams(winsize=15))
    >>> [(k, round(float(f[30, 30, 0]))) for k, f in flows]
    [(0, 3), (1, -3)]
    """
    if value_range is None:
        from .engine import volume_value_range

        value_range = volume_value_range(volume)
    return _pair_flows(volume, pairs, params, value_range)


def _pair_flows(volume, pairs, params, value_range):
    last = (None, None)  # (index, slice) read for the previous pair
    for k in pairs:
        k = int(k)
        a = last[1] if last[0] == k else np.asarray(volume[k])
        b = np.asarray(volume[k + 1])
        last = (k + 1, b)
        yield k, estimate_flow(a, b, params, value_range)


_GRID_CACHE: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}


def _grid(h: int, w: int):
    key = (h, w)
    grid = _GRID_CACHE.get(key)
    if grid is None:
        gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
        grid = _GRID_CACHE[key] = (gx, gy)
        if len(_GRID_CACHE) > 16:
            _GRID_CACHE.pop(next(iter(_GRID_CACHE)))
    return grid


def warp(image: np.ndarray, flow: np.ndarray, scale: float) -> np.ndarray:
    """Backward warp: ``out(x) = image(x + scale * flow(x))`` (bilinear, reflected border).

    With ``flow = estimate_flow(a, b)`` and ``scale = -t`` this moves ``a`` a fraction t of
    the way toward ``b``.
    """
    h, w = image.shape
    gx, gy = _grid(h, w)
    map_x = cv2.scaleAdd(flow[..., 0], scale, gx)
    map_y = cv2.scaleAdd(flow[..., 1], scale, gy)
    src = image if image.dtype != np.float64 else image.astype(np.float32)
    out = cv2.remap(src, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return out.astype(image.dtype, copy=False)


def flow_to_rgb(flow: np.ndarray, max_magnitude: float | None = None) -> np.ndarray:
    """Colour-wheel image of a flow field (hue = direction, brightness = magnitude), uint8 RGB."""
    mag, ang = cv2.cartToPolar(flow[..., 0], flow[..., 1], angleInDegrees=True)
    vmax = float(max_magnitude) if max_magnitude else float(np.percentile(mag, 99) or 1.0)
    hsv = np.empty(flow.shape[:2] + (3,), np.uint8)
    hsv[..., 0] = (ang / 2).astype(np.uint8)
    hsv[..., 1] = 255
    hsv[..., 2] = np.clip(mag / max(vmax, 1e-6) * 255, 0, 255).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def flow_vectors(flow: np.ndarray, step: int = 16, scale: float = 1.0) -> np.ndarray:
    """napari Vectors data (N, 2, 2) on a subsampled grid: [[y, x], [dy, dx] * scale]."""
    h, w = flow.shape[:2]
    ys, xs = np.mgrid[step // 2:h:step, step // 2:w:step]
    d = flow[ys, xs]
    vec = np.empty((ys.size, 2, 2), np.float32)
    vec[:, 0, 0] = ys.ravel()
    vec[:, 0, 1] = xs.ravel()
    vec[:, 1, 0] = d[..., 1].ravel() * scale
    vec[:, 1, 1] = d[..., 0].ravel() * scale
    return vec
