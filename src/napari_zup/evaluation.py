"""The fixed evaluation protocol (docs/evaluation.md).

Drop-and-restore: take an isotropic stack G, keep every F-th slice (``A = G[::F]``),
reconstruct A at factor F, and score only the restored slices (output index i with
``i % F != 0``) against ``G[i]``: PSNR, SSIM (skimage defaults, data_range 1), Fourier-cutoff
PSNR, IE and the texture ratio, intensities scaled by the dtype range (floats: min-max of G).

Self-evaluation (:func:`self_evaluate`): the same on a real anisotropic stack A at factor 2
(``B = A[::2]``, restored sections scored against ``A[1::2]``); scores are at twice the real
spacing. Robustness (:func:`degrade`): the protocol on a degraded copy of G.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Generator

import numpy as np

from . import grid
from .engine import reconstruct_events, validate_volume, volume_value_range
from .methods.base import dtype_value_range
from .progress import Progress, drive


def unit_scale(volume: np.ndarray) -> tuple[float, float]:
    """(offset, span) mapping ``volume``'s intensities to [0, 1] as the protocol says: the
    engine's one value range (dtype range; floats min-max, NaN/inf refused)."""
    lo, hi = volume_value_range(volume)
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


def high_frequency_energy(image: np.ndarray, cutoff: float = 0.5) -> float:
    """Mean energy ``|F|^2`` of the unitary 2D FFT of ``image`` over the frequencies with
    radius ``> cutoff`` x Nyquist (the texture a smooth prediction lacks)."""
    spec = np.fft.fft2(np.asarray(image, np.float64), norm="ortho")
    fy = np.fft.fftfreq(image.shape[0])[:, None]
    fx = np.fft.fftfreq(image.shape[1])[None, :]
    high = np.sqrt(fy ** 2 + fx ** 2) > cutoff * 0.5
    return float(np.mean(np.abs(spec[high]) ** 2))


