"""Training of the learned pair interpolators (``film``, ``tsain``).

Supervised (default): tuples ``(G[z], G[z + F], t = k / F) -> G[z + k]`` cut from isotropic
stacks, every axis of the cube used as 'z' (an isotropic cube has three), factors F mixed
(2, 4, 8 by default) with ``k`` drawn among the available positions. Augmentations: flips,
rot90, z reversal (swap knots, t -> 1 - t), intensity jitter (gain, offset, gamma).

Self-supervised (``--self-supervised --data stack.tif``): only an anisotropic stack, no ground
truth. Tuples ``(A[z - 1], A[z + 1], t = 1/2) -> A[z]`` teach interpolation at twice the real
spacing; the model is then applied at the real spacing (assumption: what relates slices 2 steps
apart also relates slices 1 step apart, at a smaller scale; see docs/learned-interpolation.md).

Loss: L1 + Laplacian-pyramid L1 (5 levels; a stand-in for FILM's VGG perceptual/style terms,
whose weights cannot be downloaded here) + 0.1 x gradient L1 (edges).

The best checkpoint by validation PSNR is written to ``--out`` (safetensors via
:func:`napari_zup.checkpoints.save_checkpoint`); the training state (model, optimiser, step,
elapsed time, best score) to ``--out`` + ``.state.pt`` for ``--resume``.

Example::

    zup train film --data sample1.tif --val sample2.tif --minutes 40 --out film.safetensors
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

METHODS = ("film", "tsain")


def _build(method: str, arch: dict | None):
    if method == "film":
        from ..methods.film import DEFAULT_ARCH, build_film
        arch = {**DEFAULT_ARCH, **(arch or {})}
        return build_film(arch), arch
    if method == "tsain":
        from ..methods.tsain import DEFAULT_ARCH, build_tsain
        arch = {**DEFAULT_ARCH, **(arch or {})}
        return build_tsain(arch), arch
    raise ValueError(f"unknown learned method {method!r}; choose one of: {', '.join(METHODS)}")


# -- data -------------------------------------------------------------------------------------

def _read_stack(path) -> np.ndarray:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"training data {str(path)!r} does not exist")
    try:
        from ..io import read_volume
        data = np.asarray(read_volume(path).data)
    except ImportError:
        import tifffile
        data = tifffile.imread(str(path))
    if data.ndim != 3:
        raise ValueError(f"training data {path.name!r} must be a 3D stack (z, y, x), "
                         f"got shape {data.shape}")
    return data


def _unit(data: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] like the methods do (dtype range; floats: min-max)."""
    if data.dtype.kind in "ui":
        info = np.iinfo(data.dtype)
        return ((data.astype(np.float32) - info.min) / (info.max - info.min)).astype(np.float32)
    lo, hi = float(data.min()), float(data.max())
    return ((data.astype(np.float32) - lo) / ((hi - lo) or 1.0)).astype(np.float32)


class TupleSampler:
    """Random training tuples ``(a, b, t, target)`` as float32 arrays (B, 1, c, c)."""

    def __init__(self, stacks, factors=(2, 4, 8), crop=96, self_supervised=False,
                 augment=True, seed=0):
        self.rng = np.random.default_rng(seed)
        self.crop, self.augment = crop, augment
        self.self_supervised = self_supervised
        self.views = []  # contiguous (z, y, x) views; each axis of isotropic cubes as z
        for s in stacks:
            u = _unit(s)
            if self_supervised:
                self.views.append(u)
            else:
                for axes in ((0, 1, 2), (1, 0, 2), (2, 0, 1)):
                    self.views.append(np.ascontiguousarray(u.transpose(axes)))
        # an axis whose cross-sections are smaller than the crop is not used as 'z'
        small = [v.shape[1:] for v in self.views if min(v.shape[1:]) < crop]
        self.views = [v for v in self.views if min(v.shape[1:]) >= crop]
        if not self.views:
            raise ValueError(f"slices {small[0]} are smaller than the crop {crop}; "
                             f"use --crop {min(small[0])} or less")
        # self-supervised: only the stack's own z axis, (z-1, z+1) -> z by default
        factors = factors or ((2,) if self_supervised else (2, 4, 8))
        self.factors = [f for f in factors if any(len(v) > f for v in self.views)]
        if not self.factors:
            raise ValueError("stacks are too short for the requested factors")

    def sample(self, batch):
        c = self.crop
        a = np.empty((batch, 1, c, c), np.float32)
        b = np.empty_like(a)
        y = np.empty_like(a)
        t = np.empty(batch, np.float32)
        rng = self.rng
        for i in range(batch):
            f = int(rng.choice(self.factors))
            v = self.views[rng.integers(len(self.views))]
            while len(v) <= f:
                v = self.views[rng.integers(len(self.views))]
            z = int(rng.integers(0, len(v) - f))
            k = int(rng.integers(1, f))
            y0 = int(rng.integers(0, v.shape[1] - c + 1))
            x0 = int(rng.integers(0, v.shape[2] - c + 1))
            trip = np.stack([v[z, y0:y0 + c, x0:x0 + c], v[z + f, y0:y0 + c, x0:x0 + c],
                             v[z + k, y0:y0 + c, x0:x0 + c]])
            tt = k / f
            if self.augment:
                if rng.random() < 0.5:
                    trip = trip[:, :, ::-1]
                if rng.random() < 0.5:
                    trip = trip[:, ::-1]
                trip = np.rot90(trip, int(rng.integers(4)), axes=(1, 2))
                if rng.random() < 0.5:  # z reversal
                    trip = trip[[1, 0, 2]]
                    tt = 1.0 - tt
                gain = rng.uniform(0.8, 1.2)
                gamma = math.exp(rng.uniform(-0.25, 0.25))
                off = rng.uniform(-0.08, 0.08)
                trip = np.clip(np.clip(trip, 0, 1) ** gamma * gain + off, 0, 1)
            a[i, 0], b[i, 0], y[i, 0] = trip
            t[i] = tt
        return a, b, t, y


