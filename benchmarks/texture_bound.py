"""How much PSNR a texture ratio costs at best, given film's sources (issue #11, texture mode).

`--texture RATIO` adds the high band (above 0.5 Nyquist) of film's flow-aligned knots to film's
smooth output until the slice's band energy is RATIO x the nearest knot's. Any rule that only
rescales and mixes the two bands it has (film's own band ``ph``, the aligned knots' band
``sh``) can do no better than the **oracle** that knows the true section's band ``xh``: per
slice, the mix ``a ph + b sh`` with the required energy that is closest to ``xh`` (the
direction ``G^-1 c``, G the 2 x 2 Gram matrix of the bands, c their products with ``xh``,
scaled to the energy). This prints, per factor, the volume PSNR change against film (texture
off) of the shipped rule and of that oracle, on a drop-and-restore of STACK
(../shared/EVALUATION.md: every F-th section kept, the others restored and compared).

    OMP_NUM_THREADS=1 python benchmarks/texture_bound.py STACK --factors 2,4,8 [--ratio 0.8]
"""
from __future__ import annotations

import argparse
import math

import numpy as np
import tifffile
import torch

import napari_zup.methods._torch_common as tc
from napari_zup.methods.film import Film


def band_stats(stack: np.ndarray, factor: int, ratio: float):
    """Per restored slice: band products of film's output, its aligned knots, the truth and
    the nearest knot, and film's squared error (texture off)."""
    knots = stack[::factor]
    caught = []
    real = tc.add_knot_texture

    def catch(img, source, r, value_range, knot=None):
        # film's output (kept: texture off), its sources, and what the shipped rule makes
        caught.append((np.array(img, np.float64), np.asarray(source, np.float64),
                       np.asarray(knot, np.float64),
                       np.asarray(real(img, source, r, value_range, knot), np.float64)))
        return img

    tc.add_knot_texture = catch
    try:
        m = Film(texture=ratio, device="cpu")
        m.prepare(knots)
        pos = [k + j / factor for k in range(len(knots) - 1) for j in range(1, factor)]
        m.render(knots, pos, value_range=(0.0, 255.0))
    finally:
        tc.add_knot_texture = real
    hb = tc.high_band
    rows = []
    for (p, s, near, shipped), q in zip(caught, pos):
        x = stack[int(round(q * factor))].astype(np.float64)
        ph, sh, xh, nh = hb(p), hb(s), hb(x), hb(near)
        rows.append([(ph * ph).sum(), (ph * sh).sum(), (sh * sh).sum(), (xh * ph).sum(),
                     (xh * sh).sum(), (nh * nh).sum(), ((p - x) ** 2).sum(),
                     ((shipped - x) ** 2).sum()])
    return np.array(rows)


def costs(rows: np.ndarray, ratio: float) -> dict:
    pp, ps, ss, xp, xs, nn, mse, mse_shipped = rows.T
    target = ratio * nn

    def db(a, b):  # PSNR change of the volume when film's band becomes a ph + b sh
        new = -2 * (a * xp + b * xs) + a * a * pp + 2 * a * b * ps + b * b * ss
        old = -2 * xp + pp
        return -10 * math.log10((mse + new - old).sum() / mse.sum())

    gram = np.stack([np.stack([pp, ps], -1), np.stack([ps, ss], -1)], -2)
    d = np.linalg.solve(gram, np.stack([xp, xs], -1)[..., None])[..., 0]
    e = d[:, 0] ** 2 * pp + 2 * d[:, 0] * d[:, 1] * ps + d[:, 1] ** 2 * ss
    k = np.sqrt(target / e)
    return {"slices": len(rows), "film band / knot": float((pp / nn).mean()),
            "aligned band / knot": float((ss / nn).mean()),
            "shipped rule dB": -10 * math.log10(mse_shipped.sum() / mse.sum()),
            "oracle dB": db(k * d[:, 0], k * d[:, 1]),
            "film's band x a only dB": db(np.sqrt(target / pp), np.zeros_like(pp))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("stack")
    p.add_argument("--factors", default="2,4,8")
    p.add_argument("--ratio", type=float, default=0.8)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    stack = tifffile.imread(args.stack)
    for f in [int(x) for x in args.factors.split(",")]:
        r = costs(band_stats(stack, f, args.ratio), args.ratio)
        print(f"F = {f}: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                       for k, v in r.items()), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
