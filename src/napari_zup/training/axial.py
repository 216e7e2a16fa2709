"""Self-supervised training of the axial restorers (niiv, a2i) on the user's own stack.

The xy slices of an anisotropic stack are full resolution; degraded along y or x by the
stack's factor (keep every F-th row = thin sections, or average F rows = thick sections)
they look like its xz/yz planes. The model learns to undo that degradation and is then
applied to the real axial planes. Nothing but the stack itself is needed.

    zup train niiv --data stack.tif --factor 4 --minutes 10 --out my.safetensors

Python (a napari widget uses the same function)::

    stop = threading.Event()
    result = train("niiv", volume, 4, minutes=10, out="my.safetensors",
                   callback=lambda step, loss, preview: ..., stop_event=stop)

The file at ``out`` always holds the best model so far (lowest loss on a fixed validation
set of patches), written atomically: stopping at any time keeps it; ``resume=PATH``
continues from a checkpoint (its step counter and best loss carry on).
"""
from __future__ import annotations

import argparse
import math
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..methods._axial_common import DEGRADATIONS, PairSampler

METHODS = ("niiv", "a2i")


@dataclass
class TrainResult:
    path: Path
    steps: int
    best_loss: float
    #: validation L1 of plain linear interpolation on the same patches (for scale)
    baseline_loss: float
    minutes: float
    stopped: bool


def _method_class(method: str):
    if method == "niiv":
        from ..methods.niiv import DEFAULT_ARCH, Niiv
        return Niiv, DEFAULT_ARCH
    if method == "a2i":
        from ..methods.a2i import DEFAULT_ARCH, A2I
        return A2I, DEFAULT_ARCH
    raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")


def projected_distribution_loss(pred, target):
    """Projected distribution loss (Delbracio et al. 2020, a2i eq. 5): 1D Wasserstein-1
    distance between the sorted values of each image and of its x/y gradients. (The
    original projects VGG features; no pretrained network is shipped here.)"""
    import torch

    def proj(x):
        return [x, x[..., 1:, :] - x[..., :-1, :], x[..., :, 1:] - x[..., :, :-1]]

    loss = 0.0
    for p, t in zip(proj(pred), proj(target)):
        ps = torch.sort(p.flatten(1), dim=1).values
        ts = torch.sort(t.flatten(1), dim=1).values
        loss = loss + (ps - ts).abs().mean()
    return loss


def _scale(volume) -> np.ndarray:
    from ..methods.base import dtype_value_range

    v = np.asarray(volume)
    if v.ndim != 3:
        raise ValueError(f"training needs a 3D stack (z, y, x), got shape {v.shape}")
    rng = dtype_value_range(v.dtype)
    if rng is None:
        if not np.isfinite(v).all():
            raise ValueError("the stack has NaN/inf voxels; replace them first")
        rng = (float(v.min()), float(v.max()))
    lo, hi = rng
    return ((v.astype(np.float32) - lo) / ((hi - lo) or 1.0)).astype(np.float32)


