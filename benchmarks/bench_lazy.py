"""Lazy (on-demand) output vs the whole run, side by side in one run, as a ratio.

    .venv/bin/python benchmarks/bench_lazy.py [--method of-linear] [--factor 4]

On the real 20x1024x1024 VNC ssTEM stack: time to compute one output slice (a restored one in
the middle) from ``lazy_reconstruct`` vs the whole volume with ``reconstruct``, then a second
slice from another knot interval (the first read of a process includes dask's one-time
import of dask.distributed); checks that both equal the whole run's. Prints JSON with `uptime` (the machines are shared).
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
    # A second slice, in another knot interval (nothing is cached): the first read of a
    # process also pays dask's one-time import of dask.distributed (~0.25 s here), which
    # dask does on its first compute whenever distributed is installed.
    i2 = (len(stack) // 2 - 3) * args.factor + 2
    t0 = time.perf_counter()
    two = lazy_reconstruct(stack, args.method, args.factor)[i2].compute()
    t_two = time.perf_counter() - t0
    res = {"method": args.method, "factor": args.factor, "shape": list(stack.shape),
           "whole_s": round(t_whole, 2), "one_slice_s": round(t_one, 2),
           "ratio": round(t_one / t_whole, 3),
           "next_slice_s": round(t_two, 2), "next_ratio": round(t_two / t_whole, 3),
           "equal": bool(np.array_equal(one, whole[i]) and np.array_equal(two, whole[i2])),
           "cores": os.cpu_count(), "uptime_before": uptime_before,
           "uptime_after": subprocess.run(["uptime"], capture_output=True,
                                          text=True).stdout.strip()}
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
