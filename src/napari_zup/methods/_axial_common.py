"""What the axial restorers (niiv, a2i) share: plane extraction, xz/yz fusion, the
self-supervised training pairs, and a checkpoint-loading :class:`AxialMethod` base.

An axial restorer treats every xz plane ``block[:, y, :]`` and every yz plane
``block[:, :, x]`` of a z-slab as a 2D image that is low-resolution along its first axis (z)
and restores it at the requested z-positions; the two stacks of restored planes are fused.
It learns that mapping from *lateral* (xy) patches of the same kind of data, degraded along
one axis (y or x) to look like an axial plane (niiv-neural-implicit.txt, sec. 3): thin
sections = keep every F-th row ("decimate", EVALUATION.md), thick sections = average F rows
("pool").

Both models share one calling convention::

    model(lr, positions, cell) -> (B, 1, len(positions), W)

``lr`` (B, 1, n, W) in [0, 1]; ``positions`` (P,) float tensor of output row coordinates in
units of ``lr`` rows (0 = first row); ``cell`` = output row spacing in ``lr`` rows (1/F).
"""
from __future__ import annotations

import math
import threading
from abc import abstractmethod
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..intensity import IntensityMap
from .base import Method, RenderResult, to_dtype

DEGRADATIONS = ("decimate", "pool")
FUSIONS = ("mean", "geometric", "xz", "yz")


_threads_lock = threading.Lock()
_threads_users = 0
_threads_saved = 1


