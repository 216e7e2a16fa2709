"""Flow widget defaults that follow the data (pytest-qt under Xvfb, real viewer, the real
FIB-SEM sample): vector grid and length, window on a small image, colour flow beside the EM
with a colour-wheel legend."""
import numpy as np
import pytest

from napari_zup.flow import FarnebackParams, estimate_flow

pytestmark = pytest.mark.gui

TIMEOUT_MS = 60_000


def test_flow_defaults_make_arrows_visible_and_keep_the_em_visible(qtbot, viewer_with_sample):
    from napari_zup._qt import FlowWidget
    from napari_zup._qt._flow import ARROW_STEPS, COLOURS_OVER

    viewer, layer = viewer_with_sample
    viewer.dims.set_point(0, 40.0 * 5)
    w = FlowWidget(viewer)
    assert w.step.value() == 8  # 192 px / 24
    assert w.winsize.value() == 47 and "192 px image" in w.window_note.text()
    assert not w.wheel.pixmap().isNull()
    assert w.compute()
    qtbot.waitUntil(lambda: w.last_stats.get("pairs") == [5], timeout=TIMEOUT_MS)
    vec = w.vectors_layer
    flow = estimate_flow(layer.data[5], layer.data[6], FarnebackParams(winsize=47))
    mags = np.hypot(vec.data[:, 1, 1], vec.data[:, 1, 2])
    assert mags.mean() == pytest.approx(np.hypot(*flow[4::8, 4::8].transpose(2, 0, 1)).mean(),
                                        rel=1e-5)
    drawn = np.percentile(mags, 90) * vec.length  # screen length of the long arrows, px
    assert vec.length == w.length.value() >= 1.0
    assert 0.5 * ARROW_STEPS * 8 <= drawn <= 1.5 * ARROW_STEPS * 8
    # the colour flow sits beside the EM, one image width (and a gap) to the right
    rgb = w.rgb_layer
    assert rgb.translate[-1] == pytest.approx(layer.translate[-1] + 1.05 * 192 * 10.0)
    assert rgb.opacity == 1.0
    w.colours.setCurrentText(COLOURS_OVER)
    assert rgb.translate[-1] == pytest.approx(layer.translate[-1]) and rgb.opacity == 0.4
    # a length the user sets stays
    w.length.setValue(7.0)
    assert vec.length == 7.0
    w.winsize.setValue(31)
    qtbot.waitUntil(lambda: w.last_stats.get("mean_px") != pytest.approx(
        float(np.hypot(*flow.transpose(2, 0, 1)).mean())), timeout=TIMEOUT_MS)
    qtbot.waitUntil(lambda: not w.worker.is_running, timeout=TIMEOUT_MS)
    assert w.length.value() == 7.0 and w.vectors_layer.length == 7.0


def test_default_length_and_window_rules():
    from napari_zup._qt._flow import default_length, default_step, default_window

    assert default_step(192, 192) == 8 and default_step(2048, 4096) == 64
    assert default_step(40, 40) == 4
    assert default_length(np.full(10, 2.0), 8) == pytest.approx(3.0)  # 0.8 * 8 / 2 = 3.2
    assert default_length(np.zeros(5), 8) == 1.0
    assert default_length(np.full(10, 100.0), 8) == 1.0  # never shorter than the flow
    assert default_window(192, 192, 129) == 47
    assert default_window(1024, 1024, 129) == 129
    assert default_window(40, 40, 129) == 15
