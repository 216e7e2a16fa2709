"""Evaluate widget in a real viewer (pytest-qt under Xvfb): one error map at a time with a
shared scale, self-evaluation on an anisotropic layer, learned methods, bad input in the
dock. Small crops of the real FIB-SEM sample."""
import numpy as np
import pytest

from napari_zup._sample_data import anisotropic_sample, isotropic_sample
from napari_zup.evaluation import SELF_EVAL_LABEL, evaluate_method, self_evaluate

pytestmark = pytest.mark.gui

TIMEOUT_MS = 120_000


def _run(qtbot, w, n):
    assert w.start()
    qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT_MS)  # computed and shown
    assert len(w.scores) == n


def test_one_error_map_at_a_time_with_one_scale(qtbot, make_napari_viewer):
    from napari_zup._qt import EvaluateWidget
    from napari_zup._qt._evaluate import MODE_DROP

    viewer = make_napari_viewer()
    data, kw, _ = isotropic_sample()[0]
    layer = viewer.add_image(data[:17, :64, :64].copy(), **kw)
    other = viewer.add_image(np.zeros((17, 64, 64), np.uint8), name="unrelated",
                             scale=layer.scale, units=layer.units)
    w = EvaluateWidget(viewer)
    w.layer_combo.set_layer(layer)
    assert w.mode_combo.currentText() == MODE_DROP  # isotropic: drop and restore
    w.factor_spin.setValue(4)
    w.methods.set_selected(["linear", "of-linear"])
    _run(qtbot, w, 2)
    assert [w.map_combo.itemText(i) for i in range(w.map_combo.count())] == \
        ["linear", "of-linear"]
    for shown in ("linear", "of-linear", "linear"):
        w.map_combo.setCurrentText(shown)
        visible = {lay.name for lay in viewer.layers if lay.visible}
        assert visible == {layer.name, w.restored_layers[shown].name,
                           w.error_layers[shown].name}
    assert not other.visible and not viewer.canvas.grid.enabled
    limits = {tuple(lay.contrast_limits) for lay in w.error_layers.values()}
    assert len(limits) == 1 and limits.pop() == pytest.approx((0.0, w.error_limit))
    assert w.bar_hi.text() == f"{w.error_limit:.3f}"
    # small errors are transparent, large ones opaque
    cmap = w.error_layers["linear"].colormap
    assert cmap.map(np.array([0.0]))[0, 3] == 0.0 and cmap.map(np.array([1.0]))[0, 3] > 0.9
    # the F-PSNR column header is not cut off
    header = w.table.horizontalHeader()
    for c, text in enumerate(("method", "PSNR dB", "SSIM", "F-PSNR dB")):
        assert header.sectionSize(c) >= header.fontMetrics().horizontalAdvance(text)
    # side by side, then back to one map: the panel names go with the grid
    w.side_by_side()
    assert viewer.canvas.grid.enabled and not layer.name_overlay.visible
    assert "grid panels" in w.status.text() and "linear ×4 restored (+1)" in w.status.text()
    w.map_combo.setCurrentText("of-linear")
    assert not viewer.canvas.grid.enabled


def test_self_evaluation_on_an_anisotropic_layer(qtbot, make_napari_viewer):
    from napari_zup._qt import EvaluateWidget
    from napari_zup._qt._evaluate import MODE_DROP, MODE_SELF

    viewer = make_napari_viewer()
    data, kw, _ = anisotropic_sample()[0]  # 40 nm z step, 10 nm pixels
    stack = data[:9, :64, :64].copy()
    layer = viewer.add_image(stack, **kw)
    w = EvaluateWidget(viewer)
    assert w.mode_combo.currentText() == MODE_SELF  # chosen from the layer's scale
    assert not w.factor_spin.isEnabled()
    note = w.mode_note.text()
    assert "twice the real spacing" in note and "40 nm → 80 nm" in note
    w.methods.set_selected(["linear", "of-linear"])
    _run(qtbot, w, 2)
    assert w.mode_combo.currentText() == MODE_SELF  # new layers do not reset the protocol
    for row, m in enumerate(["linear", "of-linear"]):
        ref, recon, maps = self_evaluate(stack, m, keep_output=True, error_maps=True)
        assert w.table.item(row, 1).text() == f"{ref.psnr:.2f}"
        assert w.table.item(row, 2).text() == f"{ref.ssim:.4f}"
        np.testing.assert_array_equal(w.restored_layers[m].data, recon)
        assert w.restored_layers[m].metadata["zup"]["protocol"] == SELF_EVAL_LABEL
        assert "self-eval ×2" in w.restored_layers[m].name
    assert SELF_EVAL_LABEL in w.status.text()
    assert w.scores["linear"].n_slices == 4  # sections 1, 3, 5, 7 restored from 0, 2, 4, 6, 8
    np.testing.assert_array_equal(layer.data, stack)  # the input is untouched
    assert w.factor_spin.value() == 2
    w.mode_combo.setCurrentText(MODE_DROP)  # the user may still drop and restore
    assert w.factor_spin.isEnabled() and w.factor_spin.value() == 4
    assert "every F-th slice" in w.mode_note.text()


