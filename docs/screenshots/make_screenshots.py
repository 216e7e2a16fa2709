"""Real screenshots of the napari-zup widgets (a real napari window under Xvfb)::

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/screenshots/make_screenshots.py

Writes reconstruct.png, reconstruct_streaming.png, reconstruct_cluster.png,
reconstruct_auto.png, compare.png,
evaluate.png, evaluate_side_by_side.png and flow.png next to this script, all on the FIB-SEM
sample shipped with the plugin (Compare with film, Evaluate as self-evaluation on the
anisotropic sample).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication

HERE = Path(__file__).resolve().parent


def pump(seconds=0.3):
    app = QApplication.instance()
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        app.processEvents()
        time.sleep(0.01)


def wait(cond, timeout=300):
    app = QApplication.instance()
    t0 = time.perf_counter()
    while not cond():
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError("widget did not finish")
        app.processEvents()
        time.sleep(0.01)


def new_viewer(samples=("anisotropic",)):
    viewer = napari.Viewer(title="napari-zup")
    viewer.window._qt_window.resize(1600, 1000)
    viewer.window._qt_window.move(0, 0)
    for s in samples:
        viewer.open_sample("napari-zup", s)
    return viewer


def dock(viewer, name):
    widget = viewer.window.add_plugin_dock_widget("napari-zup", name)[1]
    pump()
    return widget


def shot(viewer, name):
    pump(0.8)
    path = HERE / name
    viewer.screenshot(str(path), canvas_only=False)
    print("wrote", path)


def reconstruct():
    viewer = new_viewer()
    w = dock(viewer, "Reconstruct")
    w.method_combo.setCurrentText("of-linear")
    w.flow_check.setChecked(True)
    w.vector_step.setValue(12)
    run = w.start()
    wait(lambda: not run.running)
    run.vectors_layer.length = 3.0
    viewer.layers[0].visible = False
    viewer.dims.set_point(0, 10.0 * 42)  # a restored slice (42 = 4 * 10 + 2)
    viewer.reset_view()
    shot(viewer, "reconstruct.png")
    viewer.close()


def compare():
    viewer = new_viewer()
    w = dock(viewer, "Compare")
    w.methods.set_selected(["linear", "of-cubic", "film"])
    w.start()
    wait(lambda: not w.running, timeout=900)
    w.view_buttons["xz"].click()
    viewer.dims.set_point(1, 10.0 * 96)
    pump()
    viewer.reset_view()
    shot(viewer, "compare.png")
    viewer.close()


def evaluate():
    """Self-evaluation on the anisotropic sample (the default for an anisotropic layer)."""
    viewer = new_viewer()
    w = dock(viewer, "Evaluate")
    w.methods.set_selected(["linear", "cubic", "of-linear", "of-cubic", "film"])
    w.start()
    wait(lambda: not w.busy, timeout=900)  # computed and shown
    pump()
    w.map_combo.setCurrentText("linear")
    viewer.dims.set_point(0, 40.0 * 15)  # a restored section (odd index)
    viewer.reset_view()
    shot(viewer, "evaluate.png")
    w.side_button.click()
    viewer.reset_view()
    shot(viewer, "evaluate_side_by_side.png")
    viewer.close()


def flow():
    viewer = new_viewer()
    w = dock(viewer, "Flow")
    viewer.dims.set_point(0, 40.0 * 12)
    w.compute()  # default grid, length and window: chosen from the image and the flow
    wait(lambda: w.last_stats.get("pairs") == [12])
    pump()
    viewer.reset_view()
    shot(viewer, "flow.png")
    viewer.close()


def auto():
    """Reconstruct with "auto": the self-evaluation table and the choice in the dock."""
    viewer = new_viewer()
    w = dock(viewer, "Reconstruct")
    w.method_combo.setCurrentText("auto")
    w.follow_check.setChecked(False)
    w.start()
    wait(lambda: w.choice is not None and w.run is not None and not w.run.running,
         timeout=900)
    viewer.layers[0].visible = False
    viewer.dims.set_point(0, 10.0 * 62)
    viewer.reset_view()
    shot(viewer, "reconstruct_auto.png")
    viewer.close()


def streaming():
    """Mid-run: the output layer is partly filled (side view shows the filled part)."""
    viewer = new_viewer()
    w = dock(viewer, "Reconstruct")
    w.method_combo.setCurrentText("of-cubic")
    w.follow_check.setChecked(False)
    import threading

    from napari_zup._qt._run import StreamingRun

    gate = threading.Event()
    job = StreamingRun._job

    def held_job(self):  # the worker waits after 50 slices, as if the method were slower
        it = job(self)
        n = 0
        while True:
            try:
                item = next(it)
            except StopIteration as stop:
                return stop.value
            yield item
            n += 1
            if n == 50:
                gate.wait()

    StreamingRun._job = held_job
    run = w.start()
    wait(lambda: run.progress.done >= 50)
    pump(0.5)
    from napari_zup._qt._compare import set_orientation

    viewer.canvas.grid.enabled = True  # input (left) and the half-filled output (right)
    viewer.canvas.background_color_override = "#3b3f4a"  # so the empty part shows as black
    set_orientation(viewer, "xz")
    viewer.dims.set_point(1, 10.0 * 96)
    run._refresh()
    viewer.reset_view()
    shot(viewer, "reconstruct_streaming.png")
    run.cancel()
    gate.set()
    StreamingRun._job = job
    wait(lambda: not run.running)
    viewer.close()


def cluster():
    """Mid-run on a local dask cluster: the OME-Zarr store fills in, chunk by chunk."""
    import tempfile
    import threading

    import napari_zup.distributed.client  # noqa: F401  (distributed.client below)
    from napari_zup import distributed
    from napari_zup._qt._cluster_run import ClusterRun
    from napari_zup._qt._compare import set_orientation
    from napari_zup._qt._reconstruct import ENGINE_LOCAL

    viewer = new_viewer()
    w = dock(viewer, "Reconstruct")
    w.method_combo.setCurrentText("of-linear")
    w.engine_combo.setCurrentText(ENGINE_LOCAL)
    w.workers_spin.setValue(2)
    w.output_edit.setText(str(Path(tempfile.mkdtemp()) / "FIB-SEM aniso.of-linear-x4.zarr"))
    gate = threading.Event()
    distributed.client.MIN_IN_FLIGHT = 1  # at most 4 x threads chunks in flight: hold it half-way
    original = ClusterRun._events

    def held(self):  # the client waits after 3 chunks, as if the cluster were busy
        events = original(self)
        try:
            for event in events:
                yield event
                if event.done == 3:
                    gate.wait()
        finally:
            events.close()

    ClusterRun._events = held
    run = w.start()
    wait(lambda: run.layer is not None and run.done >= 3)
    pump(1.0)
    viewer.canvas.grid.enabled = True
    viewer.canvas.background_color_override = "#3b3f4a"
    set_orientation(viewer, "xz")
    viewer.dims.set_point(1, 10.0 * 96)
    run._refresh()
    viewer.reset_view()
    shot(viewer, "reconstruct_cluster.png")
    run.cancel()
    gate.set()
    ClusterRun._events = original
    wait(lambda: not run.running)
    viewer.close()


if __name__ == "__main__":
    todo = sys.argv[1:] or ["reconstruct", "streaming", "compare", "evaluate", "flow", "auto"]
    for name in todo:
        globals()[name]()
