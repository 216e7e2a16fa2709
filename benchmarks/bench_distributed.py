"""Scale-out benchmarks of napari_zup.distributed (results -> docs/scale-out.md).

    # 1. a large real-data input: sample1 (250^3, 10 nm FIB-SEM) mirrored-tiled in y/x (and z)
    .venv/bin/python benchmarks/bench_distributed.py make-input /tmp/zup_bench/in.zarr \
        --shape 250 4000 4000
    # 2. memory and throughput of one run (LocalCluster of N worker processes)
    .venv/bin/python benchmarks/bench_distributed.py run /tmp/zup_bench/in.zarr \
        /tmp/zup_bench/out.zarr --method linear --factor 2 --workers 1
    # 3. per-chunk cost of a method on real data -> estimate for a 1 TB input on N workers
    .venv/bin/python benchmarks/bench_distributed.py cost --method of-linear --factor 4

Memory: the client's and every worker's peak RSS (getrusage ru_maxrss of each process, plus
the sum of all cluster processes' RSS sampled every 0.25 s). Each prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import tifffile

ROOT = Path(__file__).resolve().parents[1]
SAMPLE1 = ROOT.parent / "shared" / "data" / "fibsem_flyem_medulla_10nm_sample1_250.tif"


def _mirror_tile(img: np.ndarray, shape) -> np.ndarray:
    """Tile a 2D image to ``shape`` with alternate tiles mirrored, so there are no seams."""
    block = np.block([[img, img[:, ::-1]], [img[::-1], img[::-1, ::-1]]])
    reps = (-(-shape[0] // block.shape[0]), -(-shape[1] // block.shape[1]))
    return np.tile(block, reps)[:shape[0], :shape[1]]


def make_input(args) -> dict:
    from napari_zup import io

    g = tifffile.imread(SAMPLE1)
    z, h, w = args.shape
    # z: go back and forth through the cube (mirrored), so neighbouring slices stay real.
    order = [i if (i // 250) % 2 == 0 else 249 - i % 250 for i in range(z)]
    order = [i % 250 for i in order]
    voxel = (float(args.z_step), 10.0, 10.0)
    t0 = time.perf_counter()
    io.write_volume(args.out, ((n, _mirror_tile(g[k], (h, w))) for n, k in enumerate(order)),
                    voxel, shape=(z, h, w), dtype=np.uint8, overwrite=True,
                    chunks=(16, 512, 512))
    size = sum(f.stat().st_size for f in Path(args.out).rglob("*") if f.is_file())
    return {"what": "make-input", "shape": [z, h, w], "nbytes": z * h * w,
            "on_disk_bytes": size, "seconds": round(time.perf_counter() - t0, 1)}


class _RssSampler(threading.Thread):
    """Peak of the summed RSS of the given processes (and their children)."""

    def __init__(self, pids, period=0.25):
        super().__init__(daemon=True)
        self.pids, self.period, self.peak, self.stop = pids, period, 0, threading.Event()

    def run(self):
        import psutil

        procs = []
        for pid in self.pids:
            try:
                p = psutil.Process(pid)
                procs += [p] + p.children(recursive=True)
            except psutil.Error:
                pass
        while not self.stop.is_set():
            total = 0
            for p in procs:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(self.period)


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run(args) -> dict:
    import logging

    from distributed import Client, LocalCluster

    from napari_zup import io
    from napari_zup.distributed import reconstruct_to_zarr

    if Path(args.out).exists():
        shutil.rmtree(args.out)
    vol = io.read_volume(args.input, lazy=True)
    cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                           dashboard_address=":0", silence_logs=logging.ERROR)
    client = Client(cluster, set_as_default=False)
    try:
        sampler = _RssSampler([os.getpid()] + [p.pid for p in
                                               __import__("psutil").Process().children()])
        sampler.start()
        params = json.loads(args.params) if args.params else None
        stats: dict = {}
        t0 = time.perf_counter()
        reconstruct_to_zarr(args.input, args.out, args.method, args.factor, method_params=params,
                            client=client, stats=stats, chunks=args.chunks)
        wall = time.perf_counter() - t0
        sampler.stop.set()
        sampler.join()
        worker_rss = client.run(_maxrss_bytes)
    finally:
        client.close()
        cluster.close()
    out_bytes = int(np.prod(stats["out_shape"]))
    size = sum(f.stat().st_size for f in Path(args.out).rglob("*") if f.is_file())
    if not args.keep:
        shutil.rmtree(args.out)
    return {
        "what": "run", "method": args.method, "factor": args.factor, "workers": args.workers,
        "input_shape": list(vol.data.shape), "input_bytes": int(np.prod(vol.data.shape)),
        "output_shape": list(stats["out_shape"]), "output_level0_bytes": out_bytes,
        "output_on_disk_bytes_all_levels": size, "chunks": list(stats["chunks"]),
        "levels": stats["levels"], "n_chunks": stats["total_chunks"],
        "wall_s": round(wall, 1), "level0_GB_per_s": round(out_bytes / wall / 1e9, 3),
        "task_seconds": {k: round(stats[k], 1) for k in ("read", "compute", "write", "cpu")},
        "task_seconds_by_level": {lv: {k: round(v, 1) for k, v in d.items()}
                                  for lv, d in stats["by_level"].items()},
        "client_peak_rss_MB": round(_maxrss_bytes() / 1e6),
        "worker_peak_rss_MB": sorted(round(v / 1e6) for v in worker_rss.values()),
        "cluster_sum_rss_peak_MB": round(sampler.peak / 1e6),
        "load_avg_1min_end": os.getloadavg()[0],
    }


def cost(args) -> dict:
    """Measured per-chunk cost of ``method`` on a real-data input, and the estimate for a
    1 TB uint8 input on N workers."""
    import logging

    from distributed import Client, LocalCluster

    from napari_zup import grid, io
    from napari_zup.distributed import reconstruct_to_zarr

    base = Path(args.tmp)
    base.mkdir(parents=True, exist_ok=True)
    inp, out = base / "cost_in.zarr", base / "cost_out.zarr"
    g = tifffile.imread(SAMPLE1)
    z, h, w = args.shape
    stack = np.stack([_mirror_tile(g[(k * 4) % 250], (h, w)) for k in range(z)])  # 40 nm z
    io.write_volume(inp, stack, (40.0, 10.0, 10.0), overwrite=True, chunks=(16, 512, 512))
    if out.exists():
        shutil.rmtree(out)
    cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                           dashboard_address=":0", silence_logs=logging.ERROR)
    client = Client(cluster, set_as_default=False)
    stats: dict = {}
    try:
        t0 = time.perf_counter()
        reconstruct_to_zarr(inp, out, args.method, args.factor, client=client, stats=stats,
                            levels=1)
        wall = time.perf_counter() - t0
    finally:
        client.close()
        cluster.close()
    shutil.rmtree(out)
    shutil.rmtree(inp)
    n_out = grid.output_length(z, args.factor)
    out_vox = n_out * h * w
    s_per_chunk = stats["level0_compute"] / stats["level0_chunks"]
    cpu_per_chunk = stats["level0_cpu"] / stats["level0_chunks"]
    # CPU seconds (process_time of the worker during the task), not wall: on a shared,
    # oversubscribed machine the wall time of a task includes waiting for a core.
    core_s_per_in_gb = stats["level0_cpu"] / (z * h * w / 1e9)
    # Flow cost grows with the area read (tile + halo). Chunks of this small input touch the
    # volume's edges (halo on one side only); inside a large volume every chunk reads the full
    # halo on all sides, so scale the measured cost by the ratio of read areas.
    from napari_zup.engine import read_window
    from napari_zup.methods.base import create_method

    m = create_method(args.method)
    halo, min_tile = m.halo(), m.min_tile()
    cz, cy, cx = stats["chunks"]
    areas = [(y1 - y0) * (x1 - x0)
             for y in range(0, h, cy) for x in range(0, w, cx)
             for y0, y1 in [read_window(slice(y, min(y + cy, h)), halo, min_tile, h)]
             for x0, x1 in [read_window(slice(x, min(x + cx, w)), halo, min_tile, w)]]
    measured_area = float(np.mean(areas))
    est = {}
    for edge in (1024, 2048):
        interior_area = (edge + 2 * halo) ** 2
        # per output slice and tile (the last z-chunk here holds a single knot slice)
        cpu_chunk = stats["level0_cpu"] / (n_out * len(areas)) * cz * interior_area / measured_area
        n_chunks = 1e12 * args.factor / (cz * edge * edge)  # 1 TB uint8 in = 1e12 voxels
        core_h = n_chunks * cpu_chunk / 3600
        est[f"chunks_{cz}x{edge}x{edge}"] = {
            "cpu_s_per_chunk": round(cpu_chunk, 2), "n_chunks": int(n_chunks),
            "core_hours": round(core_h),
            **{f"hours_on_{n}_workers": round(core_h / n, 1) for n in (16, 64, 256)}}
    return {
        "what": "cost", "method": args.method, "factor": args.factor,
        "input_shape": [z, h, w], "output_voxels": out_vox, "chunks": list(stats["chunks"]),
        "level0_chunks": stats["level0_chunks"], "wall_s": round(wall, 1),
        "seconds_per_chunk": round(s_per_chunk, 2),
        "cpu_seconds_per_chunk": round(cpu_per_chunk, 2),
        "task_seconds": {k: round(stats[k], 1) for k in ("read", "compute", "write", "cpu")},
        "core_seconds_per_input_GB_measured": round(core_s_per_in_gb, 0),
        "halo": halo, "mean_read_area_measured": round(measured_area),
        "estimate_1TB_input": est,
        "load_avg_1min_end": os.getloadavg()[0],
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("make-input")
    a.add_argument("out")
    a.add_argument("--shape", type=int, nargs=3, default=(250, 4000, 4000))
    a.add_argument("--z-step", type=float, default=20.0)
    b = sub.add_parser("run")
    b.add_argument("input")
    b.add_argument("out")
    b.add_argument("--method", default="linear")
    b.add_argument("--factor", default="2")
    b.add_argument("--params", default=None, help="method parameters as JSON")
    b.add_argument("--workers", type=int, default=2)
    b.add_argument("--chunks", type=int, nargs=3, default=None)
    b.add_argument("--keep", action="store_true")
    c = sub.add_parser("cost")
    c.add_argument("--method", default="of-linear")
    c.add_argument("--factor", type=int, default=4)
    c.add_argument("--shape", type=int, nargs=3, default=(9, 2048, 2048))
    c.add_argument("--workers", type=int, default=2)
    c.add_argument("--tmp", default="/tmp/zup_bench")
    args = ap.parse_args(argv)
    result = {"make-input": make_input, "run": run, "cost": cost}[args.cmd](args)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    sys.exit(main())
