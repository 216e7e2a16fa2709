"""Experiment (issue #11): is an axial refinement stage on film's output worth keeping?

A small 2D U-Net sees xz and yz planes of film's restored volume (knot rows exact, film's
rows between them) and predicts a correction of the restored rows only; the xz- and
yz-refined volumes are averaged. It sees several intervals at once (the xz/yz context that
niiv/a2i use), which a slice interpolator never does.

Data (../shared/EVALUATION.md drop-and-restore; never sample2 for training or validation):
film (shipped checkpoint) restores G[::F] for F = 2, 4, 8 of sample1, extraa and the head of
extrab (slices 0-91) for training; extrab slices 95- are the validation hold-out; sample2 is
only scored, from film volumes made by benchmarks/ensemble.py --save.

    .venv/bin/python benchmarks/axial_refine.py prepare
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/axial_refine.py train --minutes 40
    .venv/bin/python benchmarks/axial_refine.py score --ens /tmp/ens
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import tifffile
import torch
from torch import nn

from ensemble import score as score_restored  # the same scoring as the ensembles (benchmarks/)
from napari_zup.engine import reconstruct

D = Path(__file__).resolve().parents[2] / "shared" / "data"
FACTORS = (2, 4, 8)
TRAIN = {"sample1": (D / "fibsem_flyem_medulla_10nm_sample1_250.tif", slice(None)),
         "extraa": (D / "fibsem_flyem_medulla_10nm_extraa_112x520x520.tif", slice(None)),
         "extrab_head": (D / "fibsem_flyem_medulla_10nm_extrab_112x520x520.tif", slice(0, 92))}
VAL = {"extrab_tail": (D / "fibsem_flyem_medulla_10nm_extrab_112x520x520.tif", slice(95, None))}


def prepare(work: Path, method: str = "film") -> None:
    for name, (path, sl) in {**TRAIN, **VAL}.items():
        g = tifffile.imread(path)[sl]
        for f in FACTORS:
            dst = work / f"{name}_{method}_x{f}.npy"
            if dst.exists():
                continue
            a = g[::f]
            t0 = time.perf_counter()
            out = reconstruct(a, method, f)
            np.save(dst, out)
            np.save(work / f"{name}_gt_x{f}.npy", g[: out.shape[0]])
            print(f"{name} x{f}: {out.shape} in {time.perf_counter() - t0:.0f} s", flush=True)


def _block(c):
    return nn.Sequential(nn.Conv2d(c, c, 3, 1, 1), nn.LeakyReLU(0.2, True), nn.Conv2d(c, c, 3, 1, 1))


class Res(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.b = _block(c)

    def forward(self, x):
        return x + self.b(x)


class Refiner(nn.Module):
    """Planes (B, 1, Z, W) + position channels -> correction of the restored rows."""

    def __init__(self, c=(24, 40, 56), blocks=2):
        super().__init__()
        a = lambda: nn.LeakyReLU(0.2, True)  # noqa: E731
        self.inp = nn.Sequential(nn.Conv2d(3, c[0], 3, 1, 1), a(), Res(c[0]))
        self.d1 = nn.Sequential(nn.Conv2d(c[0], c[1], 3, 2, 1), a(), *[Res(c[1]) for _ in range(blocks)])
        self.d2 = nn.Sequential(nn.Conv2d(c[1], c[2], 3, 2, 1), a(), *[Res(c[2]) for _ in range(blocks)])
        self.u2 = nn.ConvTranspose2d(c[2], c[1], 2, 2)
        self.m1 = nn.Sequential(nn.Conv2d(2 * c[1], c[1], 3, 1, 1), a(), Res(c[1]))
        self.u1 = nn.ConvTranspose2d(c[1], c[0], 2, 2)
        self.m0 = nn.Sequential(nn.Conv2d(2 * c[0], c[0], 3, 1, 1), a(), Res(c[0]))
        self.out = nn.Conv2d(c[0], 1, 3, 1, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x, dist, cell):
        """x (B, 1, Z, W) in [0, 1]; dist (B, 1, Z, 1) distance to the nearest knot in
        intervals (0 at knots, 0.5 midway); cell (B,) = 1/F. Sizes multiples of 4."""
        b, _, z, w = x.shape
        feats = torch.cat([x - 0.5, dist.expand(b, 1, z, w),
                           cell.view(b, 1, 1, 1).expand(b, 1, z, w)], 1)
        e0 = self.inp(feats)
        e1 = self.d1(e0)
        e2 = self.d2(e1)
        m1 = self.m1(torch.cat([self.u2(e2), e1], 1))
        m0 = self.m0(torch.cat([self.u1(m1), e0], 1))
        return x + self.out(m0) * (dist > 0)


def dist_rows(z0: int, n: int, f: int) -> np.ndarray:
    p = (np.arange(z0, z0 + n) % f).astype(np.float32)
    return np.minimum(p, f - p) / f


def load(work: Path, names, method="film"):
    out = []
    for name in names:
        for f in FACTORS:
            r = np.load(work / f"{name}_{method}_x{f}.npy")
            g = np.load(work / f"{name}_gt_x{f}.npy")
            out.append((name, f, r, g))
    return out


def sample(vols, rng, batch, pz=48, pw=96):
    xs, gs, ds, cs = [], [], [], []
    weights = np.array([v[2].size for v in vols], float)
    for _ in range(batch):
        _, f, r, g = vols[rng.choice(len(vols), p=weights / weights.sum())]
        if rng.random() < 0.5:  # xz plane at row y
            y = rng.integers(r.shape[1])
            rp, gp = r[:, y, :], g[:, y, :]
        else:
            x = rng.integers(r.shape[2])
            rp, gp = r[:, :, x], g[:, :, x]
        z0 = rng.integers(0, rp.shape[0] - pz + 1)
        w0 = rng.integers(0, rp.shape[1] - pw + 1)
        a, b = rp[z0:z0 + pz, w0:w0 + pw], gp[z0:z0 + pz, w0:w0 + pw]
        d = dist_rows(z0, pz, f)
        if rng.random() < 0.5:
            a, b, d = a[::-1], b[::-1], d[::-1]
        if rng.random() < 0.5:
            a, b = a[:, ::-1], b[:, ::-1]
        xs.append(a.copy()); gs.append(b.copy()); ds.append(d.copy()); cs.append(1.0 / f)
    t = lambda v: torch.from_numpy(np.stack(v)).float()[:, None]  # noqa: E731
    return t(xs) / 255, t(gs) / 255, t(ds)[..., None], torch.tensor(cs, dtype=torch.float32)


@torch.no_grad()
def refine_volume(model, vol: np.ndarray, f: int, batch: int = 16) -> np.ndarray:
    """Refine a whole restored uint8 volume (Z, H, W): xz and yz planes, mean fusion."""
    z, h, w = vol.shape
    zp, hp, wp = -(-z // 4) * 4, -(-h // 4) * 4, -(-w // 4) * 4
    v = np.pad(vol.astype(np.float32) / 255, ((0, zp - z), (0, hp - h), (0, wp - w)), mode="edge")
    d = torch.from_numpy(dist_rows(0, zp, f))[None, None, :, None]
    acc = np.zeros((z, h, w), np.float32)
    for axis in (1, 2):
        planes = np.moveaxis(v, axis, 0)  # (H, Z, W) or (W, Z, H)
        res = np.empty_like(planes)
        for i in range(0, planes.shape[0], batch):
            x = torch.from_numpy(np.ascontiguousarray(planes[i:i + batch]))[:, None]
            n = x.shape[0]
            res[i:i + n] = model(x, d.expand(n, 1, zp, 1),
                                 torch.full((n,), 1.0 / f)).clamp(0, 1)[:, 0].numpy()
        acc += np.moveaxis(res, 0, axis)[:z, :h, :w]
    out = acc / 2
    out[::f] = vol[::f].astype(np.float32) / 255  # knots exact
    return np.clip(np.rint(out * 255), 0, 255).astype(np.uint8)


def validate(model, val):
    model.eval()
    res = {}
    for name, f, r, g in val:
        res[f] = (score_restored(r, g, f)[0], score_restored(refine_volume(model, r, f), g, f)[0])
    model.train()
    return res


def train(work: Path, minutes: float, out: Path, batch: int = 12, lr: float = 5e-4,
          eval_every: int = 300, seed: int = 0) -> None:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    vols, val = load(work, TRAIN), load(work, VAL)
    model = Refiner()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    print(f"{sum(p.numel() for p in model.parameters())} parameters", flush=True)
    t0, step, log = time.time(), 0, []
    end = t0 + 60 * minutes
    while time.time() < end:
        x, g, d, c = sample(vols, rng, batch)
        pred = model(x, d, c)
        mask = (d > 0).float()
        loss = ((pred - g).abs() * mask).sum() / (mask.sum() * x.shape[-1])
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % eval_every == 0:
            v = validate(model, val)
            log.append({"step": step, "minutes": (time.time() - t0) / 60, "val": v})
            print(f"step {step} ({(time.time() - t0) / 60:.1f} min) loss {loss.item():.4f} val "
                  + "  ".join(f"x{f}: {a:.2f}->{b:.2f}" for f, (a, b) in v.items()), flush=True)
            torch.save(model.state_dict(), out)
    torch.save(model.state_dict(), out)
    (out.with_suffix(".json")).write_text(json.dumps(log))


def score(work: Path, model_path: Path, ens: Path) -> None:
    model = Refiner()
    model.load_state_dict(torch.load(model_path, weights_only=True))
    model.eval()
    g = tifffile.imread(D / "fibsem_flyem_medulla_10nm_sample2_250.tif")
    for f in FACTORS:
        r = np.load(ens / f"film_x{f}.npy")
        t0 = time.perf_counter()
        ref = refine_volume(model, r, f)
        dt = time.perf_counter() - t0
        gt = g[: r.shape[0]]
        a, b = score_restored(r, gt, f), score_restored(ref, gt, f)
        n = sum(1 for i in range(r.shape[0]) if i % f)
        print(f"sample2 x{f}: film {a[0]:.2f} / {a[1]:.4f} -> refined {b[0]:.2f} / {b[1]:.4f}"
              f"  ({b[0] - a[0]:+.2f} dB; refinement {dt / n:.3f} s per restored 250x250 slice)",
              flush=True)
        np.save(work / f"sample2_refined_x{f}.npy", ref)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("step", choices=["prepare", "train", "score"])
    ap.add_argument("--work", default="/tmp/refine")
    ap.add_argument("--minutes", type=float, default=40)
    ap.add_argument("--model", default=None)
    ap.add_argument("--ens", default="/tmp/ens")
    args = ap.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model = Path(args.model) if args.model else work / "refiner.pt"
    if args.step == "prepare":
        prepare(work)
    elif args.step == "train":
        train(work, args.minutes, model)
    else:
        score(work, model, Path(args.ens))


if __name__ == "__main__":
    main()
