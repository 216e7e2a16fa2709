"""of-linear / of-cubic vs IsoFlow-style optical flow, side by side in one run (issue #15
item 2): wall time on the 20 x 1024 x 1024 VNC stack at F = 4, as ratios to the
straightforward implementation (two Farnebäck flows per output slice, recomputed every time,
as IsoFlow does), and SSIM / PSNR on sample2 at F = 2, 4, 8 for the same settings.

    .venv/bin/python benchmarks/bench_of_speed.py [--repeats 2] [--skip-quality]

Prints a markdown table (with ``uptime`` before and after) for docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import os

import numpy as np
import tifffile

from _data import DATA
from bench_core import best_of, naive_of_linear
from bench_learned import uptime
from napari_zup.flow import PAPER_ITERATIONS

VNC = DATA / "sstem_drosophila_vnc_stack1_4.6x4.6x50nm.tif"
SAMPLE2 = DATA / "fibsem_flyem_medulla_10nm_sample2_250.tif"

#: (label, method parameters); the first is the paper's exact method as shipped before.
SETTINGS = [
    ("paper: backward Farnebäck call, 3 iterations",
     {"backward": "farneback", "iterations": PAPER_ITERATIONS}),
    ("inverted backward flow, 3 iterations", {"backward": "inverse", "iterations": PAPER_ITERATIONS}),
    ("inverted backward flow, 2 iterations (default)", {}),
]


def naive_per_slice(vol, method, f):
    """IsoFlow-style ``method`` with the paper's flows: every output slice between knots is
    rendered on its own, so its flows (2 for of-linear, 4 for of-cubic) are recomputed each
    time. Same formulas as napari-zup's (it calls the method per slice)."""
    from napari_zup.methods import create_method

    m = create_method(method, backward="farneback", iterations=PAPER_ITERATIONS)
    n = (len(vol) - 1) * f + 1
    out = np.empty((n,) + vol.shape[1:], vol.dtype)
    for i in range(n):
        k, r = divmod(i, f)
        out[i] = vol[k] if r == 0 else m.render(vol, [k + r / f], value_range=(0, 255)).slices[0]
    return out


def main():
    from napari_zup import reconstruct
    from napari_zup.evaluation import evaluate_method
    from napari_zup.flow import FarnebackParams

    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--skip-quality", action="store_true")
    args = ap.parse_args()
    print(f"load before: {uptime()}; {os.cpu_count()} cores\n")
    vol = tifffile.imread(VNC)
    paper = FarnebackParams(iterations=PAPER_ITERATIONS)
    t_naive, naive = best_of(lambda: naive_of_linear(vol, 4, paper), 1)
    t_naive_c, naive_c = best_of(lambda: naive_per_slice(vol, "of-cubic", 4), 1)
    base = {"of-linear": t_naive, "of-cubic": t_naive_c}
    rows = [("IsoFlow-style: 2 Farnebäck calls per output slice (paper setting)", "of-linear",
             t_naive, naive),
            ("IsoFlow-style: 4 Farnebäck calls per output slice (paper setting)", "of-cubic",
             t_naive_c, naive_c)]
    for label, params in SETTINGS:
        for m in ("of-linear", "of-cubic"):
            t, out = best_of(lambda: reconstruct(vol, m, 4, method_params=params), args.repeats)
            rows.append((f"napari-zup, {label}, 2 threads", m, t, out))
    t1, _ = best_of(lambda: reconstruct(vol, "of-linear", 4, workers=1), 1)
    rows.append(("napari-zup, default, 1 thread", "of-linear", t1, None))

    print("of-linear / of-cubic, F = 4, VNC 20 x 1024 x 1024 (window 129, 3 levels), best of "
          f"{args.repeats}:\n")
    print("| implementation | method | seconds | vs IsoFlow-style of the same method | mean / max abs diff "
          "vs the paper setting (grey) |")
    print("|---|---|---|---|---|")
    ref = {m: out for (label, m, _, out) in rows if label.startswith("napari-zup, paper")}
    for label, m, t, out in rows:
        diff = ""
        if out is not None and not label.startswith("napari-zup, paper"):
            d = np.abs(out.astype(np.int16) - ref[m])
            diff = f"{d.mean():.3f} / {d.max()}"
        print(f"| {label} | {m} | {t:.2f} | {base[m] / t:.1f}x | {diff} |")
    print(f"\nload after timing: {uptime()}\n")
    if args.skip_quality:
        return
    g = tifffile.imread(SAMPLE2)
    print("sample2 drop-and-restore, SSIM / PSNR dB:\n")
    print("| setting | " + " | ".join(f"F = {f} {m}" for f in (2, 4, 8)
                                      for m in ("of-linear", "of-cubic")) + " |")
    print("|---|" + "---|" * 6)
    for label, params in SETTINGS:
        cells = []
        for f in (2, 4, 8):
            for m in ("of-linear", "of-cubic"):
                s = evaluate_method(g, f, m, method_params=params)[0]
                cells.append(f"{s.ssim:.4f} / {s.psnr:.2f}")
        print(f"| {label} | " + " | ".join(cells) + " |", flush=True)
    print(f"\nload after: {uptime()}")


if __name__ == "__main__":
    main()
