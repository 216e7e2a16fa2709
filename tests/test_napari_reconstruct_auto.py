"""Reconstruct widget, "auto" entry (pytest-qt under Xvfb, real viewer): the choice is made
in a worker by selection.choose_method, its table and reason are shown in the dock, and the
reconstruction runs with the winner."""
import numpy as np
import pytest

from napari_zup._sample_data import anisotropic_sample
from napari_zup.engine import reconstruct
from napari_zup.selection import choose_method

pytestmark = pytest.mark.gui

TIMEOUT_MS = 120_000


@pytest.fixture
def small(make_napari_viewer):
    viewer = make_napari_viewer()
    data, kw, _ = anisotropic_sample()[0]
    stack = data[8:17, :64, :64].copy()
    return viewer, viewer.add_image(stack, **kw), stack


def test_auto_entry_chooses_shows_the_table_and_runs_the_winner(qtbot, small):
    from napari_zup._qt import ReconstructWidget

    viewer, layer, stack = small
    w = ReconstructWidget(viewer)
    w.method_combo.setCurrentText("auto")
    assert w.method_combo.currentText() == "auto"
    assert "Self-evaluates" in w.method_desc.text()
    w.auto_candidates = ["nearest", "linear", "of-linear"]
    assert w.start() is not None
    assert w.choosing
    qtbot.waitUntil(lambda: w.choice is not None and w.run is not None and not w.run.running,
                    timeout=TIMEOUT_MS)
    ref = choose_method(stack, 4, candidates=["nearest", "linear", "of-linear"])
    assert w.choice.method == ref.method
    assert set(w.choice.scores) == {"nearest", "linear", "of-linear"}
    assert w.auto_table.isVisible() or not w.isVisible()
    table = w.auto_table.toPlainText()
    assert table == w.choice.table
    for m, sc in ref.scores.items():  # same scores as a direct call (timings differ)
        assert f"{sc.psnr:.2f}" in table and f"{sc.ssim:.4f}" in table
    assert f"auto chose {ref.method}" in w.status.text()
    run = w.run
    assert run.method == ref.method and run.status == "done"
    assert run.layer.name == f"{layer.name} · {ref.method} ×4"
    np.testing.assert_array_equal(run.layer.data, reconstruct(stack, ref.method, 4))
    np.testing.assert_array_equal(layer.data, stack)


def test_auto_on_a_too_short_stack_says_why_in_the_dock(qtbot, make_napari_viewer, notes):
    from napari_zup._qt import ReconstructWidget

    viewer = make_napari_viewer()
    data, kw, _ = anisotropic_sample()[0]
    viewer.add_image(data[:3, :32, :32].copy(), **kw)
    w = ReconstructWidget(viewer)
    w.method_combo.setCurrentText("auto")
    assert w.start() is not None
    qtbot.waitUntil(lambda: not w.choosing, timeout=TIMEOUT_MS)
    assert "at least 5 sections" in w.status.text()
    assert any("at least 5 sections" in str(n) for n in notes)
    assert len(viewer.layers) == 1 and w.run_button.isEnabled()
