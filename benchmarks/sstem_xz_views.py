"""xz views of the real anisotropic ssTEM stacks, every method side by side (qualitative).

    .venv/bin/python benchmarks/sstem_xz_views.py [--stack isbi|vnc] [--factor 12]

There is no ground truth for these stacks: the point is to see what each method does along z
where the sections are 50 nm apart (10-12x the pixel size), including where it fails.
Writes docs/sstem_xz_<stack>.png. Computes a band of rows around the middle y only (the
methods' y halo is covered), so it runs in a minute or two on CPU.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from napari_zup import reconstruct
from napari_zup.io import read_volume

from _data import DATA, ROOT  # ../shared/data (benchmarks/_data.py)
STACKS = {"isbi": DATA / "sstem_isbi2012_train_4x4x50nm.tif",
          "vnc": DATA / "sstem_drosophila_vnc_stack1_4.6x4.6x50nm.tif"}
METHODS = ["nearest", "cubic", "of-linear", "of-cubic", "film", "tsain", "niiv", "a2i"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--stack", default="isbi", choices=list(STACKS))
    ap.add_argument("--factor", type=float, default=None, help="default: round(z/xy)")
    ap.add_argument("--band", type=int, default=160, help="rows computed around middle y")
    ap.add_argument("--width", type=int, default=384, help="x extent shown")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--replot", action="store_true", help="reuse computed views (npz cache)")
    args = ap.parse_args()
    vol = read_volume(STACKS[args.stack])
    data = np.asarray(vol.data)
    f = args.factor or round(vol.anisotropy)
    h = data.shape[1]
    y0 = h // 2 - args.band // 2
    band = data[:, y0:y0 + args.band, :args.width]
    mid = args.band // 2
    cache = ROOT / "docs" / f"sstem_xz_{args.stack}.npz"
    views, times = {}, {}
    if args.replot and cache.exists():
        z = np.load(cache)
        views = {k[5:]: z[k] for k in z.files if k.startswith("view_")}
        times = {k[5:]: float(z[k]) for k in z.files if k.startswith("time_")}
    for m in args.methods.split(","):
        if m in views:
            continue
        t0 = time.perf_counter()
        out = reconstruct(band, m, f)
        times[m] = time.perf_counter() - t0
        views[m] = out[:, mid, :]
        print(f"{m}: {times[m]:.1f} s", file=sys.stderr, flush=True)
    np.savez_compressed(cache, **{f"view_{k}": v for k, v in views.items()},
                        **{f"time_{k}": np.float64(v) for k, v in times.items()})

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(views)
    cols = 4
    rows = -(-n // cols)
    lo, hi = np.percentile(data[len(data) // 2], [0.5, 99.5])
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 4.4 * rows),
                             constrained_layout=True, squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    for ax, (m, img) in zip(axes.ravel(), views.items()):
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest", aspect=1.0)
        ax.set_title(f"{m} x{f:g} ({times[m]:.1f} s, {args.band} rows)", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{STACKS[args.stack].name}: xz plane at y = {y0 + mid}, z down "
                 f"(knots every {f:g} rows; no ground truth exists)", fontsize=10)
    out_png = ROOT / "docs" / f"sstem_xz_{args.stack}.png"
    fig.savefig(out_png, dpi=100)
    print(f"wrote {out_png}", file=sys.stderr)


if __name__ == "__main__":
    main()
