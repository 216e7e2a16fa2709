"""Learned inference speed: seconds per restored 512x512 slice (results -> docs/benchmarks.md).

    .venv/bin/python benchmarks/bench_learned.py [--ref REV] [--knots 8] [--repeats 2]
                                                  [--methods niiv,a2i,film,tsain]
                                                  [--keep-freed-memory]

Renders every non-knot slice at F = 4 of a block of ``--knots`` 512x512 sections of the real
VNC ssTEM stack (../shared/data, read only) with each learned method's shipped checkpoint on
the CPU, the way the engine calls a method for one slab and one tile (``Method.render``, so
start-up and I/O are not counted), and divides by the number of restored slices.

``--ref-checkpoint FILE``: the same, with today's code and another checkpoint as "before".

``--ref REV``: also time the method *as it was at git revision REV* (its module's source is
read with ``git show`` and run against the same checkpoint), interleaved with today's code in
one run (before, after, before, after, ...), so machine load hits both alike; prints the
ratio of the best times and the max |difference| of their uint8 outputs. Without ``--ref``
only today's code is timed. Prints ``uptime`` before and after: on a shared machine the
absolute seconds mean little, the ratio is the figure.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import types

import numpy as np
import tifffile

from _data import DATA, ROOT  # ../shared/data (benchmarks/_data.py)
VNC = DATA / "sstem_drosophila_vnc_stack1_4.6x4.6x50nm.tif"
FACTOR = 4


def old_method_class(name: str, rev: str):
    """The Method class of ``methods/<name>.py`` as it was at git revision ``rev``."""
    src = subprocess.run(["git", "show", f"{rev}:src/napari_zup/methods/{name}.py"], cwd=ROOT,
                         check=True, capture_output=True, text=True).stdout
    mod = types.ModuleType(f"napari_zup.methods._bench_ref_{name}")
    mod.__package__ = "napari_zup.methods"
    sys.modules[mod.__name__] = mod
    exec(compile(src, f"{rev}:{name}.py", "exec"), mod.__dict__)
    return next(v for v in vars(mod).values()
                if isinstance(v, type) and getattr(getattr(v, "info", None), "name", None) == name
                and v.__module__ == mod.__name__)


def render_all(method, block):
    """Every non-knot slice at F = 4 in one ``render`` call (positions in knot units)."""
    n = block.shape[0]
    positions = [k + j / FACTOR for k in range(n - 1) for j in range(1, FACTOR)]
    t0 = time.perf_counter()
    out = method.render(block, positions, value_range=(0.0, 255.0)).slices
    return time.perf_counter() - t0, out, len(positions)


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", help="git revision to compare with (before), interleaved")
    ap.add_argument("--knots", type=int, default=8, help="sections in the block (default 8)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--methods", default="niiv,a2i,film,tsain")
    ap.add_argument("--size", type=int, default=512, help="slice edge in pixels (default 512)")
    ap.add_argument("--ref-checkpoint", metavar="FILE",
                    help="'before' = today's code with this checkpoint (one method), e.g. "
                         "a 2-knot film against the shipped 4-knot one")
    ap.add_argument("--keep-freed-memory", action="store_true",
                    help="the C allocator as the `zup` command sets it (napari_zup._malloc)")
    args = ap.parse_args(argv)
    if args.keep_freed_memory:
        from napari_zup._malloc import keep_freed_memory

        assert keep_freed_memory()

    import torch

    from napari_zup.methods.base import create_method

    s = args.size
    block = tifffile.imread(VNC)[:args.knots, 256:256 + s, 256:256 + s]
    print(f"# {uptime()}")
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cpus;"
          f" block {block.shape} of {VNC.name}, F = {FACTOR}, best of {args.repeats}")
    scale = (512 * 512) / (s * s)
    for name in args.methods.split(","):
        variants = {"after": create_method(name, device="cpu")}
        if args.ref:
            variants = {"before": old_method_class(name, args.ref)(device="cpu"), **variants}
        elif args.ref_checkpoint:
            variants = {"before": create_method(name, checkpoint=args.ref_checkpoint,
                                                device="cpu"), **variants}
        for m in variants.values():  # warm-up: first-call allocations and kernel choice
            render_all(m, block[:3, :64, :64])
        best = {k: float("inf") for k in variants}
        outs = {}
        for _ in range(args.repeats):
            for key, m in variants.items():
                dt, out, count = render_all(m, block)
                best[key] = min(best[key], dt / count * scale)
                outs[key] = out
        line = f"{name:6s} after {best['after']:.2f} s/slice"
        if args.ref or args.ref_checkpoint:
            diff = int(np.abs(outs["before"].astype(int) - outs["after"].astype(int)).max())
            ratio = best["before"] / best["after"]
            line += (f"  before {best['before']:.2f} s/slice  speed-up x{ratio:.2f}"
                     f"  max|after-before| {diff} grey levels")
        print(line, flush=True)
    print(f"# {uptime()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
