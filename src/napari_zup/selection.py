"""``--method auto``: pick the method for a stack by self-evaluating every candidate on a small
sample of it (docs/evaluation.md, "Self-evaluation").

The sample is a run of at most :data:`MAX_SECTIONS` sections from the middle of the stack and
one to :data:`MAX_CROPS` crops of :data:`CROP` x :data:`CROP` pixels. The whole choice is
kept within ``budget`` (:data:`BUDGET`, 20 %) of the estimated reconstruction with the method
winning so far (for learned candidates at least :data:`MIN_BUDGET_S`). On the first crop
the classical/optical-flow candidates are always scored (they are the guard, and cheap); a learned candidate is scored
only when its predicted cost fits what is left of the budget, predicted before it starts
from its ``MethodInfo.sample_cost`` (seconds per megapixel, scaled by how fast the
optical-flow candidates ran here) plus the torch import when torch is not loaded yet;
otherwise it is skipped, saying so (``zup reconstruct --auto-budget`` raises the budget).
Further crops are added while the time stays within the budget.

Ranking: highest PSNR, SSIM breaking ties (PSNR within :data:`TIE_DB`). A learned method
(one that needs a checkpoint) is chosen only when it beats the best classical/optical-flow
method in PSNR *and* SSIM; otherwise that classical/optical-flow method is chosen, and the
reason says why. Qt-free: the CLI and the Reconstruct widget both call :func:`choose_method`.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from . import grid
from .checkpoints import factor_warning
from .engine import ReconstructionCancelled
from .evaluation import (SELF_EVAL_LABEL, SELF_EVAL_MIN_SECTIONS, MethodScore, format_table,
                         self_evaluate)
from .methods.base import create_method, get_info, method_infos
from .progress import Progress

#: y/x edge of a sample crop, most crops, most sections of the sample.
CROP = 256
MAX_CROPS = 4
MAX_SECTIONS = 9
#: Most time the choice may take, as a fraction of the estimated reconstruction time.
BUDGET = 0.2
#: The budget for scoring learned candidates is never below this many seconds (small stacks,
#: where 20 % of a reconstruction is less than a second); further crops get no such floor.
MIN_BUDGET_S = 2.0
#: Seconds to import torch and load a checkpoint on 2 CPU cores (the first learned candidate).
TORCH_IMPORT_S = 3.0
#: PSNR differences below this (dB) are ties, broken by SSIM.
TIE_DB = 0.1


@dataclass
class Choice:
    """What :func:`choose_method` picked and why."""

    method: str
    reason: str
    scores: dict[str, MethodScore]
    table: str
    #: where the sample came from: sections, crops, time spent and the budget estimate
    sample: str
    #: candidates that were not scored, with the reason
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def is_learned(name: str) -> bool:
    """A learned method: it needs a checkpoint (from the method's MethodInfo)."""
    return bool(get_info(name).needs_checkpoint)


def sample_sections(n: int, most: int = MAX_SECTIONS) -> slice:
    """A run of at most ``most`` sections (odd count, so B = S[::2] keeps both ends) from the
    middle of a stack of ``n`` sections."""
    k = min(n, most)
    if k % 2 == 0:
        k -= 1
    start = (n - k) // 2
    return slice(start, start + k)


def sample_crops(h: int, w: int, size: int = CROP, most: int = MAX_CROPS):
    """Top-left corners of up to ``most`` distinct ``size`` crops: the centre first, then the
    centres of the quadrants (one crop = the whole slice when it is not larger than ``size``)."""
    ch, cw = min(h, size), min(w, size)
    centres = [(h / 2, w / 2), (h / 4, w / 4), (3 * h / 4, 3 * w / 4), (h / 4, 3 * w / 4),
               (3 * h / 4, w / 4)]
    out: list[tuple[int, int]] = []
    for cy, cx in centres:
        y = int(min(max(round(cy - ch / 2), 0), h - ch))
        x = int(min(max(round(cx - cw / 2), 0), w - cw))
        if (y, x) not in out:
            out.append((y, x))
        if len(out) == most:
            break
    return out, (ch, cw)


def _merge(parts: list[MethodScore]) -> MethodScore:
    """Scores of several crops as one: slice-weighted means, concatenated per-slice lists."""
    n = np.array([p.n_slices for p in parts], float)
    w = n / n.sum()

    def mean(attr):
        return float(sum(wi * getattr(p, attr) for wi, p in zip(w, parts)))

    per_slice: dict[str, list[float]] = {}
    for p in parts:
        for k, v in p.per_slice.items():
            per_slice.setdefault(k, []).extend(v)
    return MethodScore(psnr=mean("psnr"), ssim=mean("ssim"), fpsnr=mean("fpsnr"),
                       ie=mean("ie"), seconds_per_slice=mean("seconds_per_slice"),
                       n_slices=int(n.sum()), texture=mean("texture"), per_slice=per_slice)


def _best(names: list[str], scores: dict[str, MethodScore]) -> str | None:
    """Highest PSNR; among those within TIE_DB of it, highest SSIM."""
    if not names:
        return None
    top = max(scores[m].psnr for m in names)
    tied = [m for m in names if scores[m].psnr >= top - TIE_DB]
    return max(tied, key=lambda m: (scores[m].ssim, scores[m].psnr))


def _fmt(m: str, s: MethodScore) -> str:
    return f"{m} {s.psnr:.2f} dB / SSIM {s.ssim:.3f}"


def rank(scores: dict[str, MethodScore]) -> tuple[str, str]:
    """(method, reason) from self-evaluation ``scores`` by the rule of this module."""
    learned = [m for m in scores if is_learned(m)]
    classic = [m for m in scores if m not in learned]
    c = _best(classic, scores)
    if c is None:
        m = _best(learned, scores)
        return m, (f"{m}: best self-evaluation score ({_fmt(m, scores[m])}); no classical or "
                   "optical-flow method was among the candidates")
    cs = scores[c]
    beat = [m for m in learned if scores[m].psnr > cs.psnr and scores[m].ssim > cs.ssim]
    if beat:
        m = _best(beat, scores)
        return m, (f"{m}: {_fmt(m, scores[m])}, above the best classical/optical-flow method "
                   f"({_fmt(c, cs)}) in both PSNR and SSIM")
    reason = f"{c}: best classical/optical-flow method ({_fmt(c, cs)})"
    higher = [m for m in learned if scores[m].psnr > cs.psnr or scores[m].ssim > cs.ssim]
    if higher:
        m = _best(higher, scores)
        s = scores[m]
        which = "PSNR but not SSIM" if s.psnr > cs.psnr else "SSIM but not PSNR"
        reason += (f"; {m} scored higher in {which} ({_fmt(m, s)}), and a learned method is "
                   f"chosen only when it beats {c} in both")
    elif learned:
        m = _best(learned, scores)
        reason += f"; no learned method scored above it (best: {_fmt(m, scores[m])})"
    return c, reason


def _skip_reason(name: str, factor, n_sections: int, params: dict) -> str | None:
    info = get_info(name)
    f = grid.parse_factor(factor)
    if f.denominator != 1 and not info.fractional:
        return f"supports only integer factors, not x{float(f):g}"
    if info.min_slices > n_sections // 2 + 1:
        return f"needs at least {info.min_slices} sections, the sample keeps {n_sections // 2 + 1}"
    note = factor_warning(name, f, params.get("checkpoint"))
    if note:
        return f"outside its checkpoint's factor range ({note.split(';')[0]})"
    return None


def predicted_cost(name: str, crop_shape, n_restored: int, speed: float) -> float:
    """Seconds that scoring ``name`` on the sample will take: its measured ``sample_cost``
    per megapixel of restored slice times ``speed`` (this machine's slowness relative to the
    measurement, 1 = as measured), plus the torch import if a learned method needs it first."""
    import sys

    info = get_info(name)
    mpx = crop_shape[0] * crop_shape[1] / 1e6
    cost = info.sample_cost * mpx * n_restored
    if info.needs_checkpoint and "torch" not in sys.modules:
        cost += TORCH_IMPORT_S
    return cost * speed


def _speed(parts: dict, crop_shape) -> float:
    """How much slower than its ``sample_cost`` the costliest scored classical/OF candidate
    ran here (load, CPU): scales the predictions of the others. 1 when nothing tells."""
    mpx = crop_shape[0] * crop_shape[1] / 1e6
    ratios = [p[0].seconds_per_slice / (get_info(m).sample_cost * mpx)
              for m, p in parts.items() if p and get_info(m).sample_cost > 0
              and not is_learned(m)]
    return max(1.0, max(ratios)) if ratios else 1.0


def _checked(volume, budget) -> tuple[float, tuple[int, ...]]:
    """The budget as a float and the stack's (z, y, x) shape; ValueError naming what is wrong."""
    budget = BUDGET if budget is None else float(budget)
    if not budget >= 0:
        raise ValueError(f"the auto budget must be a fraction >= 0, got {budget}")
    shape = tuple(int(s) for s in np.shape(volume))
    if len(shape) != 3:
        raise ValueError(f"auto needs a 3D stack (z, y, x), got shape {shape}")
    if shape[0] < SELF_EVAL_MIN_SECTIONS:
        raise ValueError(
            f"auto chooses by self-evaluation, which needs at least {SELF_EVAL_MIN_SECTIONS} "
            f"sections; this stack has {shape[0]}. Pick a method instead (see `zup methods`)")
    return budget, shape


def _runnable(names, f, n_sec: int, method_params: dict) -> tuple[list[str], dict[str, str]]:
    """Candidates to score, in scoring order, and those already skipped (name -> reason)."""
    skipped: dict[str, str] = {}
    runnable = []
    for m in names:  # learned ones are checked when their turn comes (reading a checkpoint
        # imports torch: seconds that a candidate skipped for time should not cost)
        why = None if is_learned(m) else _skip_reason(m, f, n_sec, method_params.get(m) or {})
        if why:
            skipped[m] = why
        else:
            runnable.append(m)
    # cheap and needed as the guard first (classical/optical flow), then learned pair
    # interpolators, then learned axial restorers (whose sample costs most)
    runnable.sort(key=lambda m: (is_learned(m), get_info(m).sample_cost))
    return runnable, skipped


@dataclass
class _Sampling:
    """One choice in progress: what it samples and with what limits, what it has scored
    (``parts``: one score per crop) and skipped so far."""

    factor: Fraction
    n_sec: int
    crop_shape: tuple[int, int]
    budget: float
    method_params: dict
    #: (h * w) / (crop h * crop w) and the restored slices of the whole run (see :meth:`est`)
    area_ratio: float
    n_restored_full: int
    t_start: float
    total: int
    cancel: object  # a threading.Event or None
    on_progress: Callable | None
    runnable: list[str]
    skipped: dict[str, str]
    parts: dict[str, list[MethodScore]]
    methods: dict = field(default_factory=dict)
    done: int = 0
    n_crops: int = 0

    def est(self, score: MethodScore) -> float:
        """Time per restored crop slice (= per interval) -> the whole run."""
        return score.seconds_per_slice * self.area_ratio * self.n_restored_full


def _learned_skip_reason(s: _Sampling, m: str) -> str | None:
    """Why learned candidate ``m`` is not scored (on the first crop): what makes it unfit
    first, then the time; None when it is scored."""
    why = _skip_reason(m, s.factor, s.n_sec, s.method_params.get(m) or {})
    if why or not any(s.parts.values()):
        return why
    # predicted before it starts: a candidate that cannot fit the budget (a share of the
    # reconstruction with the method winning so far) is skipped, not started
    spent = time.perf_counter() - s.t_start
    merged = {k: p[0] for k, p in s.parts.items() if p}
    winner = rank(merged)[0]
    allowed = max(MIN_BUDGET_S, s.budget * s.est(merged[winner]))
    need = predicted_cost(m, s.crop_shape, s.n_sec // 2, _speed(s.parts, s.crop_shape))
    if spent + need > allowed:
        return (f"over the time budget: scoring it would take about {need:.0f} s, "
                f"{spent:.1f} s of {allowed:.1f} s already spent (budget "
                f"{s.budget:.0%} of the estimated reconstruction with "
                f"{winner}; --auto-budget to raise it)")
    return None


def _score_crop(s: _Sampling, crop) -> None:
    """Score every runnable candidate on one crop into ``s.parts``. A candidate that fails is
    dropped, and so, on the first crop, is a learned one that is unfit or over the budget
    (both into ``s.skipped``)."""
    for m in list(s.runnable):
        if s.cancel is not None and s.cancel.is_set():
            raise ReconstructionCancelled("auto choice cancelled")
        if not s.n_crops and is_learned(m):
            why = _learned_skip_reason(s, m)
            if why:
                s.skipped[m] = why
                s.runnable.remove(m)
                s.parts.pop(m, None)
                s.done += 1
                continue
        try:
            if m not in s.methods:
                s.methods[m] = create_method(m, **(s.method_params.get(m) or {}))
            score = self_evaluate(crop, s.methods[m], cancel=s.cancel)[0]
        except (ValueError, RuntimeError, OSError, MemoryError) as exc:
            s.skipped[m] = f"failed on the sample: {exc}"
            s.runnable.remove(m)
            s.parts.pop(m, None)
            continue
        finally:
            s.done += 1
            if s.on_progress is not None:
                s.on_progress(Progress(s.done, s.total, f"auto: {m}, crop {s.n_crops + 1}"))
        s.parts[m].append(score)


def _choice(s: _Sampling, zs: slice, shape, estimate: float) -> Choice:
    """The :class:`Choice` from the scores of every crop, with its table and sample line."""
    z, h, w = shape
    ch, cw = s.crop_shape
    scores = {m: _merge(p) for m, p in s.parts.items()}
    method, reason = rank(scores)
    seconds = time.perf_counter() - s.t_start
    sample = (f"sections {zs.start}-{zs.stop - 1} of {z}, {s.n_crops} crop(s) of {ch} x {cw} "
              f"of {h} x {w}; {seconds:.1f} s")
    if estimate > 0:
        sample += (f", about {seconds / estimate:.0%} of the estimated {estimate:.0f} s "
                   f"reconstruction with {method}")
    lines = [format_table(scores, 2, f"auto: {SELF_EVAL_LABEL}, {sample}")]
    lines += [f"{m:<12} skipped: {r}" for m, r in s.skipped.items()]
    return Choice(method=method, reason=reason + " (scores at twice the real spacing)",
                  scores=scores, table="\n".join(lines), sample=sample, skipped=s.skipped,
                  seconds=seconds)


def choose_method(volume, factor, *, candidates=None, method_params=None, cancel=None,
                  on_progress=None, budget: float | None = None) -> Choice:
    """Self-evaluate ``candidates`` (default: every registered method) on a bounded sample of
    ``volume`` (z, y, x; numpy or dask) and pick one for reconstructing it at ``factor``.

    ``method_params``: method name -> parameters (as for :func:`evaluation.evaluate`).
    ``cancel``: a threading.Event (raises engine.ReconstructionCancelled when set).
    ``on_progress(event)`` with a :class:`napari_zup.progress.Progress` event after each
    candidate on each crop (``total`` is an upper bound: fewer crops may be scored, the last
    event has ``done == total``; :func:`napari_zup.progress.events_from_callback` turns the
    calls into a generator).
    ``budget``: most time for the choice as a fraction of the estimated reconstruction
    (default :data:`BUDGET`; ``math.inf`` scores every candidate on the first crop).
    Raises ValueError when the stack has fewer than 5 sections or no candidate can run.
    """
    t_start = time.perf_counter()
    budget, shape = _checked(volume, budget)
    z, h, w = shape
    f = grid.parse_factor(factor)
    method_params = method_params or {}
    names = list(candidates) if candidates is not None else [i.name for i in method_infos()]
    zs = sample_sections(z)
    n_sec = zs.stop - zs.start
    runnable, skipped = _runnable(names, f, n_sec, method_params)
    corners, (ch, cw) = sample_crops(h, w)
    # At F = 2 the sample restores one slice per interval; a pair method's cost is mostly per
    # interval (flows, features), so the run is estimated per interval, never above its number
    # of restored slices: an underestimate, which keeps the sample within the budget.
    n_restored_full = min(len(grid.restored_output_indices(z, f)), z - 1)
    s = _Sampling(factor=f, n_sec=n_sec, crop_shape=(ch, cw), budget=budget,
                  method_params=method_params, area_ratio=(h * w) / (ch * cw),
                  n_restored_full=n_restored_full, t_start=t_start,
                  total=len(runnable) * len(corners), cancel=cancel, on_progress=on_progress,
                  runnable=runnable, skipped=skipped, parts={m: [] for m in runnable})
    estimate = float("nan")
    try:
        for y, x in corners:
            if s.n_crops:  # add a crop only while the budget still allows one more
                spent = time.perf_counter() - t_start
                # strictly within the budget (no floor: more crops only while they fit)
                if spent / s.n_crops * (s.n_crops + 1) > budget * estimate:
                    break
            _score_crop(s, np.asarray(volume[zs, y:y + ch, x:x + cw]))
            s.n_crops += 1
            if not s.parts:
                break
            merged = {m: _merge(p) for m, p in s.parts.items()}
            estimate = s.est(merged[rank(merged)[0]])
    finally:
        for obj in s.methods.values():
            obj.close()
    if on_progress is not None and s.done < s.total:  # fewer crops than the upper bound
        on_progress(Progress(s.total, s.total, f"auto: {s.n_crops} crop(s) scored"))
    if not s.parts:
        raise ValueError("auto: no candidate method could run on this stack: " + "; ".join(
            f"{m}: {r}" for m, r in skipped.items()))
    return _choice(s, zs, shape, estimate)