def validation_set(stack, factors=None, per_factor=16, crop=128, seed=1234,
                   self_supervised=False):
    """A fixed set of validation tuples (no augmentation) from ``stack``."""
    s = TupleSampler([stack], factors, crop, self_supervised, augment=False, seed=seed)
    out = []
    for f in s.factors:
        s.factors = [f]
        out.append(s.sample(per_factor))
    return out


# -- loss -------------------------------------------------------------------------------------

def _laplacian_l1(x, y, levels=5):
    import torch.nn.functional as F
    loss = 0.0
    for l in range(levels):
        if min(x.shape[-2:]) < 4:
            break
        xd, yd = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
        xu = F.interpolate(xd, size=x.shape[-2:], mode="bilinear", align_corners=False)
        yu = F.interpolate(yd, size=y.shape[-2:], mode="bilinear", align_corners=False)
        loss = loss + (2 ** l) * ((x - xu) - (y - yu)).abs().mean()
        x, y = xd, yd
    return loss + (x - y).abs().mean() * (2 ** levels)


def interpolation_loss(out, target):
    """L1 + Laplacian-pyramid L1 + 0.1 gradient L1 (see module docstring)."""
    l1 = (out - target).abs().mean()
    gx = ((out[..., :, 1:] - out[..., :, :-1]) - (target[..., :, 1:] - target[..., :, :-1]))
    gy = ((out[..., 1:, :] - out[..., :-1, :]) - (target[..., 1:, :] - target[..., :-1, :]))
    grad = gx.abs().mean() + gy.abs().mean()
    return l1 + 0.1 * _laplacian_l1(out, target) + 0.1 * grad


# -- training loop ----------------------------------------------------------------------------

def _psnr(out, target):
    import torch
    mse = ((out.clamp(0, 1) - target) ** 2).flatten(1).mean(1)
    return (10 * torch.log10(1.0 / mse.clamp_min(1e-10))).mean().item()


def evaluate_tuples(model, val, device):
    """Mean validation PSNR (dB, [0,1] range) over the validation tuples, per factor."""
    import torch
    model.eval()
    res = []
    with torch.no_grad():
        for a, b, t, y in val:
            out, _ = model(torch.from_numpy(a).to(device), torch.from_numpy(b).to(device),
                           torch.from_numpy(t).to(device))
            res.append(_psnr(out.float(), torch.from_numpy(y).to(device)))
    model.train()
    return res


