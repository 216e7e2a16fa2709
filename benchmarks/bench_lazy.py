"""Lazy (on-demand) output vs the whole run, side by side in one run, as a ratio.

    .venv/bin/python benchmarks/bench_lazy.py [--method of-linear] [--factor 4]

On the real 20x1024x1024 VNC ssTEM stack: time to compute one output slice (a restored one in
the middle) from ``lazy_reconstruct`` vs the whole volume with ``reconstruct``; checks that
the slice equals the whole run's. Prints JSON with `uptime` (the machines are shared).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import tifffile

from napari_zup import reconstruct
from napari_zup.lazy import lazy_reconstruct

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
VNC = DATA / "sstem_drosophila_vnc_stack1_4.6x4.6x50nm.tif"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", default="of-linear")
    ap.add_argument("--factor", type=int, default=4)
    args = ap.parse_args()
    stack = tifffile.imread(VNC)
    uptime_before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    t0 = time.perf_counter()
    whole = reconstruct(stack, args.method, args.factor)
    t_whole = time.perf_counter() - t0
    i = (len(stack) // 2) * args.factor + 1
    t0 = time.perf_counter()
    one = lazy_reconstruct(stack, args.method, args.factor)[i].compute()
    t_one = time.perf_counter() - t0
    res = {"method": args.method, "factor": args.factor, "shape": list(stack.shape),
           "whole_s": round(t_whole, 2), "one_slice_s": round(t_one, 2),
           "ratio": round(t_one / t_whole, 3), "equal": bool(np.array_equal(one, whole[i])),
           "cores": os.cpu_count(), "uptime_before": uptime_before,
           "uptime_after": subprocess.run(["uptime"], capture_output=True,
                                          text=True).stdout.strip()}
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
