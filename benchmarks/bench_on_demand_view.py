"""First view of a slice of a large OME-Zarr in napari, on demand (issue #15 item 3: < 1 s).

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python benchmarks/bench_on_demand_view.py

Writes a sparse OME-Zarr larger than this machine's memory (1024 x 1024 sections, depth
1.2 x RAM / 1 MiB; only the knots that are looked at are written, with real sections of the
VNC ssTEM stack, the rest reads as 0), opens it with napari-zup's reader in a real viewer,
adds the of-linear x4 on-demand layer and moves the slider to output slices near the start,
the middle and the end. For each: seconds from the slider move until the slice is computed
and drawn. Prints JSON with `uptime` (the machines are shared).
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import tifffile

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
VNC = DATA / "sstem_drosophila_vnc_stack1_4.6x4.6x50nm.tif"
EDGE = 1024
FACTOR = 4


def write_sparse_ome_zarr(path: Path, depth: int, knots: list[int], sections) -> None:
    import zarr

    from napari_zup.io import ome_zarr_attrs

    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    root.attrs.update(ome_zarr_attrs((depth, EDGE, EDGE), (50.0, 4.6, 4.6), "nm"))
    arr = root.create_array("0", shape=(depth, EDGE, EDGE), chunks=(1, 512, 512),
                            dtype="uint8", fill_value=0, compressors=None)
    for n, k in enumerate(knots):
        arr[k:k + 2] = sections[2 * n % (len(sections) - 1):][:2]


def main():
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_zup._qt._on_demand import OnDemandRun

    depth = int(1.2 * psutil.virtual_memory().total / EDGE**2)
    knots = [5, depth // 2, depth - 8]
    sections = tifffile.imread(VNC)
    uptime0 = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        path = Path(tmp) / "large.ome.zarr"
        write_sparse_ome_zarr(path, depth, knots, sections)
        viewer = napari.Viewer(show=True)
        app = QApplication.instance()
        t0 = time.perf_counter()
        layer, = viewer.open(str(path), plugin="napari-zup")
        t_open = time.perf_counter() - t0
        t0 = time.perf_counter()
        run = OnDemandRun(viewer, layer, "of-linear", FACTOR).start()
        t_layer = time.perf_counter() - t0
        for _ in range(20):
            app.processEvents()
            time.sleep(0.01)
        views = []
        for k in knots:
            z = FACTOR * k + 2
            t0 = time.perf_counter()
            viewer.dims.set_point(0, z * run.layer.scale[0])
            app.processEvents()
            while not run.view.ready(z) and time.perf_counter() - t0 < 60:
                app.processEvents()
                time.sleep(0.002)
            while run._timer.isActive():  # the coalesced refresh that draws it
                app.processEvents()
                time.sleep(0.002)
            app.processEvents()
            t_view = time.perf_counter() - t0
            shown = np.asarray(run.view[z])
            views.append({"output_slice": z, "first_view_s": round(t_view, 3),
                          "computed": bool(run.view.ready(z)), "nonzero": bool(shown.any())})
        viewer.close()
    res = {"input_shape": [depth, EDGE, EDGE],
           "input_gb": round(depth * EDGE * EDGE / 1e9, 1),
           "ram_gb": round(psutil.virtual_memory().total / 1e9, 1), "method": "of-linear",
           "factor": FACTOR, "open_s": round(t_open, 3), "add_layer_s": round(t_layer, 3),
           "views": views, "uptime_before": uptime0,
           "uptime_after": subprocess.run(["uptime"], capture_output=True,
                                          text=True).stdout.strip()}
    print(json.dumps(res, indent=2))
    return 0 if all(v["computed"] for v in views) else 1


if __name__ == "__main__":
    sys.exit(main())