def test_self_evaluation_refuses_fewer_than_five_sections_in_the_dock(
        qtbot, make_napari_viewer, notes):
    from napari_zup._qt import EvaluateWidget

    viewer = make_napari_viewer()
    data, kw, _ = anisotropic_sample()[0]
    viewer.add_image(data[:4, :32, :32].copy(), **kw)
    w = EvaluateWidget(viewer)
    assert w.self_mode
    assert w.start() is False
    assert w.worker is None
    assert "at least 5 sections" in w.status.text() and "has 4" in w.status.text()
    assert any("at least 5 sections" in str(n) for n in notes)
    assert len(viewer.layers) == 1


def test_learned_method_in_evaluate(qtbot, make_napari_viewer):
    from napari_zup._qt import EvaluateWidget

    viewer = make_napari_viewer()
    data, kw, _ = isotropic_sample()[0]
    g = data[:9, :48, :48].copy()
    viewer.add_image(g, **kw)
    w = EvaluateWidget(viewer)
    w.factor_spin.setValue(2)
    assert "trained ×" in w.methods.checkpoint_labels["film"].text()
    w.methods.set_selected(["linear", "film"])
    _run(qtbot, w, 2)
    ref = evaluate_method(g, 2, "film")[0]
    assert w.scores["film"].psnr == pytest.approx(ref.psnr, abs=0.05)
    assert w.table.item(1, 0).text() == "film"
    # F = 2: one bar per method (mean SSIM of the restored slices)
    heights = [p.get_width() for p in w.ax.patches]
    np.testing.assert_allclose(heights, [w.scores["linear"].ssim, w.scores["film"].ssim])


def test_the_next_method_computes_after_the_previous_results_are_shown(qtbot,
                                                                       make_napari_viewer,
                                                                       monkeypatch):
    """Scoring the next method waits until the previous one's layers and row are in napari
    (docs/benchmarks.md 10.11: computing while napari adds layers stalled the GUI), even
    when showing them is slow; the results stay complete and in order."""
    import time

    import napari_zup._qt._evaluate as ev
    from napari_zup._qt import EvaluateWidget

    viewer = make_napari_viewer()
    data, kw, _ = isotropic_sample()[0]
    layer = viewer.add_image(data[:17, :64, :64].copy(), **kw)
    w = EvaluateWidget(viewer)
    w.layer_combo.set_layer(layer)
    w.factor_spin.setValue(4)
    w.methods.set_selected(["linear", "cubic"])
    started = {}
    real = ev.evaluate_events

    def recording(g, f, m, **kwargs):
        started[m] = sorted(w.scores)  # the methods already shown when m starts
        return real(g, f, m, **kwargs)
    monkeypatch.setattr(ev, "evaluate_events", recording)
    real_add = ev.EvaluateWidget._add_restored_layer

    def slow_add(self, *a):
        time.sleep(0.3)
        real_add(self, *a)
    monkeypatch.setattr(ev.EvaluateWidget, "_add_restored_layer", slow_add)
    _run(qtbot, w, 2)
    assert started == {"linear": [], "cubic": ["linear"]}
    assert [w.table.item(r, 0).text() for r in range(w.table.rowCount())] == ["linear", "cubic"]


def test_every_table_row_is_visible_in_the_dock(qtbot, make_napari_viewer):
    """Five methods in a dock narrower than the table's columns: the horizontal scroll bar
    appears and still no row is hidden behind it."""
    from napari_zup._qt import EvaluateWidget

    viewer = make_napari_viewer(show=True)
    data, kw, _ = isotropic_sample()[0]
    viewer.add_image(data[:9, :64, :64].copy(), **kw)
    w = EvaluateWidget(viewer)
    viewer.window.add_dock_widget(w, area="right")
    w.factor_spin.setValue(2)
    w.methods.set_selected(["nearest", "linear", "cubic", "of-linear", "of-cubic"])
    _run(qtbot, w, 5)
    t = w.table
    t.setFixedWidth(240)  # narrower than the six columns
    qtbot.waitUntil(lambda: t.horizontalScrollBar().isVisible(), timeout=5000)
    rows = sum(t.rowHeight(r) for r in range(t.rowCount()))
    assert t.viewport().height() >= rows, (t.viewport().height(), rows)
