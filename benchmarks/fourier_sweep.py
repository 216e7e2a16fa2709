"""Drop-and-restore scores (EVALUATION.md) and the Fourier-cutoff PSNR sweep of every method.

    .venv/bin/python benchmarks/fourier_sweep.py --factor 4 \
        --extra niiv-self=niiv:/tmp/niiv_s2.safetensors --png docs/fourier_psnr_sweep.png

Scores sample2 (ground truth) at factor F with ``napari_zup.evaluation.evaluate_method`` for
linear, cubic, of-linear, of-cubic and every learned method with a shipped checkpoint (niiv,
a2i, film, tsain), plus ``--extra LABEL=METHOD:CHECKPOINT`` entries (e.g. a model
self-supervised on the decimated sample2 itself). Then sweeps the Fourier cutoff from 0.1 to
1.0 of Nyquist (``fourier_psnr``) over the restored slices and plots one line per method.
Reconstructions are cached (``--cache``) so that re-plotting is free.

``--fusion-study METHOD[:CHECKPOINT]`` restores the decimated stack's xz and yz planes once
and scores each orientation alone, their arithmetic mean and their geometric mean.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from _data import DATA, ROOT  # ../shared/data (benchmarks/_data.py)
CUTOFFS = np.round(np.arange(0.1, 1.01, 0.1), 2)


def entries(extra):
    from napari_zup.checkpoints import default_checkpoint

    out = [(m, m, None) for m in ("linear", "cubic", "of-linear", "of-cubic")]
    for m in ("niiv", "a2i", "film", "tsain"):
        if default_checkpoint(m) is not None:
            out.append((m, m, {"device": "cpu"} if m in ("niiv", "a2i") else None))
    for e in extra:
        label, _, spec = e.partition("=")
        method, _, ckpt = spec.partition(":")
        out.append((label, method, {"checkpoint": ckpt, "device": "cpu"}))
    return out


def sweep(recon, g, f):
    from napari_zup import grid
    from napari_zup.evaluation import fourier_psnr

    idx = grid.restored_output_indices(len(g[::f]), f)
    res = []
    for c in CUTOFFS:
        res.append(float(np.mean([fourier_psnr(recon[i] / 255.0, g[i] / 255.0, c) for i in idx])))
    return res


def fusion_study(g, f, spec):
    from napari_zup import grid
    from napari_zup.evaluation import slice_metrics
    from napari_zup.methods._axial_common import fuse, xz_planes, yz_planes
    from napari_zup.methods.base import create_method

    method, _, ckpt = spec.partition(":")
    obj = create_method(method, checkpoint=ckpt or None, device="cpu")
    a = g[::f].astype(np.float32) / 255.0
    n_out = grid.output_length(len(a), f)
    idx = grid.restored_output_indices(len(a), f)
    pos = idx / f
    t0 = time.perf_counter()
    xz = obj.restore_planes(xz_planes(a), pos, 1.0 / f)
    yz = obj.restore_planes(yz_planes(a), pos, 1.0 / f)
    secs = time.perf_counter() - t0
    res = {"seconds": secs, "n_out": n_out}
    for fusion in ("xz", "yz", "mean", "geometric"):
        out = np.clip(np.rint(fuse(xz, yz, fusion) * 255), 0, 255) / 255.0
        ms = [slice_metrics(out[j], g[i] / 255.0) for j, i in enumerate(idx)]
        res[fusion] = {k: float(np.mean([m[k] for m in ms])) for k in ms[0]}
        print(f"{method} fusion {fusion:<9} PSNR {res[fusion]['psnr']:.3f} "
              f"SSIM {res[fusion]['ssim']:.4f} F-PSNR {res[fusion]['fpsnr']:.3f}", flush=True)
    return res


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--factor", type=int, default=4)
    p.add_argument("--sample", default="sample2")
    p.add_argument("--extra", action="append", default=[], help="LABEL=METHOD:CHECKPOINT")
    p.add_argument("--only", default=None, help="comma list of labels to (re)compute")
    p.add_argument("--cache", default="/tmp/zup_sweep_cache")
    p.add_argument("--png", default=str(ROOT / "docs" / "fourier_psnr_sweep.png"))
    p.add_argument("--json", default=None, help="write all figures here")
    p.add_argument("--fusion-study", default=None, help="METHOD[:CHECKPOINT]")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args()

    import tifffile
    import torch

    from napari_zup.evaluation import evaluate_method

    torch.set_num_threads(args.threads)
    g = tifffile.imread(DATA / f"fibsem_flyem_medulla_10nm_{args.sample}_250.tif")
    f = args.factor
    if args.fusion_study:
        print(json.dumps(fusion_study(g, f, args.fusion_study), indent=1))
        return
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    results = {}
    only = set(args.only.split(",")) if args.only else None
    for label, method, params in entries(args.extra):
        npy, js = cache / f"{args.sample}_f{f}_{label}.npy", cache / f"{args.sample}_f{f}_{label}.json"
        if js.exists() and npy.exists() and (only is None or label not in only):
            recon, score = np.load(npy), json.loads(js.read_text())
        elif only is not None and label not in only:
            continue
        else:
            s, recon, _ = evaluate_method(g, f, method, method_params=params, keep_output=True,
                                          workers=args.workers)
            score = s.summary()
            np.save(npy, recon)
            js.write_text(json.dumps(score))
        score["sweep"] = sweep(recon, g, f)
        results[label] = score
        print(f"{label:<12} PSNR {score['psnr']:.2f} SSIM {score['ssim']:.4f} "
              f"F-PSNR {score['fpsnr']:.2f} IE {score['ie']:.2f} "
              f"s/slice {score['seconds_per_slice']:.4f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"cutoffs": CUTOFFS.tolist(), "factor": f,
                                               "sample": args.sample, "results": results},
                                              indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12.5, 4.2))
    ref = np.array(results["cubic"]["sweep"]) if "cubic" in results else None
    for label, sc in results.items():
        y = np.array(sc["sweep"])
        style = "--" if label in ("linear", "cubic", "of-linear", "of-cubic") else "-"
        axes[0].plot(CUTOFFS, y, style, marker="o", ms=3, label=label)
        if ref is not None:
            axes[1].plot(CUTOFFS, y - ref, style, marker="o", ms=3, label=label)
    axes[0].set(xlabel="Fourier cutoff (fraction of Nyquist)", ylabel="PSNR of low-passed part (dB)",
                title=f"{args.sample}, F={f}: restored slices")
    axes[1].set(xlabel="Fourier cutoff (fraction of Nyquist)", ylabel="dB over cubic",
                title="gain over cubic")
    axes[1].axhline(0, color="k", lw=0.5)
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(args.png, dpi=110)
    print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