def train(method: str, data, *, val=None, out=None, minutes: float = 30.0,
          max_steps: int | None = None, batch: int = 8, crop: int = 96,
          factors=None, lr: float = 1e-3, self_supervised: bool = False,
          resume: bool = False, device: str = "auto", threads: int | None = None,
          arch: dict | None = None, val_every_s: float = 120.0, seed: int = 0,
          init=None, log=print, callback=None, stop_event=None) -> dict:
    """Train ``method`` and write the best checkpoint (by validation PSNR) to ``out``.

    ``data``: path(s) or arrays of isotropic stacks (or one anisotropic stack with
    ``self_supervised=True``); ``factors``: gaps of the tuples (default (2, 4, 8), or (2,) when
    self-supervised); ``val``: a stack for validation (default: the last 15 % of the
    first data stack's slices, with a gap, in self-supervised mode; otherwise required).
    Stops after ``minutes`` (wall time, resumable) or ``max_steps``. ``init``: a checkpoint
    whose weights (and architecture) the model starts from, e.g. the shipped one, to fine-tune
    it on your own data (a fresh optimizer; ``resume`` instead continues a training state).
    Returns a summary dict.
    ``callback(step, loss, None)`` is called every 10 steps with the mean training loss since
    the last call, and once at the end; setting ``stop_event`` (a ``threading.Event``) stops
    after the current step (final validation; the best checkpoint stays at ``out``).
    """
    import torch

    from ..checkpoints import save_checkpoint
    from ..devices import select_device

    if method not in METHODS:
        raise ValueError(f"unknown learned method {method!r}; choose one of: {', '.join(METHODS)}")
    if resume and init is not None:
        raise ValueError("give --resume (continue a training state) or --init (start from a "
                         "checkpoint's weights), not both")
    if threads:
        torch.set_num_threads(int(threads))
    dev = select_device(device)
    torch.manual_seed(seed)
    init_name = None
    if init is not None:  # checked before any data is read
        from ..checkpoints import load_checkpoint

        state, meta = load_checkpoint(init, method)  # CheckpointError names what is wrong
        arch = meta.get("arch") or arch
        init_name = Path(init).name
    datas = data if isinstance(data, (list, tuple)) else [data]
    stacks = [d if isinstance(d, np.ndarray) else _read_stack(d) for d in datas]
    names = [getattr(d, "name", str(d)) if not isinstance(d, np.ndarray) else "array"
             for d in datas]
    names = [Path(n).name for n in names]
    if val is None:
        if not self_supervised:
            raise ValueError("supervised training needs a validation stack (--val PATH); "
                             "it must not overlap the training data")
        s0 = stacks[0]
        cut = min(int(len(s0) * 0.85), len(s0) - 3)
        if cut < 4:
            raise ValueError(f"self-supervised training needs at least 8 slices, got {len(s0)}")
        val_stack, stacks[0] = s0[cut:], s0[:cut - 1]
        val_name = f"{names[0]}[{cut}:]"
    else:
        val_stack = val if isinstance(val, np.ndarray) else _read_stack(val)
        val_name = "array" if isinstance(val, np.ndarray) else Path(val).name
    sampler = TupleSampler(stacks, factors, crop, self_supervised, seed=seed)
    vcrop = min(128, *val_stack.shape[1:])
    vset = validation_set(val_stack, factors, 16, vcrop, self_supervised=self_supervised)

    model, arch = _build(method, arch)
    if init is not None:
        model.load_state_dict(state)
    model.to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    budget_s = minutes * 60.0
    step, elapsed, best, history = 0, 0.0, -math.inf, []
    out = Path(out or f"{method}.safetensors")
    state_path = out.with_name(out.name + ".state.pt")
    if resume:
        if not state_path.is_file():
            raise FileNotFoundError(f"--resume: no training state {str(state_path)!r}; "
                                    "start without --resume")
        st = torch.load(str(state_path), map_location=dev, weights_only=True)
        if st.get("method") != method:
            raise ValueError(f"training state {state_path.name!r} is for {st.get('method')!r}")
        arch = json.loads(st["arch"])
        model, _ = _build(method, arch)
        model.to(dev).train()
        model.load_state_dict(st["model"])
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
        opt.load_state_dict(st["optim"])
        step, elapsed, best = int(st["step"]), float(st["elapsed"]), float(st["best"])
        history = json.loads(st.get("history", "[]"))
        budget_s = max(budget_s, elapsed + 60.0) if minutes else budget_s
        sampler.rng = np.random.default_rng(seed + step)
        log(f"resumed {method} at step {step}, {elapsed / 60:.1f} min, best {best:.2f} dB")
    n_params = sum(p.numel() for p in model.parameters())
    log(f"{method}: {n_params} parameters, device {dev}, train {names} "
        f"({'self-supervised' if self_supervised else 'factors ' + str(sampler.factors)}), "
        f"val {val_name}, batch {batch}, crop {crop}, budget {minutes} min")
    use_amp = dev.startswith("cuda")
    t_start = time.perf_counter() - elapsed
    last_val = time.perf_counter()
    run_loss, run_n = 0.0, 0
    cb_loss, cb_n = 0.0, 0

    def save_state():
        torch.save({"method": method, "arch": json.dumps(arch), "model": model.state_dict(),
                    "optim": opt.state_dict(), "step": step, "elapsed": elapsed, "best": best,
                    "history": json.dumps(history)}, str(state_path) + ".partial")
        Path(str(state_path) + ".partial").replace(state_path)

    def validate():
        nonlocal best
        scores = evaluate_tuples(model, vset, dev)
        mean = float(np.mean(scores))
        history.append({"step": step, "minutes": round(elapsed / 60, 2),
                        "train_loss": round(run_loss / max(run_n, 1), 5),
                        "val_psnr": [round(s, 3) for s in scores]})
        mark = ""
        if mean > best:
            best = mean
            mark = " *best, saved"
            save_checkpoint(out, model.state_dict(), {
                "method": method, "arch": arch,
                "training": {"data": names, "val": val_name, "steps": step,
                             "minutes": round(elapsed / 60, 1), "batch": batch, "crop": crop,
                             "factors": list(sampler.factors),
                             "self_supervised": self_supervised, "init": init_name,
                             "loss": "L1 + 0.1 LapPyr-L1 + 0.1 grad-L1",
                             "val_psnr_per_factor": [round(s, 3) for s in scores]},
                "factor_range": [1, 8] if not self_supervised else [1, 2],
                "params": n_params})
        log(f"step {step:6d}  {elapsed / 60:6.1f} min  loss {run_loss / max(run_n, 1):.5f}  "
            f"val PSNR {' / '.join(f'{s:.2f}' for s in scores)} dB{mark}")
        save_state()

    while True:
        elapsed = time.perf_counter() - t_start
        if stop_event is not None and stop_event.is_set():
            break
        if (budget_s and elapsed >= budget_s) or (max_steps is not None and step >= max_steps):
            break
        frac = min(elapsed / budget_s, 1.0) if budget_s else step / max(max_steps or 1, 1)
        cur_lr = lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * frac)))
        if step < 100:
            cur_lr *= (step + 1) / 100
        for g in opt.param_groups:
            g["lr"] = cur_lr
        a, b, t, y = (torch.from_numpy(x).to(dev) for x in sampler.sample(batch))
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
            pred, _ = model(a, b, t)
        loss = interpolation_loss(pred.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        run_loss += loss.item()
        run_n += 1
        if callback is not None:
            cb_loss, cb_n = cb_loss + loss.item(), cb_n + 1
            if step % 10 == 0:
                callback(step, cb_loss / cb_n, None)
                cb_loss, cb_n = 0.0, 0
        if time.perf_counter() - last_val >= val_every_s:
            elapsed = time.perf_counter() - t_start
            validate()
            run_loss, run_n = 0.0, 0
            last_val = time.perf_counter()
    elapsed = time.perf_counter() - t_start
    validate()
    if callback is not None:
        callback(step, cb_loss / cb_n if cb_n else float("nan"), None)
    return {"method": method, "steps": step, "minutes": elapsed / 60, "best_val_psnr": best,
            "checkpoint": str(out), "params": n_params, "history": history}


def main(method: str, argv: list[str]) -> int:
    """``zup train film|tsain ARGS``: parse ``argv`` and train; returns an exit code."""
    p = argparse.ArgumentParser(prog=f"zup train {method}",
                                description=f"Train the {method} slice interpolator.")
    p.add_argument("--data", nargs="+", required=True,
                   help="isotropic training stack(s) (or one anisotropic stack with "
                        "--self-supervised)")
    p.add_argument("--val", help="validation stack (must not overlap --data)")
    p.add_argument("--out", default=f"{method}.safetensors", help="checkpoint to write")
    p.add_argument("--minutes", type=float, default=30.0, help="wall-time budget")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=96)
    p.add_argument("--factors", type=int, nargs="+", default=None,
                   help="gaps F of the training tuples (default 2 4 8; self-supervised: 2, "
                        "i.e. (z-1, z+1) -> z; add 4 to also learn t = 1/4, 3/4 at 4x spacing)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--self-supervised", action="store_true",
                   help="learn (z-1, z+1) -> z on an anisotropic stack alone")
    p.add_argument("--resume", action="store_true", help="continue from OUT.state.pt")
    p.add_argument("--init", default=None,
                   help="start from this checkpoint's weights (e.g. the shipped one, to "
                        "fine-tune it on your data)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--val-every", type=float, default=120.0, help="seconds between validations")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        summary = train(method, args.data if len(args.data) > 1 else args.data[0],
                        val=args.val, out=args.out, minutes=args.minutes,
                        max_steps=args.max_steps, batch=args.batch, crop=args.crop,
                        factors=tuple(args.factors) if args.factors else None, lr=args.lr,
                        self_supervised=args.self_supervised, resume=args.resume,
                        device=args.device, threads=args.threads, val_every_s=args.val_every,
                        seed=args.seed, init=args.init, log=lambda s: print(s, flush=True))
    except (ValueError, FileNotFoundError) as exc:
        print(f"zup train {method}: error: {exc}", file=sys.stderr)
        return 2
    print(f"best validation PSNR {summary['best_val_psnr']:.2f} dB after {summary['steps']} "
          f"steps ({summary['minutes']:.1f} min); checkpoint {summary['checkpoint']}")
    return 0


if __name__ == "__main__":  # python -m napari_zup.training.interp film ARGS
    sys.exit(main(sys.argv[1], sys.argv[2:]))
