"""Core benchmarks, side by side in one run, as ratios (results -> docs/benchmarks.md).

    .venv/bin/python benchmarks/bench_core.py [--quick]

1. Classical throughput (GB/s of uint8 output): napari-zup linear / cubic vs a plain numpy
   lerp and scipy.ndimage.zoom along z, on the real 20x1024x1024 VNC stack at F = 12.
2. of-linear at F = 4 on the same stack vs a straightforward implementation that computes
   two Farnebäck flows per output slice, sequentially (what the public IsoFlow code does),
   with the same output.
3. The EVALUATION.md table (F = 2, 4, 8; sample1 ; sample2) for linear, cubic, of-linear,
   of-cubic.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import tifffile

from _data import DATA, ROOT  # ../shared/data (benchmarks/_data.py)
VNC = DATA / "sstem_drosophila_vnc_stack1_4.6x4.6x50nm.tif"
SAMPLES = [DATA / "fibsem_flyem_medulla_10nm_sample1_250.tif",
           DATA / "fibsem_flyem_medulla_10nm_sample2_250.tif"]


def best_of(fn, repeats=3):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def numpy_lerp(vol, f):
    n = (len(vol) - 1) * f + 1
    out = np.empty((n,) + vol.shape[1:], np.uint8)
    for i in range(n):
        k = min(i // f, len(vol) - 2)
        t = i / f - k
        out[i] = np.rint((1 - t) * vol[k] + t * vol[k + 1])
    return out


def scipy_zoom(vol, f):
    from scipy.ndimage import zoom

    n = (len(vol) - 1) * f + 1
    return zoom(vol, (n / len(vol), 1, 1), order=1)


def naive_of_linear(vol, f, params):
    """Two flows per output slice, recomputed every time, one thread."""
    from napari_zup.flow import estimate_flow, warp

    n = (len(vol) - 1) * f + 1
    out = np.empty((n,) + vol.shape[1:], vol.dtype)
    for i in range(n):
        k, r = divmod(i, f)
        if r == 0:
            out[i] = vol[k]
            continue
        t = r / f
        a, b = vol[k], vol[k + 1]
        f_ab = estimate_flow(a, b, params)
        f_ba = estimate_flow(b, a, params)
        a_hat = warp(a.astype(np.float32), f_ab, -t)
        b_hat = warp(b.astype(np.float32), f_ba, -(1 - t))
        out[i] = np.clip(np.rint((1 - t) * a_hat + t * b_hat), 0, 255)
    return out


def bench_classical(vol, f=12):
    from napari_zup import reconstruct

    nbytes = ((len(vol) - 1) * f + 1) * vol.shape[1] * vol.shape[2]
    rows = []
    t_np, ref = best_of(lambda: numpy_lerp(vol, f), 1)
    rows.append(("numpy lerp (plain)", t_np))
    t_zoom, _ = best_of(lambda: scipy_zoom(vol, f), 1)
    rows.append(("scipy.ndimage.zoom order=1 along z", t_zoom))
    t_lin, lin = best_of(lambda: reconstruct(vol, "linear", f))
    rows.append(("napari-zup linear", t_lin))
    t_cub, _ = best_of(lambda: reconstruct(vol, "cubic", f))
    rows.append(("napari-zup cubic", t_cub))
    diff = int(np.abs(lin.astype(int) - ref).max())
    return nbytes, rows, diff


def bench_of(vol, f=4):
    from napari_zup import reconstruct
    from napari_zup.flow import FarnebackParams

    params = FarnebackParams()
    t_naive, naive = best_of(lambda: naive_of_linear(vol, f, params), 1)
    t_ours, ours = best_of(lambda: reconstruct(vol, "of-linear", f), 1)
    t_ours1, _ = best_of(lambda: reconstruct(vol, "of-linear", f, workers=1), 1)
    d = np.abs(ours.astype(int) - naive)
    return t_naive, t_ours, t_ours1, float(d.mean()), int(d.max())


def bench_eval(quick=False):
    from napari_zup.evaluation import evaluate

    methods = ["linear", "cubic", "of-linear", "of-cubic"]
    table = {}
    for path in SAMPLES[:1] if quick else SAMPLES:
        g = tifffile.imread(path)
        for f in (4,) if quick else (2, 4, 8):
            scores = evaluate(g, f, methods)
            table[(path.name, f)] = {m: s.summary() for m, s in scores.items()}
            print(path.name, f, {m: (round(s.ssim, 3), round(s.psnr, 2))
                                 for m, s in scores.items()}, file=sys.stderr, flush=True)
    return table


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default=str(ROOT / "docs" / "bench_core.json"))
    args = ap.parse_args()
    vol = tifffile.imread(VNC)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores",
          file=sys.stderr)
    nbytes, rows, diff = bench_classical(vol)
    base = rows[0][1]
    lines = ["### Classical throughput (uint8 output, VNC 20x1024x1024, F = 12, "
             f"{nbytes / 1e6:.0f} MB out)", "",
             "| implementation | seconds | GB/s of output | speed vs numpy lerp |",
             "|---|---|---|---|"]
    for name, t in rows:
        lines.append(f"| {name} | {t:.3f} | {nbytes / t / 1e9:.2f} | {base / t:.1f}x |")
    lines.append(f"\nlinear vs numpy lerp: max |difference| = {diff} grey level(s) (rounding).")
    print("\n".join(lines), flush=True)
    t_naive, t_ours, t_ours1, dmean, dmax = bench_of(vol)
    lines2 = ["", "### of-linear, F = 4, VNC 20x1024x1024 (Farnebäck 129 px, 3 levels)", "",
              "| implementation | seconds | speed-up |", "|---|---|---|",
              f"| straightforward: 2 flows per output slice, 1 thread | {t_naive:.1f} | 1.0x |",
              f"| napari-zup, flows once per knot pair, 1 thread | {t_ours1:.1f} | "
              f"{t_naive / t_ours1:.1f}x |",
              f"| napari-zup, flows once per knot pair, {os.cpu_count()} threads | {t_ours:.1f} | "
              f"{t_naive / t_ours:.1f}x |", "",
              f"Same output: mean |difference| {dmean:.4f}, max {dmax} grey levels."]
    print("\n".join(lines2), flush=True)
    table = bench_eval(args.quick)
    lines3 = ["", "### EVALUATION.md protocol (SSIM / PSNR dB; sample1 ; sample2)", "",
              "| F | linear | cubic | of-linear | of-cubic |", "|---|---|---|---|---|"]
    fs = sorted({f for _, f in table})
    for f in fs:
        cells = []
        for m in ["linear", "cubic", "of-linear", "of-cubic"]:
            parts = [f"{table[(p.name, f)][m]['ssim']:.3f} / {table[(p.name, f)][m]['psnr']:.2f}"
                     for p in SAMPLES if (p.name, f) in table]
            cells.append(" ; ".join(parts))
        lines3.append(f"| {f} | " + " | ".join(cells) + " |")
    lines3 += ["", "Fourier-cutoff PSNR (0.5 Nyquist) / IE / seconds per restored slice:", "",
               "| sample, F | " + " | ".join(["linear", "cubic", "of-linear", "of-cubic"]) + " |",
               "|---|---|---|---|---|"]
    for (name, f), sc in table.items():
        label = "sample1" if "sample1" in name else "sample2" if "sample2" in name else name
        lines3.append(f"| {label}, {f} | " + " | ".join(
            f"{sc[m]['fpsnr']:.2f} / {sc[m]['ie']:.2f} / {sc[m]['seconds_per_slice']:.4f}"
            for m in ["linear", "cubic", "of-linear", "of-cubic"]) + " |")
    print("\n".join(lines3), flush=True)
    Path(args.json).write_text(json.dumps({f"{k[0]}|{k[1]}": v for k, v in table.items()},
                                          indent=1))


if __name__ == "__main__":
    main()
