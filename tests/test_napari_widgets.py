"""The napari widgets in a real viewer (pytest-qt under Xvfb), on the real FIB-SEM sample.

Classical and optical-flow methods only, small stacks: the whole file runs in well under two
minutes on two cores.
"""
import numpy as np
import pytest

from napari_zup import grid
from napari_zup._sample_data import anisotropic_sample, isotropic_sample
from napari_zup.engine import reconstruct
from napari_zup.evaluation import evaluate_method

pytestmark = pytest.mark.gui

TIMEOUT_MS = 60_000


@pytest.fixture
def hold_after(monkeypatch):
    """``gate = hold_after(n)``: every streaming run's worker waits after ``n`` slices until
    ``gate.set()`` (as if the method were slow), so mid-run states are checked without racing
    the computation."""
    import threading

    from napari_zup._qt._run import StreamingRun

    job = StreamingRun._job
    gates = []

    def install(n):
        gate = threading.Event()
        gates.append(gate)

        def held_job(self):
            it = job(self)
            k = 0
            while True:
                try:
                    item = next(it)
                except StopIteration as stop:
                    return stop.value
                yield item
                k += 1
                if k == n:
                    gate.wait(TIMEOUT_MS / 1000)

        monkeypatch.setattr(StreamingRun, "_job", held_job)
        return gate

    yield install
    for g in gates:
        g.set()


def _wait_done(qtbot, run):
    qtbot.waitUntil(lambda: not run.running, timeout=TIMEOUT_MS)


def test_reconstruct_adds_a_streamed_layer_with_the_right_scale(qtbot, viewer_with_sample):
    from napari_zup._qt import ReconstructWidget

    viewer, layer = viewer_with_sample
    before = layer.data.copy()
    w = ReconstructWidget(viewer)
    assert w.layer_combo.layer() is layer
    assert w.factor_spin.value() == pytest.approx(4.0)  # z step 40 nm / pixel 10 nm
    w.method_combo.setCurrentText("linear")
    run = w.start()
    assert run.layer in viewer.layers  # the output layer exists at once
    _wait_done(qtbot, run)
    out = run.layer
    assert run.status == "done"
    assert out.data.shape == (129, 192, 192)
    assert tuple(out.scale) == pytest.approx((10.0, 10.0, 10.0))
    assert tuple(out.translate) == pytest.approx(tuple(layer.translate))
    assert out.name == f"{layer.name} · linear ×4"
    np.testing.assert_array_equal(out.data, reconstruct(before, "linear", 4))
    assert out.metadata["zup"]["status"] == "done" and not out.metadata["zup"]["partial"]
    assert 0 < run.stats["first_slice_s"] <= run.stats["total_s"]  # a fast run too
    assert "129 slices in" in w.status.text() and "nan" not in w.status.text()
    np.testing.assert_array_equal(layer.data, before)  # the input is never modified
    # running again adds a second layer with a unique name
    run2 = w.start()
    _wait_done(qtbot, run2)
    assert run2.layer is not out and run2.layer.name != out.name
    assert out in viewer.layers


def test_partial_layer_is_visible_before_the_run_ends(qtbot, viewer_with_sample, hold_after):
    from napari_zup._qt import ReconstructWidget

    gate = hold_after(20)
    viewer, layer = viewer_with_sample
    w = ReconstructWidget(viewer)
    w.method_combo.setCurrentText("of-linear")
    run = w.start()
    qtbot.waitUntil(lambda: run.progress.done >= 20, timeout=TIMEOUT_MS)
    qtbot.wait(300)
    assert run.running and run.progress.done == 20 < run.out_shape[0]
    assert run.layer in viewer.layers and run.layer.visible
    assert run.layer.metadata["zup"]["status"] == "running"
    assert run.layer.metadata["zup"]["slices_done"] == 20  # the layer was redrawn meanwhile
    filled = [i for i in range(run.out_shape[0]) if run.layer.data[i].any()]
    assert filled == list(range(20))  # slices 0..19 are on screen, the rest is still empty
    np.testing.assert_array_equal(run.layer.data[0], layer.data[0])
    assert not w.run_button.isEnabled() and w.cancel_button.isEnabled()
    gate.set()
    _wait_done(qtbot, run)
    assert run.status == "done" and run.layer.data[-1].any()


