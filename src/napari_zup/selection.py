"""``--method auto``: pick the method for a stack by self-evaluating every candidate on a small
sample of it (docs/evaluation.md, "Self-evaluation").

The sample is a run of at most :data:`MAX_SECTIONS` sections from the middle of the stack and
one to :data:`MAX_CROPS` crops of :data:`CROP` x :data:`CROP` pixels. The whole choice is
kept within ``budget`` (:data:`BUDGET`, 20 %) of the estimated reconstruction with the method
winning so far (at least :data:`MIN_BUDGET_S`). On the first crop the classical/optical-flow
candidates are always scored (they are the guard, and cheap); a learned candidate is scored
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
from dataclasses import dataclass, field

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
#: The budget is never below this many seconds (small stacks, where 20 % of a reconstruction
#: is less than a second).
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
    budget = BUDGET if budget is None else float(budget)
    if not budget >= 0:
        raise ValueError(f"the auto budget must be a fraction >= 0, got {budget}")
    shape = tuple(int(s) for s in np.shape(volume))
    if len(shape) != 3:
        raise ValueError(f"auto needs a 3D stack (z, y, x), got shape {shape}")
    z, h, w = shape
    if z < SELF_EVAL_MIN_SECTIONS:
        raise ValueError(
            f"auto chooses by self-evaluation, which needs at least {SELF_EVAL_MIN_SECTIONS} "
            f"sections; this stack has {z}. Pick a method instead (see `zup methods`)")
    f = grid.parse_factor(factor)
    method_params = method_params or {}
    names = list(candidates) if candidates is not None else [i.name for i in method_infos()]
    zs = sample_sections(z)
    n_sec = zs.stop - zs.start
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
    corners, (ch, cw) = sample_crops(h, w)
    # At F = 2 the sample restores one slice per interval; a pair method's cost is mostly per
    # interval (flows, features), so the run is estimated per interval, never above its number
    # of restored slices: an underestimate, which keeps the sample within the budget.
    n_restored_full = min(len(grid.restored_output_indices(z, f)), z - 1)
    area_ratio = (h * w) / (ch * cw)
    parts: dict[str, list[MethodScore]] = {m: [] for m in runnable}

    def est(score: MethodScore) -> float:
        """Time per restored crop slice (= per interval) -> the whole run."""
        return score.seconds_per_slice * area_ratio * n_restored_full

    def parts_scored(ps) -> bool:
        return any(ps.values())

    methods = {}
    total, done = len(runnable) * len(corners), 0
    n_crops, estimate = 0, float("nan")
    try:
        for y, x in corners:
            if n_crops:  # add a crop only while the budget still allows one more
                spent = time.perf_counter() - t_start
                if spent / n_crops * (n_crops + 1) > max(MIN_BUDGET_S, budget * estimate):
                    break
            crop = np.asarray(volume[zs, y:y + ch, x:x + cw])
            for m in list(runnable):
                if cancel is not None and cancel.is_set():
                    raise ReconstructionCancelled("auto choice cancelled")
                why = None
                if not n_crops and is_learned(m):  # what makes it unfit first, then the time
                    why = _skip_reason(m, f, n_sec, method_params.get(m) or {})
                if not n_crops and is_learned(m) and parts_scored(parts) and not why:
                    # predicted before it starts: a candidate that cannot fit the budget
                    # (a share of the reconstruction with the method winning so far) is
                    # skipped, not started
                    spent = time.perf_counter() - t_start
                    merged = {k: p[0] for k, p in parts.items() if p}
                    allowed = max(MIN_BUDGET_S, budget * est(merged[rank(merged)[0]]))
                    need = predicted_cost(m, (ch, cw), n_sec // 2, _speed(parts, (ch, cw)))
                    if spent + need > allowed:
                        why = (f"over the time budget: scoring it would take about {need:.0f} s, "
                               f"{spent:.1f} s of {allowed:.1f} s already spent (budget "
                               f"{budget:.0%} of the estimated reconstruction with "
                               f"{rank(merged)[0]}; --auto-budget to raise it)")
                if not n_crops and is_learned(m):
                    if why:
                        skipped[m] = why
                        runnable.remove(m)
                        parts.pop(m, None)
                        done += 1
                        continue
                try:
                    if m not in methods:
                        methods[m] = create_method(m, **(method_params.get(m) or {}))
                    score = self_evaluate(crop, methods[m], cancel=cancel)[0]
                except (ValueError, RuntimeError, OSError, MemoryError) as exc:
                    skipped[m] = f"failed on the sample: {exc}"
                    runnable.remove(m)
                    parts.pop(m, None)
                    continue
                finally:
                    done += 1
                    if on_progress is not None:
                        on_progress(Progress(done, total, f"auto: {m}, crop {n_crops + 1}"))
                parts[m].append(score)
            n_crops += 1
            if not parts:
                break
            merged = {m: _merge(p) for m, p in parts.items()}
            winner, _ = rank(merged)
            estimate = est(merged[winner])
    finally:
        for obj in methods.values():
            obj.close()
    if on_progress is not None and done < total:  # fewer crops than the upper bound
        on_progress(Progress(total, total, f"auto: {n_crops} crop(s) scored"))
    if not parts:
        raise ValueError("auto: no candidate method could run on this stack: " + "; ".join(
            f"{m}: {r}" for m, r in skipped.items()))
    scores = {m: _merge(p) for m, p in parts.items()}
    method, reason = rank(scores)
    seconds = time.perf_counter() - t_start
    sample = (f"sections {zs.start}-{zs.stop - 1} of {z}, {n_crops} crop(s) of {ch} x {cw} "
              f"of {h} x {w}; {seconds:.1f} s")
    if estimate > 0:
        sample += (f", about {seconds / estimate:.0%} of the estimated {estimate:.0f} s "
                   f"reconstruction with {method}")
    lines = [format_table(scores, 2, f"auto: {SELF_EVAL_LABEL}, {sample}")]
    lines += [f"{m:<12} skipped: {r}" for m, r in skipped.items()]
    return Choice(method=method, reason=reason + " (scores at twice the real spacing)",
                  scores=scores, table="\n".join(lines), sample=sample, skipped=skipped,
                  seconds=seconds)
