"""Measure the napari streaming path (needs a display, e.g. ``xvfb-run -a``)::

    xvfb-run -a -s "-screen 0 1600x1000x24" python -m napari_zup._qt.benchmark \\
        /work/shared/data/sstem_drosophila_vnc_stack1_4.6x4.6x50nm.tif --slices 5 --repeat 3

For one method and stack it times, interleaved and repeated:

- ``direct``: :func:`napari_zup.engine.iter_reconstruct` consumed in the main thread, no Qt;
- ``plain-thread``: the same loop in a ``threading.Thread`` while the Qt event loop runs;
- ``thread_worker``: the same loop as a napari ``thread_worker`` generator (what the widgets
  use), each slice yielded to the GUI thread;
- ``widget``: the Reconstruct widget in a shown viewer: Run -> first slice on screen, and
  Run -> last slice.

micro-sam#740 reported napari's thread_worker slowing computations on napari >= 0.5; the
ratio thread_worker / direct answers that for this code.
"""
from __future__ import annotations

import argparse
import os
import statistics
import threading
import time

import numpy as np


def _consume(volume, method, factor, out):
    from ..engine import iter_reconstruct

    for i, sl in iter_reconstruct(volume, method, factor):
        out[i] = sl
        yield i


def run_direct(volume, method, factor, out):
    t0 = time.perf_counter()
    for _ in _consume(volume, method, factor, out):
        pass
    return time.perf_counter() - t0


def _wait(app, done, timeout=600):
    t0 = time.perf_counter()
    while not done() and time.perf_counter() - t0 < timeout:
        app.processEvents()
        time.sleep(0.001)


def run_plain_thread(app, volume, method, factor, out):
    t0 = time.perf_counter()
    th = threading.Thread(target=lambda: [None for _ in _consume(volume, method, factor, out)])
    th.start()
    _wait(app, lambda: not th.is_alive())
    return time.perf_counter() - t0


def run_thread_worker(app, volume, method, factor, out):
    from napari.qt.threading import create_worker

    box = {}
    t0 = time.perf_counter()
    worker = create_worker(_consume, volume, method, factor, out, _start_thread=False)
    worker.yielded.connect(lambda i: box.setdefault("n", []).append(i))
    worker.finished.connect(lambda: box.setdefault("end", time.perf_counter()))
    worker.start()
    _wait(app, lambda: "end" in box)
    return box["end"] - t0


def run_widget(app, viewer, widget, layer):
    """Run -> first slice on screen, and Run -> done, through the Reconstruct widget."""
    widget.layer_combo.set_layer(layer)
    widget._prefill_factor()


    from qtpy.QtCore import QTimer

    ticks = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    t0 = time.perf_counter()
    run = widget.start()
    _wait(app, lambda: not run.running)
    total = time.perf_counter() - t0
    timer.stop()
    # longest time the GUI thread did not get to a 10 ms timer: how frozen the UI felt
    run.stats["max_gui_gap_s"] = float(np.max(np.diff([t0] + ticks))) if ticks else total
    viewer.layers.remove(run.layer)
    # Run -> the first redraw that put a computed slice in the layer (the run's own record)
    return run.stats["first_slice_s"], total, run.stats


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("path")
    p.add_argument("--method", default="of-linear")
    p.add_argument("--factor", type=float, default=None,
                   help="default: the stack's anisotropy (isotropic output)")
    p.add_argument("--slices", type=int, default=5, help="first N input slices")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)

    import napari
    from qtpy.QtWidgets import QApplication

    from .._reader import layer_data_from_volume
    from ..grid import output_length, parse_factor
    from ..io import read_volume
    from ._reconstruct import ReconstructWidget

    vol = read_volume(args.path)
    volume = np.asarray(vol.data[:args.slices])
    vol.data = volume
    factor = args.factor or round(vol.anisotropy, 3)
    f = parse_factor(factor)
    n_out = output_length(len(volume), f)
    print(f"{args.path}: {volume.shape} {volume.dtype}, {args.method} x{float(f):g} -> "
          f"{n_out} slices; cpu_count {os.cpu_count()}, load {os.getloadavg()[0]:.1f}")

    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    data, kw, _ = layer_data_from_volume(vol, name="bench")
    layer = viewer.add_image(data, **kw)
    widget = ReconstructWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Reconstruct")
    widget.method_combo.setCurrentText(args.method)
    app.processEvents()
    out = np.zeros((n_out,) + volume.shape[1:], volume.dtype)
    # warm-up (imports, OpenCV threads, first layer of its kind)
    run_direct(volume, args.method, f, out)
    run_widget(app, viewer, widget, layer)

    times: dict[str, list[float]] = {k: [] for k in
                                     ("direct", "plain-thread", "thread_worker", "widget")}
    firsts, gaps = [], []
    for r in range(args.repeat):
        times["direct"].append(run_direct(volume, args.method, f, out))
        times["plain-thread"].append(run_plain_thread(app, volume, args.method, f, out))
        times["thread_worker"].append(run_thread_worker(app, volume, args.method, f, out))
        first, total, stats = run_widget(app, viewer, widget, layer)
        firsts.append(first)
        gaps.append(stats["max_gui_gap_s"])
        times["widget"].append(total)
        print(f"repeat {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items())
              + f", widget first slice on screen {first:.2f}s, GUI stall "
              f"{gaps[-1]:.3f}s; load {os.getloadavg()[0]:.1f}")
    med = {k: statistics.median(v) for k, v in times.items()}
    print("median: " + ", ".join(f"{k} {v:.2f}s" for k, v in med.items()))
    print(f"thread_worker / direct = {med['thread_worker'] / med['direct']:.2f}, "
          f"plain-thread / direct = {med['plain-thread'] / med['direct']:.2f}, "
          f"widget / direct = {med['widget'] / med['direct']:.2f}")
    print(f"Run -> first slice on screen: median {statistics.median(firsts):.2f}s "
          f"(min {min(firsts):.2f}s, max {max(firsts):.2f}s)")
    print(f"longest GUI stall during a widget run: median {statistics.median(gaps):.3f}s "
          f"(max {max(gaps):.3f}s)")
    viewer.close()


if __name__ == "__main__":
    main()