def test_cancel_stops_and_marks_the_layer_partial(qtbot, viewer_with_sample, notes,
                                                  hold_after):
    from napari_zup._qt import ReconstructWidget

    gate = hold_after(10)
    viewer, layer = viewer_with_sample
    w = ReconstructWidget(viewer)
    w.method_combo.setCurrentText("of-cubic")
    run = w.start()
    qtbot.waitUntil(lambda: run.progress.done >= 10, timeout=TIMEOUT_MS)
    w.cancel_button.click()
    gate.set()
    _wait_done(qtbot, run)
    assert run.status == "cancelled"
    assert run.progress.done < run.out_shape[0]
    assert run.layer.name.endswith("(partial)")
    meta = run.layer.metadata["zup"]
    assert meta["partial"] and meta["status"] == "cancelled"
    assert meta["slices_done"] == run.progress.done
    assert w.run_button.isEnabled() and not w.cancel_button.isEnabled()
    assert any("cancelled" in m for m in notes)


@pytest.mark.parametrize("kind", ["2d", "rgb", "4d", "one-slice"])
def test_bad_layers_are_refused_with_a_reason(make_napari_viewer, notes, kind):
    from napari_zup._qt import ReconstructWidget

    viewer = make_napari_viewer()
    data = anisotropic_sample()[0][0]
    layer = {
        "2d": lambda: viewer.add_image(data[0]),
        "rgb": lambda: viewer.add_image(np.stack([data[:4]] * 3, -1), rgb=True),
        "4d": lambda: viewer.add_image(np.stack([data[:4]] * 2)),
        "one-slice": lambda: viewer.add_image(data[:1]),
    }[kind]()
    before = np.array(layer.data, copy=True)
    n_layers = len(viewer.layers)
    w = ReconstructWidget(viewer)
    w.method_combo.setCurrentText("linear")
    assert w.start() is None
    assert len(viewer.layers) == n_layers
    np.testing.assert_array_equal(layer.data, before)
    reason = {"2d": "2D image", "rgb": "RGB", "4d": "4 dimensions", "one-slice": "1 slice"}
    assert any(reason[kind] in m for m in notes), notes


def test_fractional_factor_and_zarr_backed_output(qtbot, viewer_with_sample, monkeypatch):
    from napari_zup._qt import ReconstructWidget, _common

    monkeypatch.setattr(_common, "OUTPUT_RAM_LIMIT", 0)  # force the on-disk store
    viewer, layer = viewer_with_sample
    w = ReconstructWidget(viewer)
    w.method_combo.setCurrentText("cubic")
    w.factor_spin.setValue(2.5)
    run = w.start()
    _wait_done(qtbot, run)
    out = run.layer
    assert out.data.shape == (grid.output_length(33, 2.5), 192, 192) == (81, 192, 192)
    assert tuple(out.scale) == pytest.approx((16.0, 10.0, 10.0))
    assert type(out.data).__module__.startswith("zarr")
    store = out.metadata["zup"]["store"]
    assert store and __import__("os").path.isdir(store)
    np.testing.assert_array_equal(np.asarray(out.data), reconstruct(layer.data, "cubic", 2.5))
    viewer.layers.remove(out)  # the temporary store goes with its layer
    assert not __import__("os").path.exists(store)