def preview_plane(model, volume01: np.ndarray, factor: float, width: int = 160, device="cpu"):
    """The middle xz plane of the stack (first ``width`` columns) restored at ``factor``:
    what the widget shows while training. Returns (P, width) float in [0, 1]."""
    import torch

    from ..methods._axial_common import query_grid

    z, h, w = volume01.shape
    plane = volume01[:, h // 2, : min(width, w)]
    n_out = int(math.floor((z - 1) * factor)) + 1
    pos = np.arange(n_out) / factor
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        x = torch.from_numpy(np.ascontiguousarray(plane)[None, None]).to(device)
        out = model(x, torch.as_tensor(pos, dtype=torch.float32, device=device), 1.0 / factor)
    model.train(was_training)
    return np.clip(out[0, 0].float().cpu().numpy(), 0, 1)


def train(
    method: str,
    volume,
    factor: int | Sequence[int],
    *,
    out="model.safetensors",
    minutes: float = 10.0,
    max_steps: int | None = None,
    degradation: str = "decimate",
    noise_std: float = 0.0,
    poisson_peak: float = 0.0,
    batch: int | None = None,
    rows: int | None = None,
    width: int | None = None,
    learning_rate: float | None = None,
    arch: dict | None = None,
    resume=None,
    callback: Callable[[int, float, np.ndarray | None], None] | None = None,
    stop_event: threading.Event | None = None,
    eval_every: int = 50,
    seed: int = 0,
    device: str = "auto",
    data_name: str = "",
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train ``method`` ("niiv" or "a2i") self-supervised on ``volume`` (z, y, x).

    ``factor``: the stack's z/xy anisotropy (int), or a list of ints to draw from (a model
    for several factors). ``callback(step, loss, preview)`` is called every 10 steps with
    the running training loss; ``preview`` (the restored middle xz plane, see
    :func:`preview_plane`) is given at each validation (every ``eval_every`` steps), else
    None. Set ``stop_event`` to stop; the best checkpoint stays at ``out``.
    """
    import torch

    from ..checkpoints import load_checkpoint, save_checkpoint
    from ..devices import select_device

    cls, default_arch = _method_class(method)
    # patch shapes of the shipped checkpoints (a2i's U-Net wants short, wide patches)
    d_batch, d_rows, d_width = (16, 12, 48) if method == "niiv" else (8, 8, 64)
    batch, rows, width = batch or d_batch, rows or d_rows, width or d_width
    factors = [int(f) for f in (factor if isinstance(factor, (list, tuple)) else [factor])]
    if any(f < 2 for f in factors):
        raise ValueError(f"training factors must be integers >= 2, got {factors}")
    if degradation not in DEGRADATIONS:
        raise ValueError(f"degradation must be one of {', '.join(DEGRADATIONS)}, got {degradation!r}")
    log = log or (lambda s: None)
    dev = select_device(device)
    vol = _scale(volume)
    sampler = PairSampler(vol, factors, rows, width, degradation, noise_std, poisson_peak, seed)
    val_sampler = PairSampler(vol, factors, rows, width, degradation, noise_std, poisson_peak,
                              seed + 12345)
    val = [val_sampler.sample(batch, f) for f in factors for _ in range(max(1, 4 // len(factors)))]

    start_step, prev = 0, {}
    a = dict(default_arch)
    if resume is not None:
        state, meta = load_checkpoint(resume, method=method)
        a.update(meta.get("arch", {}))
        prev = meta.get("training", {})
        start_step = int(prev.get("steps", 0))
    elif arch:
        a.update(arch)
    model = cls.build_model(a).to(dev)
    if resume is not None:
        model.load_state_dict(state)
    lr0 = learning_rate or (2e-4 if method == "niiv" else 4e-4)
    opt = torch.optim.Adam(model.parameters(), lr=lr0)
    pdl_weight = 0.01 if method == "a2i" else 0.0

    def loss_fn(pred, hr):
        loss = (pred - hr).abs().mean()
        if pdl_weight:
            loss = loss + pdl_weight * projected_distribution_loss(pred, hr)
        return loss

    def to_t(lr_, hr_, pos_):
        return (torch.from_numpy(lr_).to(dev), torch.from_numpy(hr_).to(dev),
                torch.from_numpy(pos_).to(dev))

    def validate():
        model.eval()
        tot = base = 0.0
        with torch.inference_mode():
            for lr_, hr_, pos_, f in val:
                lt, ht, pt = to_t(lr_, hr_, pos_)
                tot += float((model(lt, pt, 1.0 / f) - ht).abs().mean())
                # linear interpolation along rows, for scale
                n = lr_.shape[2]
                k0 = np.clip(np.floor(pos_), 0, n - 2).astype(int)
                t = (pos_ - k0)[None, None, :, None]
                lin = (1 - t) * lr_[:, :, k0] + t * lr_[:, :, k0 + 1]
                base += float(np.abs(lin - hr_).mean())
        model.train()
        return tot / len(val), base / len(val)

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    best, baseline = validate()
    prev_minutes = float(prev.get("minutes", 0.0))
    log(f"{method}: start at step {start_step}, validation L1 {best:.5f} "
        f"(linear interpolation {baseline:.5f}), {sum(p.numel() for p in model.parameters())} "
        f"parameters, device {dev}")

    def save(step, minutes_done):
        meta = {
            "method": method,
            "arch": a,
            "factor_range": [min(factors), max(factors)],
            "training": {
                "data": data_name, "shape": list(vol.shape), "factors": factors,
                "degradation": degradation, "noise_std": noise_std,
                "poisson_peak": poisson_peak, "steps": step, "best_step": step, "batch": batch,
                "patch": [sampler.hr_rows(max(factors)), width],
                "minutes": round(minutes_done, 2), "best_val_l1": best,
                "linear_val_l1": baseline, "learning_rate": lr0,
                "loss": "L1 + 0.01 PDL" if pdl_weight else "L1",
                "resumed_from": str(resume) if resume else None,
            },
        }
        save_checkpoint(out, model.state_dict(), meta)

    if resume is None or not out.exists() or Path(resume).resolve() != out.resolve():
        save(start_step, prev_minutes)
    t0 = time.perf_counter()
    budget = max(minutes, 1e-3) * 60.0
    step = start_step
    running, n_run = 0.0, 0
    stopped = False
    model.train()
    while True:
        elapsed = time.perf_counter() - t0
        if stop_event is not None and stop_event.is_set():
            stopped = True
            break
        if elapsed >= budget or (max_steps is not None and step - start_step >= max_steps):
            break
        frac = min(elapsed / budget, 1.0)
        if max_steps:
            frac = max(frac, (step - start_step) / max_steps)
        for g in opt.param_groups:
            g["lr"] = lr0 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        lr_, hr_, pos_, f = sampler.sample(batch)
        lt, ht, pt = to_t(lr_, hr_, pos_)
        loss = loss_fn(model(lt, pt, 1.0 / f), ht)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        running += loss.item()
        n_run += 1
        preview = None
        if (step - start_step) % eval_every == 0:
            v, _ = validate()
            if v < best:
                best = v
                save(step, prev_minutes + (time.perf_counter() - t0) / 60)
            log(f"step {step}: train loss {running / n_run:.5f}, validation L1 {v:.5f} "
                f"(best {best:.5f}, linear {baseline:.5f}), {(time.perf_counter() - t0) / 60:.1f} min")
            if callback is not None:
                preview = preview_plane(model, vol, float(factors[0]), device=dev)
        if callback is not None and (step % 10 == 0 or preview is not None):
            callback(step, running / max(n_run, 1), preview)
            running, n_run = 0.0, 0
        elif callback is None and (step - start_step) % eval_every == 0:
            running, n_run = 0.0, 0
    # final validation so that the last steps are not lost
    v, _ = validate()
    total_min = prev_minutes + (time.perf_counter() - t0) / 60
    if v < best:
        best = v
        save(step, total_min)
    else:  # keep the best weights, but record how long training ran in total
        state, meta = load_checkpoint(out, method=method)
        meta["training"]["minutes"] = round(total_min, 2)
        meta["training"]["steps"] = step  # total steps run (resume continues from here)
        meta.pop("tensors_sha256", None)
        save_checkpoint(out, state, meta)
    log(f"{method}: {'stopped' if stopped else 'done'} at step {step}, best validation L1 "
        f"{best:.5f} (linear {baseline:.5f}); checkpoint {out}")
    return TrainResult(out, step, best, baseline, total_min, stopped)


def main(method: str, argv: list[str]) -> int:
    """``zup train niiv|a2i ARGS``; returns the exit status."""
    p = argparse.ArgumentParser(
        prog=f"zup train {method}",
        description=f"Train {method} self-supervised on your own anisotropic stack: its xy "
                    "slices, degraded along y/x like the z axis, teach the model to restore "
                    "the xz/yz planes. The best checkpoint is kept at --out at all times.")
    p.add_argument("--data", required=True, help="the anisotropic stack (TIFF or OME-Zarr)")
    p.add_argument("--factor", required=True,
                   help="z step / xy pixel size as an integer, e.g. 4, or a comma list 2,4,8")
    p.add_argument("--out", required=True, help="checkpoint to write (.safetensors)")
    p.add_argument("--minutes", type=float, default=10.0, help="training time (default 10)")
    p.add_argument("--steps", type=int, default=None, help="stop after this many steps")
    p.add_argument("--degradation", choices=DEGRADATIONS, default="decimate",
                   help="decimate = thin sections (FIB-SEM, default); pool = thick sections (ssTEM)")
    p.add_argument("--noise-std", type=float, default=0.0,
                   help="Gaussian noise (0..1 units) added to degraded inputs")
    p.add_argument("--poisson-peak", type=float, default=0.0,
                   help="Poisson noise with this many counts at full intensity (0 = off)")
    p.add_argument("--batch", type=int, default=None,
                   help="patches per step (default: niiv 16, a2i 8)")
    p.add_argument("--rows", type=int, default=None,
                   help="low-resolution rows per patch (default: niiv 12, a2i 8)")
    p.add_argument("--width", type=int, default=None,
                   help="patch width in pixels (default: niiv 48, a2i 64)")
    p.add_argument("--lr", type=float, default=None, help="learning rate")
    p.add_argument("--resume", default=None, help="checkpoint to continue from")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=50,
                   help="steps between validations (default 50; more on a GPU)")
    args = p.parse_args(argv)
    if args.eval_every < 1:
        p.error(f"--eval-every must be >= 1, got {args.eval_every}")
    try:
        factors = [int(x) for x in str(args.factor).split(",")]
    except ValueError:
        p.error(f"--factor must be an integer or a comma list of integers, got {args.factor!r}")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        from ..io import read_volume

        data = np.asarray(read_volume(args.data).data)
    except Exception as exc:
        print(f"error: cannot read --data {args.data!r}: {exc}", file=sys.stderr)
        return 2
    try:
        res = train(method, data, factors if len(factors) > 1 else factors[0], out=args.out,
                    minutes=args.minutes, max_steps=args.steps, degradation=args.degradation,
                    noise_std=args.noise_std, poisson_peak=args.poisson_peak,
                    batch=args.batch, rows=args.rows, width=args.width,
                    learning_rate=args.lr, resume=args.resume, device=args.device,
                    seed=args.seed, data_name=Path(args.data).name,
                    eval_every=args.eval_every,
                    log=lambda s: print(s, flush=True))
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted; the best checkpoint so far is in {args.out}", file=sys.stderr)
        return 130
    print(f"wrote {res.path} ({res.steps} steps, {res.minutes:.1f} min)")
    return 0
