"""Longest GUI stall of every widget's run, in a real napari viewer (issue #13: <= 0.2 s).

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python benchmarks/bench_gui_stalls.py

A 10 ms QTimer ticks on the GUI thread while each job runs; the longest gap between ticks is
how long the interface was frozen (a click or a repaint waits that long). Jobs, on the bundled
anisotropic FlyEM sample (33 x 192 x 192, z step 40 nm, x4): Reconstruct with linear,
of-cubic, of-cubic with flows, film and on demand (adding the layer; scrolling through 12
slices), Compare (linear, of-linear, film), Evaluate (self-evaluation, linear + of-linear),
Flow, Train (film, 10 s then Stop). Prints a Markdown table and the load (`uptime`): the machines are shared.

``--only reconstruct,on-demand,compare,evaluate,flow,train`` runs some of the jobs; ``--why``
samples what the GUI thread was doing during each stall.
"""
from __future__ import annotations

import collections
import gc
import subprocess
import sys
import threading
import time
import traceback

import numpy as np

TICK_MS = 10


def main():
    import napari
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from napari_zup._sample_data import anisotropic_sample

    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    data, kw, _ = anisotropic_sample()[0]
    layer = viewer.add_image(data, **kw)
    docks = {}

    def preloading():  # a widget's background imports (napari_zup._qt._common.preload)
        return any(t.name == "zup-preload" and t.is_alive() for t in threading.enumerate())

    def dock(name):
        """The dock ``name``; opening it is measured too, until the imports it starts in the
        background are done (they contend for the GIL with the GUI thread)."""
        if name not in docks:
            box = {}

            def opened():  # and its plots drawn (their first draw imports matplotlib)
                from napari_zup._qt._figure import BackgroundFigure

                w = box.get("w")
                return w is not None and not getattr(w, "preloading", False) \
                    and not preloading() \
                    and not any(f.pending or f.draws == 0
                                for f in w.findChildren(BackgroundFigure))
            measure(f"opening the {name} dock (until its background imports are done)",
                    lambda: box.setdefault(
                        "w", viewer.window.add_plugin_dock_widget("napari-zup", name)[1]),
                    opened)
            docks[name] = box["w"]
        app.processEvents()
        return docks[name]

    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(TICK_MS)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))

    main_id = threading.get_ident()
    where: collections.Counter = collections.Counter()
    others: collections.Counter = collections.Counter()
    sampling = threading.Event()

    def sampler():  # --why: what the GUI thread was doing while it missed its ticks
        while True:
            time.sleep(0.05)
            if sampling.is_set() and ticks and time.perf_counter() - ticks[-1] > 0.15:
                frame = sys._current_frames().get(main_id)
                stack = traceback.extract_stack(frame)[-12:] if frame else []
                ours = [f"{f.filename.split('site-packages/')[-1]}:{f.lineno} {f.name}"
                        for f in stack]
                where[" <- ".join(reversed(ours[-4:]))] += 1
                for ident, other in sys._current_frames().items():  # who else runs Python
                    if ident not in (main_id, threading.get_ident()):
                        f = traceback.extract_stack(other)[-1]
                        others[f"{f.filename.split('site-packages/')[-1]}:{f.lineno} "
                               f"{f.name}"] += 1

    if "--why" in sys.argv:
        threading.Thread(target=sampler, daemon=True).start()

    jobs = set(sys.argv[sys.argv.index("--only") + 1].split(",")) if "--only" in sys.argv else None

    def want(job):
        return jobs is None or job in jobs

    # Python's full (generation 2) garbage collections, whichever thread runs them: they hold
    # the GIL for their whole length (0.33-0.35 s in a napari session here), so one that falls
    # into a job is a stall of napari's, not of the job's; the table says when one did
    full_gcs: list[tuple[float, float]] = []  # (start, end), perf_counter
    gc_start = {}

    def on_gc(phase, info):
        if info.get("generation") == 2:
            if phase == "start":
                gc_start["t"] = time.perf_counter()
            elif "t" in gc_start:
                full_gcs.append((gc_start.pop("t"), time.perf_counter()))
    gc.callbacks.append(on_gc)

    def measure(label, start, done, during=None, timeout=900):
        n_before = len(gc.get_objects())  # outside the timed part: what a job leaves tracked
        where.clear()
        sampling.set()
        ticks.clear()
        timer.start()
        t0 = time.perf_counter()
        ticks.append(t0)
        start()
        while not done() and time.perf_counter() - t0 < timeout:
            if during is not None:
                during(time.perf_counter() - t0)
            app.processEvents()
            time.sleep(0.002)
        total = time.perf_counter() - t0
        app.processEvents()
        timer.stop()
        gaps = np.diff(ticks)
        k = int(np.argmax(gaps)) if len(ticks) > 1 else 0
        gap = float(gaps[k]) if len(ticks) > 1 else total
        at = ticks[k] - t0 if len(ticks) > 1 else 0.0
        g0, g1 = (ticks[k], ticks[k + 1]) if len(ticks) > 1 else (t0, t0 + total)
        in_gap = sum(max(0.0, min(b, g1) - max(a, g0)) for a, b in full_gcs)
        sampling.clear()
        grown = len(gc.get_objects()) - n_before
        rows.append((label, gap, total, in_gap, grown))
        print(f"{label}: longest stall {gap:.3f} s (from {at:.2f} s) over {total:.1f} s"
              + (f"; {in_gap:.3f} s of it a full garbage collection" if in_gap else "")
              + f"; {grown:+,d} objects tracked by the garbage collector", flush=True)
        for stack, n in where.most_common(4):
            print(f"    {n * 0.05:.2f} s in {stack}", flush=True)
        for frame, n in others.most_common(3):
            print(f"      other threads meanwhile: {n} x {frame}", flush=True)
        others.clear()

    def idle(seconds):
        t_end = time.perf_counter() + seconds
        while time.perf_counter() < t_end:
            app.processEvents()
            time.sleep(0.01)

    def clear():
        """Hide the previous job's results (and close what it computes on demand) instead of
        removing them: removing layers makes napari segfault in llvmpipe's glDrawArrays on a
        later draw, one layer at a time as well (docs/napari.md, known issue)."""
        for lay in list(viewer.layers):
            if lay is not layer:
                lay.visible = False
        app.processEvents()

    rows: list[tuple[str, float, float, float, int]] = []
    load0 = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()

    def started(widget, start):  # done = the worker's finished signal, not "not running yet"
        flag = {}

        def go():
            start()
            widget.worker.finished.connect(lambda: flag.setdefault("done", True))
        return go, lambda: "done" in flag

    if want("reconstruct"):
        rec = dock("Reconstruct")
        rec.layer_combo.set_layer(layer)
        for method, flows in (("linear", False), ("of-cubic", False), ("of-cubic", True),
                              ("film", False)):
            rec.method_combo.setCurrentText(method)
            rec.factor_spin.setValue(4)
            if rec.flow_check.isEnabled():
                rec.flow_check.setChecked(flows)
            idle(1.0)  # a user sets the dock up, then clicks Run
            box = {}
            measure(f"Reconstruct {method}" + (" + flows" if flows else ""),
                    lambda: box.setdefault("run", rec.start()),
                    lambda: box.get("run") is None or not box["run"].running)
            clear()
        rec.flow_check.setChecked(False)

    if want("on-demand"):
        # on demand: the whole layer at once, then the slider moves every 0.3 s over 12 slices
        from napari_zup._qt._on_demand import OnDemandRun

        run = OnDemandRun(viewer, layer, "of-linear", 4)
        zs = list(range(5, 125, 10))
        state = {"i": 0, "next": 0.0}

        def scroll(t):
            if state["i"] < len(zs) and t >= state["next"]:
                viewer.dims.set_point(0, zs[state["i"]] * run.layer.scale[0])
                state["i"] += 1
                state["next"] = t + 0.3

        settle = {}
        measure("Reconstruct on demand (of-linear): adding the layer (then 1 s idle)",
                lambda: (run.start(), settle.setdefault("t", time.perf_counter())),
                lambda: time.perf_counter() - settle["t"] > 1.0)
        measure("Reconstruct on demand (of-linear): scrolling 12 slices", lambda: None,
                lambda: state["i"] >= len(zs) and all(run.view.ready(z) for z in zs), scroll)
        run.cancel()
        clear()

    if want("compare"):
        cmp_ = dock("Compare")
        cmp_.layer_combo.set_layer(layer)
        cmp_.methods.set_selected(["linear", "of-linear", "film"])
        idle(1.0)  # the dock opened and laid out (the canvas resized), then Run is clicked
        measure("Compare linear, of-linear, film", cmp_.start, lambda: not cmp_.running)
        clear()
        viewer.canvas.grid.enabled = False

    if want("evaluate"):
        ev = dock("Evaluate")
        ev.layer_combo.set_layer(layer)
        ev.methods.set_selected(["linear", "of-linear"])
        idle(1.0)
        go, finished = started(ev, ev.start)
        measure(f"Evaluate ({ev.mode_combo.currentText()}) linear, of-linear", go,
                lambda: finished() and not ev.busy)  # busy: its results still being shown
        clear()

    if want("flow"):
        fl = dock("Flow")
        fl.layer_combo.set_layer(layer)
        idle(1.0)
        go, finished = started(fl, fl.compute)
        measure("Flow (default window)", go, lambda: finished() and not fl.busy)
        clear()

    if want("train"):
        import tempfile
        from pathlib import Path

        import napari_zup._qt._train as train_mod

        # the job's checkpoints go to a temporary folder, not the user's ~/.cache/napari-zup
        scratch = tempfile.TemporaryDirectory(prefix="zup-bench-train-")
        train_mod.CACHE_DIR = Path(scratch.name)
        tr = dock("Train")  # its opening starts torch's import (TRAINING_MODULES)
        tr.layer_combo.set_layer(layer)
        tr.method_combo.setCurrentText("film")
        idle(1.0)
        box = {"t0": None}

        def train_start():
            tr.start()
            box["t0"] = time.perf_counter()

        def train_during(t):
            if t > 10 and tr.status_text == "running":
                tr.stop()

        measure("Train film (10 s, then Stop)", train_start,
                lambda: tr.status_text in ("done", "stopped", "failed"), train_during)
        print(f"    training steps run: {tr.trained['step']}", flush=True)
        scratch.cleanup()

    load1 = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print("\n| job | longest GUI stall | of it a full garbage collection | job time | objects "
          "left tracked |\n|---|---|---|---|---|")
    for label, gap, total, in_gap, grown in rows:
        print(f"| {label} | {gap:.3f} s | {f'{in_gap:.3f} s' if in_gap else '-'} | "
              f"{total:.1f} s | {grown:+,d} |")
    if full_gcs:
        d = [b - a for a, b in full_gcs]
        print(f"\nfull garbage collections in the whole run: {len(d)}, "
              f"{min(d):.3f}-{max(d):.3f} s each")
    print(f"\nload before: {load0}\nload after:  {load1}")
    viewer.close()


if __name__ == "__main__":
    main()
