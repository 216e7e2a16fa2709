"""Experiment (issue #11): what film gains at inference time alone, with no training.

Two zero-training variants on sample2 (../shared/EVALUATION.md drop-and-restore, the scoring
of benchmarks/ensemble.py):
- recursive: x8 as x2 three times (or x2 then x4, x4 then x2), x4 as x2 twice: each step
  interpolates half-way between slices half as far apart (FILM's recursive mid-points);
- test-time augmentation: film on flipped / transposed / z-reversed copies of the stack, the
  results flipped back and averaged with the plain result (2 to 5 passes).

    .venv/bin/python benchmarks/film_inference_variants.py [--factors 4,8]
"""
from __future__ import annotations

import argparse
import subprocess
import time

import numpy as np
import tifffile

from ensemble import DATA, decimate, score
from napari_zup.engine import reconstruct

#: (name, forward transform, inverse transform) of (z, y, x) arrays
TRANSFORMS = {
    "flip x": (lambda a: a[:, :, ::-1], lambda o: o[:, :, ::-1]),
    "flip y": (lambda a: a[:, ::-1], lambda o: o[:, ::-1]),
    "transpose y/x": (lambda a: a.transpose(0, 2, 1), lambda o: o.transpose(0, 2, 1)),
    "reverse z": (lambda a: a[::-1], lambda o: o[::-1]),
}


def film(a, f):
    return reconstruct(np.ascontiguousarray(a), "film", f).astype(np.float32)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DATA / "fibsem_flyem_medulla_10nm_sample2_250.tif"))
    ap.add_argument("--factors", default="4,8")
    args = ap.parse_args(argv)
    load0 = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    g = tifffile.imread(args.data)
    print("| F | variant | passes | PSNR dB / SSIM | gain over film | s |\n|---|---|---|---|---|---|")
    for f in [int(x) for x in args.factors.split(",")]:
        a = decimate(g, f)
        truth = g[: (a.shape[0] - 1) * f + 1]
        t0 = time.perf_counter()
        plain = film(a, f)
        t_plain = time.perf_counter() - t0
        base = score(plain, truth, f)
        rows = [("film", 1, base, t_plain)]
        steps = {4: [(2, 2)], 8: [(2, 2, 2), (2, 4), (4, 2)]}.get(f, [])
        for chain in steps:
            t0 = time.perf_counter()
            r = a
            for s in chain:
                r = film(r, s)
            rows.append((f"recursive {' then '.join(f'x{s}' for s in chain)}", len(chain),
                         score(r, truth, f), time.perf_counter() - t0))
        outs = {}
        for name, (fwd, inv) in TRANSFORMS.items():
            t0 = time.perf_counter()
            outs[name] = np.ascontiguousarray(inv(film(fwd(a), f)))
            outs[name + " s"] = time.perf_counter() - t0
        for name in TRANSFORMS:
            rows.append((f"mean of film and film on the stack {name}", 2,
                         score((plain + outs[name]) / 2, truth, f), t_plain + outs[name + " s"]))
        flips = ["flip x", "flip y", "transpose y/x"]
        rows.append(("mean of film and the 3 y/x flips", 4,
                     score((plain + sum(outs[n] for n in flips)) / 4, truth, f),
                     t_plain + sum(outs[n + " s"] for n in flips)))
        rows.append(("mean of film and all 4", 5,
                     score((plain + sum(outs[n] for n in TRANSFORMS)) / 5, truth, f),
                     t_plain + sum(outs[n + " s"] for n in TRANSFORMS)))
        for name, passes, (p, s), secs in rows:
            print(f"| {f} | {name} | {passes} | {p:.2f} / {s:.4f} | {p - base[0]:+.2f} | "
                  f"{secs:.0f} |", flush=True)
    load1 = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"\nload before: {load0}\nload after:  {load1}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