def slice_metrics(restored: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Metrics of one restored slice; both already scaled to [0, 1]."""
    # imported here, in whichever thread scores (0.3-0.5 s the first time: the Evaluate dock
    # imports this module on napari's GUI thread and preloads scikit-image in the background)
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

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
    #: mean high-frequency energy of the restored slices / that of the knots of R (1 = as
    #: textured as real sections; < 1 = smoother, seen as banding in xz/yz views)
    texture: float = float("nan")
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
    The same run as progress events: :func:`evaluate_events`.
    """
    events = evaluate_events(ground_truth, factor, method, method_params=method_params,
                             keep_output=keep_output, error_maps=error_maps, cancel=cancel,
                             **engine_kwargs)
    return drive(events, None if on_slice is None else lambda ev: on_slice(*ev.payload))


def evaluate_events(
    ground_truth: np.ndarray,
    factor: int,
    method: str = "linear",
    *,
    method_params: dict | None = None,
    keep_output: bool = False,
    error_maps: bool = False,
    cancel=None,
    **engine_kwargs,
) -> Generator[Progress, None, tuple[MethodScore, np.ndarray | None, np.ndarray | None]]:
    """:func:`evaluate_method` as a progress generator: yields the reconstruction's events
    (:func:`napari_zup.engine.reconstruct_events`: one per output slice, payload
    ``(index, slice)``) and returns ``(score, reconstruction or None, error maps or None)``.
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
    events = reconstruct_events(a, method, f, method_params=method_params, cancel=cancel,
                                value_range=vr, **engine_kwargs)
    try:
        for event in events:
            i, sl = event.payload[:2]
            recon[i] = sl
            yield event
    finally:
        events.close()
    compute_s = time.perf_counter() - t0
    maps = np.zeros((n_out,) + g.shape[1:], np.float32) if error_maps else None
    per_slice: dict[str, list[float]] = {"index": [], "psnr": [], "ssim": [], "fpsnr": [],
                                         "ie": [], "hf": []}
    for i in grid.restored_output_indices(len(a), f):
        r = (recon[i].astype(np.float64) - lo) / span
        t = (g[i].astype(np.float64) - lo) / span
        m = slice_metrics(r, t)
        m["hf"] = high_frequency_energy(r)
        per_slice["index"].append(int(i))
        for k, v in m.items():
            per_slice[k].append(v)
        if maps is not None:
            maps[i] = np.abs(r - t)
    knot_hf = [high_frequency_energy((recon[k * f].astype(np.float64) - lo) / span)
               for k in range(len(a))]
    texture = float(np.mean(per_slice["hf"]) / np.mean(knot_hf)) if np.mean(knot_hf) > 0 \
        else float("nan")
    out = recon if keep_output else None
    n = len(per_slice["index"])
    score = MethodScore(
        psnr=float(np.mean(per_slice["psnr"])),
        ssim=float(np.mean(per_slice["ssim"])),
        fpsnr=float(np.mean(per_slice["fpsnr"])),
        ie=float(np.mean(per_slice["ie"])),
        seconds_per_slice=compute_s / max(n, 1),
        n_slices=n,
        texture=texture,
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


#: The label every self-evaluation score carries (tables, JSON, widgets).
SELF_EVAL_LABEL = "self-evaluation at twice the real spacing (2 x s)"
#: Fewest sections a self-evaluation accepts (B = A[::2] keeps 3 knots, 2 restored sections).
SELF_EVAL_MIN_SECTIONS = 5


def self_evaluate(
    stack,
    method: str = "linear",
    *,
    method_params: dict | None = None,
    cancel=None,
    on_slice=None,
    **engine_kwargs,
) -> tuple[MethodScore, np.ndarray | None, np.ndarray | None]:
    """Self-evaluation on a real anisotropic stack A (docs/evaluation.md): keep every second
    section (``B = A[::2]``), reconstruct B at factor 2 and score the restored sections
    against the real ones ``A[1::2]``. Same return value as :func:`evaluate_method`.

    The scores are at twice the real spacing (2 x s): they rank methods on this kind of
    data; they are not the quality at the real spacing (label them with
    :data:`SELF_EVAL_LABEL`). As progress events: :func:`self_evaluate_events`.
    """
    events = self_evaluate_events(stack, method, method_params=method_params, cancel=cancel,
                                  **engine_kwargs)
    return drive(events, None if on_slice is None else lambda ev: on_slice(*ev.payload))


def self_evaluate_events(stack, method: str = "linear", *, method_params: dict | None = None,
                         cancel=None, **engine_kwargs):
    """:func:`self_evaluate` as a progress generator (events as :func:`evaluate_events`)."""
    n = int(np.shape(stack)[0]) if np.ndim(stack) >= 1 else 0
    if np.ndim(stack) == 3 and n < SELF_EVAL_MIN_SECTIONS:
        raise ValueError(
            f"self-evaluation needs at least {SELF_EVAL_MIN_SECTIONS} sections (it keeps every "
            f"second one and restores the others); this stack has {n}. Use a longer stack")
    return (yield from evaluate_events(stack, 2, method, method_params=method_params,
                                       cancel=cancel, **engine_kwargs))


# -- robustness: degraded copies of G (docs/evaluation.md, "Robustness") ------------------------

#: Degradations :func:`degrade` knows, with what the value means.
DEGRADATIONS = {
    "noise": "additive Gaussian noise, sigma in grey levels of the dtype",
    "poisson": "Poisson-like noise: counts at full scale (smaller = noisier)",
    "gamma": "gamma on [0, 1]-scaled intensities (x -> x ** gamma)",
    "contrast": "contrast factor about the stack's mean (0.6 = 60 % of the contrast)",
    "brightness": "offset in grey levels",
    "thick": "thick sections: each slice the mean of this many z-neighbours (centred)",
}


def parse_degradation(spec: str | None) -> list[tuple[str, float]]:
    """``"gamma=0.7,contrast=0.6"`` -> ``[("gamma", 0.7), ("contrast", 0.6)]`` (in order)."""
    steps: list[tuple[str, float]] = []
    for item in (spec or "").split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, value = item.partition("=")
        name = name.strip().lower()
        if not sep or name not in DEGRADATIONS:
            raise ValueError(f"degradation {item!r} not understood; use NAME=VALUE with NAME one "
                             f"of {', '.join(DEGRADATIONS)} (e.g. noise=8 or "
                             "gamma=0.7,contrast=0.6)")
        try:
            v = float(value)
        except ValueError:
            raise ValueError(f"degradation {item!r}: {value!r} is not a number") from None
        if not np.isfinite(v) or (name in ("poisson", "gamma", "thick") and v <= 0) \
                or (name in ("noise", "contrast") and v < 0):
            raise ValueError(f"degradation {item!r}: value out of range ({DEGRADATIONS[name]})")
        steps.append((name, v))
    return steps


def degrade(volume, spec: str | None, seed: int = 0) -> np.ndarray:
    """A degraded copy of ``volume`` (never changed), steps applied in ``spec`` order; same
    dtype (integers rounded and clipped to their range). Deterministic for a given ``seed``.
    ``spec``: see :data:`DEGRADATIONS`, e.g. ``"noise=8"`` or ``"gamma=0.7,contrast=0.6"``."""
    from scipy.ndimage import uniform_filter1d

    steps = parse_degradation(spec)
    src = np.asarray(volume)
    if not steps:
        return src.copy()
    rng = np.random.default_rng(seed)
    lo, span = unit_scale(src)
    x = src.astype(np.float64)
    for name, v in steps:
        if name == "noise":
            x = x + rng.normal(0.0, v, x.shape)
        elif name == "brightness":
            x = x + v
        elif name == "contrast":
            m = float(np.mean(x))
            x = m + v * (x - m)
        elif name == "gamma":
            x = lo + span * np.clip((x - lo) / span, 0.0, 1.0) ** v
        elif name == "poisson":
            u = np.clip((x - lo) / span, 0.0, None)
            x = lo + span * rng.poisson(u * v) / v
        elif name == "thick":
            x = uniform_filter1d(x, size=max(1, int(round(v))), axis=0, mode="nearest")
    if src.dtype.kind in "ui":
        info = np.iinfo(src.dtype)
        return np.clip(np.rint(x), info.min, info.max).astype(src.dtype)
    return x.astype(src.dtype)


def format_table(scores: dict[str, MethodScore], factor, title: str | None = None) -> str:
    """Plain-text table of scores (the CLI prints it). ``title`` replaces the first line
    (e.g. the self-evaluation label or the degradation)."""
    lines = [title or f"factor {factor}: mean over restored slices",
             f"{'method':<12} {'PSNR dB':>8} {'SSIM':>7} {'F-PSNR':>8} {'IE':>6} "
             f"{'texture':>7} {'s/slice':>8}"]
    for m, s in scores.items():
        lines.append(f"{m:<12} {s.psnr:8.2f} {s.ssim:7.4f} {s.fpsnr:8.2f} {s.ie:6.2f} "
                     f"{s.texture:7.3f} {s.seconds_per_slice:8.4f}")
    return "\n".join(lines)