def test_flow_vectors_and_colours_in_register_with_the_output(qtbot, make_napari_viewer):
    from napari_zup._qt import ReconstructWidget

    viewer = make_napari_viewer()
    data, kw, _ = anisotropic_sample()[0]
    layer = viewer.add_image(data[:5], **kw)
    w = ReconstructWidget(viewer)
    w.method_combo.setCurrentText("of-linear")
    w.flow_check.setChecked(True)
    w.vector_step.setValue(24)
    run = w.start()
    _wait_done(qtbot, run)
    assert run.status == "done"
    vec = run.vectors_layer
    per_slice = (192 // 24) ** 2
    n_restored = len(grid.restored_output_indices(5, 4))
    assert vec.data.shape == (per_slice * n_restored, 2, 3)
    assert tuple(vec.scale) == pytest.approx(tuple(run.layer.scale))
    z = np.unique(vec.data[:, 0, 0]).astype(int)
    np.testing.assert_array_equal(z, grid.restored_output_indices(5, 4))
    assert np.all(vec.data[:, 1, 0] == 0)  # vectors lie in their slice
    assert len(vec.features["magnitude"]) == len(vec.data)
    assert run.flow_layer.rgb and run.flow_layer.data.shape == (17, 192, 192, 3)
    assert run.flow_layer.data[1].any() and not run.flow_layer.data[0].any()  # knots: no flow
    assert layer.data.shape == (5, 192, 192)


def test_film_shows_its_learned_flows(qtbot, make_napari_viewer):
    """film (the 4-knot model) exposes its flows like the optical-flow methods: the box is
    enabled and a run adds the Vectors and colour layers; classical methods have none."""
    from napari_zup._qt import ReconstructWidget

    viewer = make_napari_viewer()
    data, kw, _ = anisotropic_sample()[0]
    layer = viewer.add_image(data[:4, :64, :64], **kw)
    w = ReconstructWidget(viewer)
    w.method_combo.setCurrentText("cubic")
    assert not w.flow_check.isEnabled()
    w.method_combo.setCurrentText("film")
    assert w.flow_check.isEnabled()
    w.flow_check.setChecked(True)
    w.factor_spin.setValue(2)
    w.vector_step.setValue(16)
    run = w.start()
    _wait_done(qtbot, run)
    assert run.status == "done"
    vec = run.vectors_layer
    assert vec is not None and vec.data.shape == ((64 // 16) ** 2 * 3, 2, 3)
    assert np.isfinite(vec.data).all() and np.abs(vec.data[:, 1, 1:]).max() > 0
    assert run.flow_layer.data[1].any() and not run.flow_layer.data[0].any()


def test_compare_grid_names_contrast_and_xz(qtbot, viewer_with_sample):
    from napari_zup._qt import CompareWidget

    viewer, layer = viewer_with_sample
    layer.contrast_limits = (20, 230)
    w = CompareWidget(viewer)
    assert w.factor_spin.value() == pytest.approx(4.0)
    w.methods.set_selected(["linear", "cubic"])
    assert w.start()
    qtbot.waitUntil(lambda: not w.running, timeout=TIMEOUT_MS)
    names = [lay.name for lay in viewer.layers]
    assert f"{layer.name} · linear ×4" in names and f"{layer.name} · cubic ×4" in names
    results = [viewer.layers[f"{layer.name} · {m} ×4"] for m in ("linear", "cubic")]
    for r in results:
        assert r.data.shape == (129, 192, 192)
        assert tuple(r.contrast_limits) == (20, 230)
    assert viewer.canvas.grid.enabled
    w.view_buttons["xz"].click()
    assert tuple(viewer.dims.order) == (1, 0, 2)
    assert tuple(viewer.dims.displayed) == (0, 2)
    w.view_buttons["xy"].click()
    assert tuple(viewer.dims.order) == (0, 1, 2)


def test_evaluate_shows_the_same_numbers_as_evaluate_method(qtbot, make_napari_viewer):
    from napari_zup._qt import EvaluateWidget
    from napari_zup._qt._evaluate import score_cells

    viewer = make_napari_viewer()
    data, kw, _ = isotropic_sample()[0]
    g = data[:41, :96, :96]
    layer = viewer.add_image(g, **kw)
    w = EvaluateWidget(viewer)
    w.factor_spin.setValue(4)
    w.methods.set_selected(["linear", "of-linear"])
    assert w.start()
    qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT_MS)
    assert len(w.scores) == 2
    for row, m in enumerate(["linear", "of-linear"]):
        ref, recon, maps = evaluate_method(g, 4, m, keep_output=True, error_maps=True)
        cells = [w.table.item(row, c).text() for c in range(w.table.columnCount())]
        assert cells[:6] == score_cells(m, ref)[:6]  # all but the timing
        assert cells[5] == f"{ref.texture:.3f}" and 0 < ref.texture < 1  # smoother than knots
        assert w.scores[m].per_slice["ssim"] == ref.per_slice["ssim"]
        np.testing.assert_array_equal(w.restored_layers[m].data, recon)
        np.testing.assert_allclose(w.error_layers[m].data, maps)
        assert tuple(w.error_layers[m].scale) == pytest.approx(tuple(layer.scale))
        assert w.error_layers[m].blending == "translucent"
    limits = {tuple(w.error_layers[m].contrast_limits) for m in w.error_layers}
    assert len(limits) == 1  # one contrast for every method
    assert w.scores["of-linear"].psnr > w.scores["linear"].psnr  # flow helps on real EM
    # one line per method: mean SSIM at each of the F - 1 positions between kept slices
    lines = {ln.get_label(): ln for ln in w.ax.get_lines()}
    for m in ("linear", "of-linear"):
        ps = w.scores[m].per_slice
        want = [np.mean([v for i, v in zip(ps["index"], ps["ssim"]) if i % 4 == k])
                for k in (1, 2, 3)]
        np.testing.assert_allclose(lines[m].get_ydata(), want)
        np.testing.assert_allclose(lines[m].get_xdata(), [0.25, 0.5, 0.75])


def test_flow_widget_updates_when_a_parameter_changes(qtbot, viewer_with_sample):
    from napari_zup._qt import FlowWidget
    from napari_zup.flow import FarnebackParams, estimate_flow

    viewer, layer = viewer_with_sample
    viewer.dims.set_point(0, 40.0 * 5)  # input slice 5
    w = FlowWidget(viewer)
    assert w.compute()
    qtbot.waitUntil(lambda: w.last_stats.get("pairs") == [5], timeout=TIMEOUT_MS)
    assert w.winsize.value() == 47  # a quarter of the 192 px image, not 129 px
    ref = estimate_flow(layer.data[5], layer.data[6], FarnebackParams(winsize=47))
    assert w.last_stats["mean_px"] == pytest.approx(float(np.hypot(*ref.transpose(2, 0, 1)).mean()))
    assert w.rgb_layer.data.shape == (1, 192, 192, 3)
    assert tuple(w.rgb_layer.translate)[0] == pytest.approx(layer.translate[0] + 5 * 40.0)
    first = dict(w.last_stats)
    w.winsize.setValue(31)  # changes the result without pressing anything
    qtbot.waitUntil(lambda: w.last_stats is not first and w.last_stats.get("mean_px")
                    != first["mean_px"], timeout=TIMEOUT_MS)
    ref31 = estimate_flow(layer.data[5], layer.data[6], FarnebackParams(winsize=31))
    assert w.last_stats["mean_px"] == pytest.approx(
        float(np.hypot(*ref31.transpose(2, 0, 1)).mean()))
    w.mode.setCurrentText("range")
    w.z0.setValue(2)
    w.z1.setValue(4)
    qtbot.waitUntil(lambda: w.last_stats.get("pairs") == [2, 3, 4], timeout=TIMEOUT_MS)
    assert w.rgb_layer.data.shape == (3, 192, 192, 3)
    assert set(np.unique(w.vectors_layer.data[:, 0, 0])) == {0, 1, 2}


def test_launch_opens_the_sample_with_the_reconstruct_widget(monkeypatch, qtbot):
    import napari

    from napari_zup import launch

    monkeypatch.setattr(napari, "run", lambda *a, **k: None)
    viewer = launch.main([])
    try:
        assert viewer.layers[0].data.shape == (33, 192, 192)
        assert "Reconstruct" in " ".join(viewer.window.dock_widgets.keys())
    finally:
        viewer.close()


def test_deleting_the_output_layer_cancels_the_run_and_frees_its_store(
        qtbot, viewer_with_sample, monkeypatch, hold_after):
    import os

    from napari_zup._qt import ReconstructWidget, _common

    monkeypatch.setattr(_common, "OUTPUT_RAM_LIMIT", 0)
    gate = hold_after(10)
    viewer, layer = viewer_with_sample
    w = ReconstructWidget(viewer)
    w.method_combo.setCurrentText("of-cubic")
    run = w.start()
    store = run.layer.metadata["zup"]["store"]
    qtbot.waitUntil(lambda: run.progress.done >= 10, timeout=TIMEOUT_MS)
    viewer.layers.remove(run.layer)
    gate.set()
    _wait_done(qtbot, run)
    assert run.status == "cancelled" and run.progress.done < run.out_shape[0]
    assert not os.path.exists(store)
    assert list(viewer.layers) == [layer]


def test_reconstruct_a_lazily_opened_file(qtbot, make_napari_viewer, tmp_path, monkeypatch):
    import napari_zup.io as io

    from napari_zup._qt import ReconstructWidget

    data = anisotropic_sample()[0][0][:9]
    src = io.write_volume(tmp_path / "lazy.tif", data, (40.0, 10.0, 10.0))
    monkeypatch.setattr(io, "LAZY_BYTES", 1000)  # open it as a dask array
    viewer = make_napari_viewer()
    layer, = viewer.open(str(src), plugin="napari-zup")
    assert hasattr(layer.data, "dask")
    w = ReconstructWidget(viewer)
    w.method_combo.setCurrentText("cubic")
    run = w.start()
    _wait_done(qtbot, run)
    assert run.status == "done"
    assert tuple(run.layer.scale) == pytest.approx((10.0, 10.0, 10.0))
    np.testing.assert_array_equal(run.layer.data, reconstruct(data, "cubic", 4))


def test_a_run_that_fails_at_once_says_why_and_leaves_no_layer(
        qtbot, viewer_with_sample, notes, tmp_path):
    from napari_zup._qt import ReconstructWidget

    viewer, layer = viewer_with_sample
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"not a checkpoint")
    w = ReconstructWidget(viewer)
    from napari_zup.methods import method_infos

    learned = [i.name for i in method_infos() if i.needs_checkpoint]
    if not learned:
        pytest.skip("no learned method registered")
    w._checkpoint_file = str(bad)
    w.method_combo.setCurrentText(learned[0])
    assert w.method_combo.currentText() == learned[0]
    w.checkpoint_combo.setCurrentText(str(bad))
    assert w.method_params()["checkpoint"] == str(bad)
    run = w.start()
    _wait_done(qtbot, run)
    assert run.status == "failed"
    assert list(viewer.layers) == [layer]
    assert any("failed" in m and "broken.safetensors" in m for m in notes), notes
    assert w.run_button.isEnabled()


def test_texture_box_only_for_methods_that_take_it_and_reaches_the_method(qtbot,
                                                                            viewer_with_sample):
    """The Reconstruct widget's texture box follows MethodInfo.texture (film, tsain), passes
    texture=TEXTURE_RATIO to the method, and the result carries the knots' texture."""
    from napari_zup._qt import ReconstructWidget
    from napari_zup._qt._reconstruct import TEXTURE_RATIO
    from napari_zup.evaluation import high_frequency_energy

    viewer, layer = viewer_with_sample
    w = ReconstructWidget(viewer)
    w.method_combo.setCurrentText("linear")
    assert not w.texture_check.isEnabled()
    w.method_combo.setCurrentText("film")
    assert w.texture_check.isEnabled() and not w.texture_check.isChecked()
    assert "texture" not in w.method_params()
    w.texture_check.setChecked(True)
    assert w.method_params()["texture"] == TEXTURE_RATIO
    layer.data = np.ascontiguousarray(layer.data[:3])     # 3 knots: a short film run
    run = w.start()
    _wait_done(qtbot, run)
    out = np.asarray(run.layer.data, np.float64)
    knots = np.mean([high_frequency_energy(out[k]) for k in (0, 4, 8)])
    restored = np.mean([high_frequency_energy(out[k]) for k in (1, 2, 3, 5, 6, 7)])
    assert 0.6 < restored / knots < 1.0, restored / knots
    w.method_combo.setCurrentText("linear")
    assert not w.texture_check.isChecked()                # never passed to another method


def test_run_start_and_a_backlog_of_slices_each_redraw_at_most_once(qtbot, make_napari_viewer,
                                                                    monkeypatch):
    """Clicking Run is one short event-loop pass: the output layer, no redraw, even when
    slices have arrived meanwhile; the progress bar comes in the next pass (napari's
    progress() runs processEvents, which delivers them: they only count); and a backlog of slices queued while the GUI thread was busy is
    drawn by one timer-driven redraw. Redrawing inside those passes made them freezes of a
    second or more (issue #13, docs/benchmarks.md section 10.8)."""
    import threading
    import time as _time

    from qtpy.QtWidgets import QApplication

    from napari_zup._qt import _run
    from napari_zup._qt._run import StreamingRun

    first_ready = threading.Event()
    events = _run.reconstruct_events
    go = threading.Event()

    def held_events(*args, **kwargs):  # one slice at once, the rest when the test says
        for n, event in enumerate(events(*args, **kwargs)):
            yield event
            if n == 0:
                first_ready.set()
                go.wait(30)

    monkeypatch.setattr(_run, "reconstruct_events", held_events)
    viewer = make_napari_viewer()
    data, kw, _ = anisotropic_sample()[0]
    layer = viewer.add_image(data[:12, :64, :64], **kw)
    run = StreamingRun(viewer, layer, "linear", 4)
    calls = []
    redraw, add_layers = run._redraw, run._add_layers

    def slow_redraw(*args, **kwargs):  # a redraw as slow as napari's on a busy machine
        calls.append(_time.perf_counter())
        redraw(*args, **kwargs)
        _time.sleep(0.12)

    def add_layers_after_a_slice():  # the first slice is computed while layers are built
        first_ready.wait(30)
        add_layers()

    run._redraw, run._add_layers = slow_redraw, add_layers_after_a_slice
    run.start()
    assert calls == [] and run._pbar is None  # start(): the output layer only, no redraw
    # the progress bar in a pass of its own; the first slice is delivered, drawn at most once
    qtbot.waitUntil(lambda: run._pbar is not None and run.progress.done == 1, timeout=10_000)
    assert len(calls) <= 1
    go.set()
    _time.sleep(2.0)  # the GUI thread is busy: the other slices are computed and queued
    n_before = len(calls)
    QApplication.processEvents()  # one pass delivers the backlog
    assert run.progress.done >= 20
    assert len(calls) - n_before <= 2  # the end-of-run redraw, at most one timer redraw
    _wait_done(qtbot, run)
    assert run.status == "done"
    np.testing.assert_array_equal(np.asarray(run.layer.data), reconstruct(layer.data, "linear", 4))


def test_preload_imports_in_the_background():
    import json  # noqa: F401
    import sys

    from napari_zup._qt._common import preload

    assert preload(("json",)) is None  # imported already: nothing to do
    sys.modules.pop("colorsys", None)
    thread = preload(("colorsys",))
    assert thread is not None
    thread.join(10)
    assert "colorsys" in sys.modules
    thread = preload(("no_such_module_zup",))
    thread.join(10)  # a failed import is left to the code that needs the module
    assert not thread.is_alive() and "no_such_module_zup" not in sys.modules


def test_pass_steps_run_in_order_one_per_event_loop_pass(qtbot):
    from qtpy.QtWidgets import QApplication

    from napari_zup._qt._common import PassSteps

    steps, ran = PassSteps(), []
    for n in range(3):
        steps.add(lambda n=n: ran.append(n))
    assert steps.pending and ran == []  # nothing runs inside add()
    QApplication.processEvents()
    assert len(ran) <= 2  # not all in one pass
    qtbot.waitUntil(lambda: not steps.pending, timeout=5000)
    assert ran == [0, 1, 2]


def test_a_run_computes_only_after_its_output_layer_is_added(qtbot, viewer_with_sample,
                                                             monkeypatch):
    """The worker starts at Run but computes from the pass after the output layer exists, so
    napari building the layer does not compete with the engine's threads for the GIL
    (docs/benchmarks.md 10.11). A slow layer creation would otherwise meet a computing
    worker."""
    import time as _time

    import napari_zup._qt._run as run_mod
    from napari_zup._qt import ReconstructWidget

    seen = []
    real_events = run_mod.reconstruct_events

    def recording(*args, **kwargs):  # in the worker thread, when it starts computing
        seen.append(any(lay.name.endswith("linear ×4") for lay in list(viewer.layers)))
        return real_events(*args, **kwargs)
    monkeypatch.setattr(run_mod, "reconstruct_events", recording)
    real_add = run_mod.StreamingRun._add_layers

    def slow_add(self):
        _time.sleep(0.4)  # napari taking its time over the new layer
        real_add(self)
    monkeypatch.setattr(run_mod.StreamingRun, "_add_layers", slow_add)

    viewer, layer = viewer_with_sample
    w = ReconstructWidget(viewer)
    w.method_combo.setCurrentText("linear")
    run = w.start()
    _wait_done(qtbot, run)
    assert run.status == "done" and seen == [True]


def test_a_factor_finer_than_the_pixels_is_warned_about(qtbot, make_napari_viewer, notes):
    """The CLI's oversampling warning in the widget: the isotropic sample x4 says it is
    already isotropic; the anisotropic one at its own ratio and a layer without a voxel
    size say nothing."""
    from napari_zup._qt import ReconstructWidget

    viewer = make_napari_viewer()
    data, kw, _ = isotropic_sample()[0]
    iso = viewer.add_image(data[:12], **kw)
    w = ReconstructWidget(viewer)
    w.layer_combo.set_layer(iso)
    w.method_combo.setCurrentText("linear")
    w.factor_spin.setValue(4)
    _wait_done(qtbot, w.start())
    warned = [m for m in notes if "finer than the layer's 10 nm pixels" in m]
    assert len(warned) == 1 and "already isotropic" in warned[0], notes
    notes.clear()
    data, kw, _ = anisotropic_sample()[0]
    for scale in (kw["scale"], (1.0, 1.0, 1.0)):  # x4 = 40 / 10; napari's default scale
        layer = viewer.add_image(data[:8], **{**kw, "scale": scale})
        w.layer_combo.set_layer(layer)
        w.factor_spin.setValue(4)
        _wait_done(qtbot, w.start())
    assert not [m for m in notes if "finer than" in m], notes
