"""First and last intervals vs the middle ones on a known translation (issue #11: the outer
knots of a 4-knot model are clamped at the volume ends; are the end intervals as good?).

    .venv/bin/python benchmarks/film_ends.py [--checkpoint film=FILE ...] [--factor 4]

A real FlyEM section (sample2, z = 125, read only) translated by a constant sub-pixel shift
per output slice (``--shift`` px along x and half of it along y) gives a stack whose every
intermediate slice is known. Its knots (every ``--factor``-th slice, ``--knots`` of them) are
restored with each method; PSNR (dtype range) of each interval's restored slices together, 24 px border excluded
(where the shift brings in image edge). Prints a table: first
interval, the middle ones (mean), last interval, and end minus middle.
"""
from __future__ import annotations

import argparse
import os

import cv2
import numpy as np
import tifffile
from skimage.metrics import peak_signal_noise_ratio

from _data import DATA  # ../shared/data (benchmarks/_data.py)
SAMPLE2 = DATA / "fibsem_flyem_medulla_10nm_sample2_250.tif"
BORDER = 24


def translated_stack(n: int, shift: float) -> np.ndarray:
    base = tifffile.imread(SAMPLE2, key=125).astype(np.float32)
    out = []
    for z in range(n):
        m = np.float32([[1, 0, shift * z], [0, 1, 0.5 * shift * z]])
        out.append(cv2.warpAffine(base, m, base.shape[::-1], flags=cv2.INTER_CUBIC,
                                  borderMode=cv2.BORDER_REFLECT))
    return np.clip(np.rint(np.stack(out)), 0, 255).astype(np.uint8)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--factor", type=int, default=4)
    ap.add_argument("--knots", type=int, default=8)
    ap.add_argument("--shift", type=float, default=0.7,
                    help="px per output slice along x (not a divisor of 1: no restored "
                         "slice is an exact whole-pixel shift of a knot)")
    ap.add_argument("--methods", default="linear,of-cubic,film")
    ap.add_argument("--checkpoint", action="append", default=[],
                    help="LABEL=FILE: also score film with this checkpoint as LABEL")
    args = ap.parse_args(argv)
    from napari_zup.engine import reconstruct
    from napari_zup.methods import create_method

    f = args.factor
    gt = translated_stack((args.knots - 1) * f + 1, args.shift)
    knots = gt[::f]
    runs = [(m, m, {}) for m in args.methods.split(",") if m]
    runs += [(lab, "film", {"checkpoint": path, "device": "cpu"})
             for lab, path in (c.split("=", 1) for c in args.checkpoint)]
    os.system("uptime")
    print(f"translation {args.shift} px/slice (x), {args.shift / 2} (y); F = {f}; "
          f"{args.knots} knots of {knots.shape[1]}x{knots.shape[2]}; PSNR dB per interval")
    print(f"{'method':<14}{'first':>8}{'middle':>8}{'last':>8}{'first-mid':>11}{'last-mid':>10}")
    b = BORDER
    for label, name, params in runs:
        out = reconstruct(knots, create_method(name, **params), f)
        per = []
        for i in range(args.knots - 1):
            sl = np.s_[i * f + 1:(i + 1) * f, b:-b, b:-b]  # the interval's restored slices
            per.append(peak_signal_noise_ratio(gt[sl], out[sl], data_range=255))
        mid = float(np.mean(per[1:-1]))
        print(f"{label:<14}{per[0]:8.2f}{mid:8.2f}{per[-1]:8.2f}{per[0] - mid:11.2f}"
              f"{per[-1] - mid:10.2f}")
    os.system("uptime")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
