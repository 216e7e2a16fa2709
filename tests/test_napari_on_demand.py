"""Reconstruct on demand in a real viewer (pytest-qt under Xvfb): the whole output layer at
once, filled in where the user looks, never blocking the GUI."""
import numpy as np
import pytest

from napari_zup.engine import reconstruct

pytestmark = pytest.mark.gui

OF = {"winsize": 21, "levels": 2}


def _shown(layer):
    return np.asarray(layer._slice.image.raw)


def test_on_demand_layer_fills_in_as_the_slider_moves(viewer_with_sample, qtbot):
    from napari_zup._qt._on_demand import OnDemandRun

    viewer, src = viewer_with_sample
    eager = reconstruct(np.asarray(src.data), "of-linear", 4, method_params=OF)
    run = OnDemandRun(viewer, src, "of-linear", 4, method_params=OF)
    run.start()  # the whole layer is there at once; how long that takes: benchmarks/
    layer = run.layer
    assert layer.data.shape == eager.shape
    assert layer.scale[0] == pytest.approx(src.scale[0] / 4)
    assert tuple(layer.contrast_limits) == tuple(src.contrast_limits)
    for z in (41, 93):  # restored slices of two different slabs
        viewer.dims.set_point(0, z * layer.scale[0])
        qtbot.waitUntil(lambda z=z: run.view.ready(z), timeout=60_000)
        qtbot.waitUntil(lambda z=z: np.array_equal(_shown(layer), eager[z]), timeout=10_000)
    assert not run.view.ready(5)  # slabs nobody looked at were not computed
    # removing the layer stops its background work
    viewer.layers.remove(layer)
    assert run.status == "closed"


def test_on_demand_errors_become_notifications(viewer_with_sample, qtbot, notes, monkeypatch):
    from napari_zup._qt._on_demand import OnDemandRun

    viewer, src = viewer_with_sample

    def broken(*a, **k):
        raise RuntimeError("model exploded")

    run = OnDemandRun(viewer, src, "linear", 4)
    monkeypatch.setattr("napari_zup.lazy.render_output_block", broken)
    run.start()
    viewer.dims.set_point(0, 10 * run.layer.scale[0])
    run.layer.refresh()
    qtbot.waitUntil(lambda: any("model exploded" in str(m) for m in notes), timeout=20_000)


def test_reconstruct_widget_on_demand_entry(viewer_with_sample, qtbot):
    from napari_zup._qt._reconstruct import ENGINE_ON_DEMAND, ReconstructWidget

    viewer, src = viewer_with_sample
    before = np.asarray(src.data).copy()
    w = ReconstructWidget(viewer)
    w.layer_combo.set_layer(src)
    w.method_combo.setCurrentText("cubic")
    w.factor_spin.setValue(4)
    w.engine_combo.setCurrentText(ENGINE_ON_DEMAND)
    assert w.output_row.isHidden() and w.flow_check.isHidden()  # nothing written, no flows
    run = w.start()
    assert run is not None and "on demand" in w.status.text()
    assert run.layer.data.shape == ((33 - 1) * 4 + 1, 192, 192)
    assert w.run_button.isEnabled()  # interactive: another run may start at once
    eager = reconstruct(before, "cubic", 4)
    viewer.dims.set_point(0, 50 * run.layer.scale[0])
    qtbot.waitUntil(lambda: np.array_equal(_shown(run.layer), eager[50]), timeout=60_000)
    np.testing.assert_array_equal(np.asarray(src.data), before)
