"""What averaging the learned interpolators is worth (issue #11: "an ensemble with them").

Drop-and-restore on a ground-truth cube (../shared/EVALUATION.md): every method restores
G[::F]; each ensemble is the mean of its members' float outputs, rounded to the input dtype
like any method's output, and scored on the restored slices exactly as ``zup evaluate`` does.

    .venv/bin/python benchmarks/ensemble.py --factors 2,4,8 --save /tmp/ens
"""
from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import tifffile

from napari_zup import grid
from napari_zup.engine import reconstruct
from napari_zup.evaluation import decimate, slice_metrics, unit_scale

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def score(out: np.ndarray, truth: np.ndarray, factor: int) -> tuple[float, float]:
    """Mean (PSNR, SSIM) of the restored slices of ``out`` against ``truth`` (the protocol's
    scaling and metrics; also used by axial_refine.py)."""
    lo, span = unit_scale(truth)
    idx = grid.restored_output_indices((out.shape[0] - 1) // factor + 1, factor)
    m = [slice_metrics((out[i].astype(np.float64) - lo) / span,
                       (truth[i].astype(np.float64) - lo) / span) for i in idx]
    return float(np.mean([x["psnr"] for x in m])), float(np.mean([x["ssim"] for x in m]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DATA / "fibsem_flyem_medulla_10nm_sample2_250.tif"))
    ap.add_argument("--factors", default="2,4,8")
    ap.add_argument("--methods", default="cubic,of-cubic,film,tsain,niiv,a2i")
    ap.add_argument("--members", default="film,tsain,niiv,a2i",
                    help="methods whose means (every pair, triple, ...) are scored")
    ap.add_argument("--save", default=None, help="folder for the restored volumes (.npy)")
    args = ap.parse_args(argv)
    g = tifffile.imread(args.data)
    methods = args.methods.split(",")
    members = args.members.split(",")
    rows = {}
    for f in [int(x) for x in args.factors.split(",")]:
        a = decimate(g, f)
        truth = g[: (a.shape[0] - 1) * f + 1]
        outs, secs = {}, {}
        for m in methods:
            t0 = time.perf_counter()
            outs[m] = reconstruct(a, m, f)
            secs[m] = time.perf_counter() - t0
            if args.save:
                np.save(Path(args.save) / f"{m}_x{f}.npy", outs[m])
        res = {m: score(outs[m], truth, f) for m in methods}
        for k in range(2, len(members) + 1):
            for combo in itertools.combinations(members, k):
                mean = np.mean([outs[m].astype(np.float32) for m in combo], axis=0)
                info = np.iinfo(g.dtype) if g.dtype.kind in "ui" else None
                mean = np.clip(np.rint(mean), info.min, info.max).astype(g.dtype) if info else mean
                res["+".join(combo)] = score(mean, truth, f)
        rows[f] = {"scores": res, "seconds": secs}
        print(f"F = {f}  (seconds per method: " + ", ".join(f"{m} {s:.0f}" for m, s in secs.items()) + ")")
        for name, (p, s) in sorted(res.items(), key=lambda kv: -kv[1][0]):
            print(f"  {name:24s} {p:6.2f} dB  {s:.4f}")
    print(json.dumps({f: r["scores"] for f, r in rows.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
