"""`zup reconstruct` with the C allocator as the `zup` command sets it (napari_zup._malloc:
freed memory kept for reuse) vs glibc's defaults, side by side, alternating.

Each run is a fresh process: `python -m napari_zup.cli` (console_main: tuned) or
`python -c "...cli.main()"` (defaults). Reports wall time, user/system CPU time and minor
page faults (from the child's rusage), and the ratio tuned / defaults.

    .venv/bin/python benchmarks/bench_malloc.py [--repeats 2]
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

D = Path(__file__).resolve().parents[2] / "shared" / "data"
VNC = D / "sstem_drosophila_vnc_stack1_4.6x4.6x50nm.tif"
FLYEM = D / "fibsem_flyem_medulla_10nm_sample2_250.tif"
CASES = [  # (label, input maker, method, factor)
    ("VNC 4 x 1024², film x4", lambda: tifffile.imread(VNC)[:4], "film", 4),
    ("VNC 4 x 1024², tsain x4", lambda: tifffile.imread(VNC)[:4], "tsain", 4),
    ("VNC 4 x 1024², niiv x4", lambda: tifffile.imread(VNC)[:4], "niiv", 4),
    ("VNC 4 x 1024², a2i x4", lambda: tifffile.imread(VNC)[:4], "a2i", 4),
    ("VNC 4 x 1024², of-cubic x4", lambda: tifffile.imread(VNC)[:4], "of-cubic", 4),
    ("FlyEM sample2 32 x 250², film x8", lambda: tifffile.imread(FLYEM)[::8], "film", 8),
]


def run(cmd):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"wall": wall, "user": after.ru_utime - before.ru_utime,
            "sys": after.ru_stime - before.ru_stime, "faults": after.ru_minflt - before.ru_minflt}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--cases", help="comma-separated substrings of the case labels to run")
    args = ap.parse_args()
    load0 = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    tmp = Path(tempfile.mkdtemp())
    print("| case | allocator | wall s | user s | sys s | minor faults | tuned / defaults (wall) |\n"
          "|---|---|---|---|---|---|---|")
    for label, make, method, f in CASES:
        if args.cases and not any(c in label for c in args.cases.split(",")):
            continue
        src = tmp / "in.tif"
        tifffile.imwrite(src, np.ascontiguousarray(make()))
        common = ["reconstruct", str(src), str(tmp / "out.tif"), "--method", method, "--factor",
                  str(f), "--voxel-size", "40", "10", "10", "--overwrite"]
        arms = {"tuned (zup)": [sys.executable, "-m", "napari_zup.cli", *common],
                "glibc defaults": [sys.executable, "-c", "import sys; from napari_zup.cli "
                                   "import main; sys.exit(main(sys.argv[1:]))", *common]}
        res = {k: [] for k in arms}
        for _ in range(args.repeats):
            for k, cmd in arms.items():
                res[k].append(run(cmd))
        best = {k: min(v, key=lambda r: r["wall"]) for k, v in res.items()}
        ratio = best["tuned (zup)"]["wall"] / best["glibc defaults"]["wall"]
        for k, r in best.items():
            print(f"| {label} | {k} | {r['wall']:.1f} | {r['user']:.1f} | {r['sys']:.1f} | "
                  f"{r['faults'] / 1e6:.2f} M | {f'x{ratio:.2f}' if k.startswith('tuned') else ''} |",
                  flush=True)
    load1 = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"\nbest of {args.repeats} alternated runs each\n"
          f"load before: {load0}\nload after:  {load1}")
    for p in tmp.iterdir():
        p.unlink()
    os.rmdir(tmp)


if __name__ == "__main__":
    main()
