"""The fixed drop-and-restore evaluation protocol (../shared/EVALUATION.md).

Take an isotropic stack G, keep every F-th slice (``A = G[::F]``), reconstruct A at factor F,
and score only the restored slices (output index i with ``i % F != 0``) against ``G[i]``:
PSNR, SSIM (skimage defaults, data_range 1), Fourier-cutoff PSNR and IE, intensities scaled
by the dtype range (floats: min-max of G).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from . import grid
from .engine import iter_reconstruct, validate_volume
from .methods.base import dtype_value_range


def unit_scale(volume: np.ndarray) -> tuple[float, float]:
    """(offset, span) mapping ``volume``'s intensities to [0, 1] as the protocol says."""
    rng = dtype_value_range(volume.dtype)
    if rng is None:
        rng = (float(np.min(volume)), float(np.max(volume)))
    lo, hi = rng
    return lo, (hi - lo) or 1.0


def fourier_psnr(restored: np.ndarray, truth: np.ndarray, cutoff: float = 0.5) -> float:
    """PSNR (data range 1) of the part of both images with spatial frequency radius
    ``<= cutoff`` x Nyquist, computed in the unitary Fourier domain (Parseval: equal to the
    PSNR of the two low-passed images)."""
    d = np.fft.fft2(restored.astype(np.float64) - truth.astype(np.float64), norm="ortho")
    fy = np.fft.fftfreq(truth.shape[0])[:, None]
    fx = np.fft.fftfreq(truth.shape[1])[None, :]
    keep = np.sqrt(fy ** 2 + fx ** 2) <= cutoff * 0.5  # Nyquist = 0.5 cycles/pixel
    mse = float(np.sum(np.abs(d[keep]) ** 2)) / truth.size
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)


def slice_metrics(restored: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Metrics of one restored slice; both already scaled to [0, 1]."""
    return {
        "psnr": float(peak_signal_noise_ratio(truth, restored, data_range=1.0)),
        "ssim": float(structural_similarity(truth, restored, data_range=1.0)),
        "fpsnr": fourier_psnr(restored, truth),
        "ie": float(np.mean(np.abs(restored - truth)) * 255.0),
    }


@dataclass
class MethodScore:
    psnr: float
    ssim: float
    fpsnr: float
    ie: float
    seconds_per_slice: float
    n_slices: int
    per_slice: dict[str, list[float]] = field(default_factory=dict, repr=False)

    def summary(self) -> dict[str, float]:
        d = asdict(self)
        d.pop("per_slice")
        return d


def decimate(ground_truth, factor: int) -> np.ndarray:
    """``G[::F]``: keep every F-th slice starting at 0 (thin sections, no averaging)."""
    return np.asarray(ground_truth[::factor])


def evaluate_method(
    ground_truth: np.ndarray,
    factor: int,
    method: str = "linear",
    *,
    method_params: dict | None = None,
    keep_output: bool = False,
    error_maps: bool = False,
    cancel=None,
    on_slice=None,
    **engine_kwargs,
) -> tuple[MethodScore, np.ndarray | None, np.ndarray | None]:
    """Score one method; returns ``(score, reconstruction or None, error maps or None)``.

    Error maps are ``|R - G|`` in [0, 1] units for every output slice (0 on knots).
    ``on_slice(i, slice)`` is called as each output slice is finished (for live display).
    """
    g = np.asarray(ground_truth)
    validate_volume(g)
    f = grid.parse_factor(factor)
    if f.denominator != 1 or f < 2:
        raise ValueError(f"evaluation needs an integer factor >= 2, got {float(f):g}")
    f = int(f)
    a = decimate(g, f)
    if len(a) < 2:
        raise ValueError(
            f"a stack of {len(g)} slices keeps only {len(a)} slice at factor {f}; "
            f"evaluation needs at least {f + 1} slices"
        )
    lo, span = unit_scale(g)
    n_out = grid.output_length(len(a), f)
    # Reconstruct first (timed on its own: the scoring below is not the method's cost), then
    # score; the stacks evaluated are in memory anyway.
    recon = np.empty((n_out,) + g.shape[1:], g.dtype)
    vr = dtype_value_range(g.dtype) or (lo, lo + span)
    t0 = time.perf_counter()
    for i, sl in iter_reconstruct(a, method, f, method_params=method_params, cancel=cancel,
                                  value_range=vr, **engine_kwargs):
        recon[i] = sl
        if on_slice is not None:
            on_slice(i, sl)
    compute_s = time.perf_counter() - t0
    maps = np.zeros((n_out,) + g.shape[1:], np.float32) if error_maps else None
    per_slice: dict[str, list[float]] = {"index": [], "psnr": [], "ssim": [], "fpsnr": [], "ie": []}
    for i in grid.restored_output_indices(len(a), f):
        r = (recon[i].astype(np.float64) - lo) / span
        t = (g[i].astype(np.float64) - lo) / span
        m = slice_metrics(r, t)
        per_slice["index"].append(int(i))
        for k, v in m.items():
            per_slice[k].append(v)
        if maps is not None:
            maps[i] = np.abs(r - t)
    out = recon if keep_output else None
    n = len(per_slice["index"])
    score = MethodScore(
        psnr=float(np.mean(per_slice["psnr"])),
        ssim=float(np.mean(per_slice["ssim"])),
        fpsnr=float(np.mean(per_slice["fpsnr"])),
        ie=float(np.mean(per_slice["ie"])),
        seconds_per_slice=compute_s / max(n, 1),
        n_slices=n,
        per_slice=per_slice,
    )
    return score, out, maps


def evaluate(ground_truth, factor: int, methods=("linear", "cubic", "of-linear", "of-cubic"),
             method_params: dict | None = None, **kwargs) -> dict[str, MethodScore]:
    """Score several methods with the protocol; ``method_params`` maps method -> params."""
    method_params = method_params or {}
    return {
        m: evaluate_method(ground_truth, factor, m, method_params=method_params.get(m),
                           **kwargs)[0]
        for m in methods
    }


def format_table(scores: dict[str, MethodScore], factor) -> str:
    """Plain-text table of scores (the CLI prints it)."""
    lines = [f"factor {factor}: mean over restored slices",
             f"{'method':<12} {'PSNR dB':>8} {'SSIM':>7} {'F-PSNR':>8} {'IE':>6} {'s/slice':>8}"]
    for m, s in scores.items():
        lines.append(f"{m:<12} {s.psnr:8.2f} {s.ssim:7.4f} {s.fpsnr:8.2f} {s.ie:6.2f} "
                     f"{s.seconds_per_slice:8.4f}")
    return "\n".join(lines)