@contextmanager
def split_torch_threads(parts: int):
    """torch's intra-op threads divided by ``parts`` while inside (at least 1), restored when
    the last concurrent user leaves: ``parts`` Python threads then each run their own ops on
    their own cores (torch's tiny per-op parallel regions on 2 cores cost more than they give;
    docs/benchmarks.md section 16). Process-wide while it lasts (torch has one setting)."""
    import torch

    global _threads_users, _threads_saved
    with _threads_lock:
        if _threads_users == 0:
            _threads_saved = torch.get_num_threads()
            torch.set_num_threads(max(1, _threads_saved // parts))
        _threads_users += 1
    try:
        yield
    finally:
        with _threads_lock:
            _threads_users -= 1
            if _threads_users == 0:
                torch.set_num_threads(_threads_saved)


# -- planes and fusion --------------------------------------------------------------------------

def xz_planes(block: np.ndarray) -> np.ndarray:
    """(n, H, W) -> (H, n, W): one xz plane (z rows, x columns) per y."""
    return np.ascontiguousarray(block.transpose(1, 0, 2))


def yz_planes(block: np.ndarray) -> np.ndarray:
    """(n, H, W) -> (W, n, H): one yz plane (z rows, y columns) per x."""
    return np.ascontiguousarray(block.transpose(2, 0, 1))


def fuse(xz: np.ndarray, yz: np.ndarray, fusion: str = "mean") -> np.ndarray:
    """Fuse restored planes into slices (P, H, W).

    ``xz``: (H, P, W) restored xz planes; ``yz``: (W, P, H) restored yz planes (values >= 0).
    ``fusion``: "mean" (arithmetic), "geometric" (sqrt of the product), or "xz"/"yz" (one
    orientation only; the other may be None).
    """
    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}, got {fusion!r}")
    a = xz.transpose(1, 0, 2) if xz is not None else None  # (P, H, W)
    b = yz.transpose(1, 2, 0) if yz is not None else None  # (P, H, W)
    if fusion == "xz":
        return np.ascontiguousarray(a)
    if fusion == "yz":
        return np.ascontiguousarray(b)
    if a.shape != b.shape:
        raise ValueError(f"xz and yz results disagree in shape: {a.shape} vs {b.shape}")
    if fusion == "mean":
        return 0.5 * (a + b)
    return np.sqrt(np.clip(a, 0, None) * np.clip(b, 0, None))


def query_grid(positions: Sequence[float], n: int) -> tuple[np.ndarray, np.ndarray, float]:
    """A uniform grid of output rows over ``[0, n-1]`` that contains every position.

    The engine asks for positions ``i/F - z0`` (knots excluded when they are copied). For
    F > 1 the output spacing 1/F is below 1, and it is their smallest gap whenever two
    restored slices follow each other. When they never do (F = 2: one slice per interval, at
    k + 1/2; or a single position), the gaps are whole knot intervals and the spacing is the
    distance of a position to its knot. Returns ``(grid, index_of_each_position, spacing)``;
    models that work on a regular output image (a2i) render the grid and pick the requested
    rows.
    """
    p = np.asarray(sorted(float(x) for x in positions))
    if len(p) == 0:
        raise ValueError("no positions to render")
    gaps = np.diff(p)
    gaps = gaps[gaps > 1e-6]
    d = float(gaps.min()) if len(gaps) else 1.0
    if d > 1 - 1e-6:  # no two restored slices are neighbours: measure from the knot
        frac = p[0] - math.floor(p[0])
        d = min(frac, 1 - frac) if 1e-6 < frac < 1 - 1e-6 else 1.0
    start = p[0] - math.floor(p[0] / d + 1e-6) * d
    count = int(math.floor((n - 1 - start) / d + 1e-6)) + 1
    grid = start + d * np.arange(count)
    idx = np.rint((np.asarray([float(x) for x in positions]) - start) / d).astype(int)
    idx = np.clip(idx, 0, count - 1)
    return grid, idx, d


# -- self-supervised training pairs -----------------------------------------------------------

def degrade_rows(hr: np.ndarray, factor: int, degradation: str = "decimate") -> tuple[np.ndarray, np.ndarray]:
    """Degrade ``hr`` (..., R, W) along its row axis like an axial plane at ``factor``.

    Returns ``(lr, positions)``: ``lr`` (..., n, W) and the coordinate of every ``hr`` row in
    units of ``lr`` rows. "decimate": ``lr[k] = hr[k*F]`` (thin sections, EVALUATION.md), hr
    row i at i/F. "pool": ``lr[k] = mean(hr[k*F:(k+1)*F])`` (thick sections), hr row i at
    (i - (F-1)/2)/F (the centre of section k is at lr coordinate k).
    """
    f = int(factor)
    if f < 1 or f != factor:
        raise ValueError(f"training factor must be an integer >= 1, got {factor}")
    r = hr.shape[-2]
    if degradation == "decimate":
        lr = hr[..., ::f, :]
        pos = np.arange(r) / f
    elif degradation == "pool":
        n = r // f
        if n < 1:
            raise ValueError(f"a patch of {r} rows is too short to pool by {f}")
        lr = hr[..., : n * f, :].reshape(hr.shape[:-2] + (n, f, hr.shape[-1])).mean(axis=-2)
        pos = (np.arange(r) - (f - 1) / 2) / f
    else:
        raise ValueError(f"degradation must be one of {', '.join(DEGRADATIONS)}, got {degradation!r}")
    return lr, pos


def add_noise(img: np.ndarray, rng: np.random.Generator, noise_std: float = 0.0,
              poisson_peak: float = 0.0) -> np.ndarray:
    """Optional noise on a degraded input in [0, 1]: Poisson with ``poisson_peak`` counts at
    intensity 1 (0 = off), then Gaussian with ``noise_std``."""
    out = img
    if poisson_peak > 0:
        out = rng.poisson(np.clip(out, 0, None) * poisson_peak) / poisson_peak
    if noise_std > 0:
        out = out + rng.normal(0.0, noise_std, out.shape)
    return out


@dataclass
class PairSampler:
    """Random lateral (xy) patches of a volume, degraded along y or x at ``factor``.

    ``volume`` (Z, H, W) float in [0, 1] (the user's anisotropic stack: its xy slices are
    full resolution). ``factors``: integer factors to draw from (one per batch). ``rows``:
    low-resolution rows per patch; ``width``: patch columns.
    """

    volume: np.ndarray
    factors: Sequence[int]
    rows: int = 12
    width: int = 48
    degradation: str = "decimate"
    noise_std: float = 0.0
    poisson_peak: float = 0.0
    seed: int = 0
    #: optional ``degrade(images (N, R, W), rng) -> images`` applied to the full-resolution
    #: patches before they are degraded along rows (training ``--augment``)
    degrade: object = None

    def __post_init__(self):
        if self.degradation not in DEGRADATIONS:
            raise ValueError(f"degradation must be one of {', '.join(DEGRADATIONS)}, "
                             f"got {self.degradation!r}")
        self.rng = np.random.default_rng(self.seed)
        z, h, w = self.volume.shape
        need = self.hr_rows(max(self.factors))
        if min(h, w) < max(need, self.width):
            raise ValueError(
                f"xy slices of {h}x{w} pixels are too small for training patches of "
                f"{need}x{self.width} at factor {max(self.factors)}; use a smaller --patch "
                "or factor, or a larger volume")

    def hr_rows(self, f: int) -> int:
        return (self.rows - 1) * f + 1 if self.degradation == "decimate" else self.rows * f

    def sample(self, batch: int, factor: int | None = None):
        """``(lr (B,1,n,W), hr (B,1,R,W), positions (R,), factor)`` as float32 numpy."""
        rng = self.rng
        f = int(factor or rng.choice(self.factors))
        r = self.hr_rows(f)
        z, h, w = self.volume.shape
        hrs = []
        for _ in range(batch):
            k = rng.integers(z)
            sl = self.volume[k]
            if rng.random() < 0.5:  # degrade along x instead of y
                sl = sl.T
            y = rng.integers(sl.shape[0] - r + 1)
            x = rng.integers(sl.shape[1] - self.width + 1)
            p = sl[y:y + r, x:x + self.width]
            if rng.random() < 0.5:
                p = p[::-1]
            if rng.random() < 0.5:
                p = p[:, ::-1]
            hrs.append(p)
        hr = np.stack(hrs).astype(np.float32)
        if self.degrade is not None:  # drawn per patch
            hr = np.stack([self.degrade(p[None], rng)[0] for p in hr])
        hr = hr[:, None]
        lr, pos = degrade_rows(hr, f, self.degradation)
        lr = add_noise(lr, rng, self.noise_std, self.poisson_peak).astype(np.float32)
        return lr, hr, pos.astype(np.float32), f


def bound_rows(out, lr, positions, radius: int = 2):
    """Anchor restored rows to their inputs: clamp ``out`` (B, 1, P, W) at ``positions`` (P,)
    to the range of the two ``lr`` (B, 1, n, W) rows around each position, within
    ``radius`` columns. A model cannot invent intensities its inputs do not have nearby, so
    flat planes stay exactly flat; structure between the two rows passes unchanged."""
    import torch
    import torch.nn.functional as F

    n = lr.shape[2]
    k, p = (1, 2 * radius + 1), (0, radius)
    hi, lo = F.max_pool2d(lr, k, 1, p), -F.max_pool2d(-lr, k, 1, p)
    k0 = torch.clamp(torch.floor(positions), 0, max(n - 2, 0)).long()
    k1 = torch.clamp(k0 + 1, max=n - 1)
    hi = torch.maximum(hi[:, :, k0], hi[:, :, k1]).to(out.dtype)
    lo = torch.minimum(lo[:, :, k0], lo[:, :, k1]).to(out.dtype)
    return torch.minimum(torch.maximum(out, lo), hi)


# -- the Method base ---------------------------------------------------------------------------

class AxialMethod(Method):
    """Engine adapter shared by the axial restorers; subclasses set ``info`` and implement
    :meth:`build_model` (from checkpoint metadata ``arch``)."""

    z_context = 3
    copies_knots = True
    slab_intervals = 32
    #: planes per forward pass on a GPU (memory bound)
    batch_planes = 32
    #: planes per forward pass on the CPU (None: ``batch_planes``); small batches keep the
    #: activations in cache
    cpu_batch_planes: int | None = None
    #: restore the xz and yz planes in two threads on the CPU (measured per method: a2i
    #: x2.2 with its small batches, niiv no gain; docs/benchmarks.md section 16)
    cpu_parallel_orientations = False

    def __init__(self, checkpoint=None, device: str = "auto", fusion: str = "mean",
                 normalize: bool = True, input_range=None):
        from ..checkpoints import load_model
        from ..devices import select_device

        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}, got {fusion!r}")
        self.fusion = fusion
        self.device = select_device(device)
        model, self.metadata, self.checkpoint = load_model(self.info.name, self.build_model,
                                                           checkpoint)
        self.model = model.to(self.device)
        self.degradation = self.metadata.get("training", {}).get("degradation", "decimate")
        self.normalization = IntensityMap(self.metadata, normalize, input_range)

    def prepare(self, volume) -> None:
        self.normalization.fit(volume)

    def notes(self) -> list[str]:
        return self.normalization.notes()

    @classmethod
    @abstractmethod
    def build_model(cls, arch: dict):
        """The torch module for architecture ``arch`` (the checkpoint's metadata)."""

    def halo(self) -> int:
        return int(getattr(self.model, "receptive_halo", 16))

    def restore_planes(self, planes: np.ndarray, positions: np.ndarray, cell: float) -> np.ndarray:
        """(B, n, W) planes in [0, 1] -> (B, P, W) restored at ``positions`` (lr-row units)."""
        import torch

        out = np.empty((planes.shape[0], len(positions), planes.shape[2]), np.float32)
        pos = torch.as_tensor(np.asarray(positions, np.float32), device=self.device)
        batch = ((self.device == "cpu" and self.cpu_batch_planes) or self.batch_planes)
        with torch.inference_mode():
            for s in range(0, planes.shape[0], batch):
                x = torch.from_numpy(planes[s:s + batch][:, None]).to(self.device)
                y = bound_rows(self.model(x, pos, cell), x, pos)
                out[s:s + batch] = y[:, 0].float().cpu().numpy()
        return out

    def render(self, block, positions, *, value_range, want_flows=False):
        import torch

        lo, hi = self.normalization.range(value_range)
        span = (hi - lo) or 1.0
        n = block.shape[0]
        x = (block.astype(np.float32) - lo) / span
        _, _, d = query_grid(positions, n)
        # With "pool" checkpoints the knots are section centres: the same coordinates.
        pos = np.asarray(positions, np.float64)
        xz = yz = None
        if self.fusion == "xz":
            xz = self.restore_planes(xz_planes(x), pos, d)
        elif self.fusion == "yz":
            yz = self.restore_planes(yz_planes(x), pos, d)
        elif self.cpu_parallel_orientations and self.device == "cpu" and torch.get_num_threads() >= 2:
            # both orientations at once, each on its own core(s)
            with split_torch_threads(2), ThreadPoolExecutor(2, "zup-axial") as pool:
                fx = pool.submit(self.restore_planes, xz_planes(x), pos, d)
                fy = pool.submit(self.restore_planes, yz_planes(x), pos, d)
                xz, yz = fx.result(), fy.result()
        else:
            xz = self.restore_planes(xz_planes(x), pos, d)
            yz = self.restore_planes(yz_planes(x), pos, d)
        fused = fuse(xz, yz, self.fusion)
        return RenderResult(to_dtype(fused * span + lo, block.dtype))

    def close(self):
        self.model = None
