"""The Train widget in a real napari viewer (pytest-qt under Xvfb) on a crop of the real
FIB-SEM sample: a short self-supervised training with live loss curve and preview, Stop keeps
the best checkpoint, "Reconstruct with the result" streams the result into a new layer.

Tiny trainings on one torch thread: the file runs in well under a minute on two cores.
"""
import numpy as np
import pytest

from napari_zup._sample_data import anisotropic_sample
from napari_zup.checkpoints import load_checkpoint
from napari_zup.engine import reconstruct

pytestmark = pytest.mark.gui

TIMEOUT_MS = 60_000


@pytest.fixture(autouse=True)
def one_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def viewer_with_crop(make_napari_viewer):
    """The anisotropic sample (z step 40 nm, 10 nm pixels), cropped to 33 x 96 x 96."""
    viewer = make_napari_viewer()
    data, kw, _ = anisotropic_sample()[0]
    layer = viewer.add_image(np.ascontiguousarray(data[:, 48:144, 48:144]), **kw)
    return viewer, layer


def dock(viewer, name):
    return viewer.window.add_plugin_dock_widget("napari-zup", name)[1]


def test_train_stop_then_reconstruct(viewer_with_crop, qtbot, tmp_path):
    viewer, layer = viewer_with_crop
    before = layer.data.copy()
    rec_widget = dock(viewer, "Reconstruct")
    w = dock(viewer, "Train")
    assert w.layer_combo.layer() is layer
    assert w.factor_spin.value() == 4  # from the layer's scale (40 nm / 10 nm)
    w.method_combo.setCurrentText("niiv")
    ckpt = tmp_path / "mine.safetensors"
    w.path_edit.setText(str(ckpt))
    w.steps_spin.setValue(100_000)  # ends by Stop only
    w.eval_every = 10
    assert w.start()
    assert w.running
    assert not w.start_button.isEnabled() and w.stop_button.isEnabled()

    # live: loss curve points and a restored preview plane drawn in the dock
    qtbot.waitUntil(lambda: len(w.steps) >= 2 and w._im_out is not None, timeout=TIMEOUT_MS)
    assert all(np.isfinite(w.losses)) and w.steps == sorted(w.steps)
    assert len(w.loss_line.get_xdata()) >= 2
    assert w.preview.shape == ((33 - 1) * 4 + 1, 96)  # middle xz plane at factor 4
    assert 0.0 <= w.preview.min() and w.preview.max() <= 1.0 and w.preview.std() > 0.01
    assert not w.progress_bar.isHidden() and "step" in w.status.text()
    assert not w.reconstruct_button.isEnabled()

    w.stop()
    qtbot.waitUntil(lambda: w.status_text in ("stopped", "failed"), timeout=TIMEOUT_MS)
    assert w.error is None, w.error
    assert w.result.stopped and 20 <= w.result.steps < 100_000
    state, meta = load_checkpoint(ckpt, "niiv")
    assert meta["method"] == "niiv" and meta["training"]["factors"] == [4]
    assert w.reconstruct_button.isEnabled() and w.start_button.isEnabled()
    np.testing.assert_array_equal(layer.data, before)  # input never modified
    # the docked Reconstruct widget now offers the trained checkpoint
    assert rec_widget.method_combo.currentText() == "niiv"
    assert rec_widget.method_params()["checkpoint"] == str(ckpt)

    n_layers = len(viewer.layers)
    run = w.reconstruct()
    assert run is not None
    qtbot.waitUntil(lambda: not run.running, timeout=TIMEOUT_MS)
    assert run.status == "done"
    assert len(viewer.layers) == n_layers + 1
    out = viewer.layers[-1]
    assert out.name == run.layer.name  # (the widget sees layers through napari proxies)
    assert "niiv" in out.name
    assert out.data.shape == (129, 96, 96)
    np.testing.assert_allclose(out.scale, (10.0, 10.0, 10.0))
    expected = reconstruct(before, "niiv", 4, method_params={"checkpoint": str(ckpt)})
    np.testing.assert_array_equal(np.asarray(out.data), expected)
    np.testing.assert_array_equal(layer.data, before)


def test_a2i_runs_to_its_step_limit(viewer_with_crop, qtbot, tmp_path):
    viewer, layer = viewer_with_crop
    w = dock(viewer, "Train")
    w.method_combo.setCurrentText("a2i")
    ckpt = tmp_path / "sub" / "a2i.safetensors"  # folder made on Start
    w.path_edit.setText(str(ckpt))
    w.steps_spin.setValue(20)
    assert w.start()
    qtbot.waitUntil(lambda: w.status_text in ("done", "failed"), timeout=TIMEOUT_MS)
    assert w.error is None, w.error
    assert not w.result.stopped and w.result.steps == 20
    assert w.steps[-1] == 20 and w.preview is not None
    _, meta = load_checkpoint(ckpt, "a2i")
    assert meta["method"] == "a2i"
    # an existing file: "continue from this file" becomes available
    assert w.resume_check.isEnabled()


def test_2d_layer_refused(make_napari_viewer, qtbot, tmp_path, notes):
    viewer = make_napari_viewer()
    data, kw, _ = anisotropic_sample()[0]
    img2d = viewer.add_image(data[5].copy(), name="one slice")
    w = dock(viewer, "Train")
    assert w.layer_combo.layer() is img2d
    assert "2D" in w.layer_info.text()
    ckpt = tmp_path / "never.safetensors"
    w.path_edit.setText(str(ckpt))
    names = [lay.name for lay in viewer.layers]
    assert not w.start()
    assert any("2D" in m and "one slice" in m for m in notes), notes
    assert not w.running and w.thread is None and w.status_text == "idle"
    assert w.start_button.isEnabled() and not w.reconstruct_button.isEnabled()
    assert w.reconstruct() is None
    assert [lay.name for lay in viewer.layers] == names
    assert not ckpt.exists()


def test_film_self_supervised(viewer_with_crop, qtbot, tmp_path):
    """film (pair interpolator) trained self-supervised, (z-1, z+1) -> z, on the stack."""
    viewer, layer = viewer_with_crop
    w = dock(viewer, "Train")
    w.method_combo.setCurrentText("film")
    assert w.method_combo.currentText() == "film"
    assert not w.degradation_combo.isEnabled()
    ckpt = tmp_path / "film.safetensors"
    w.path_edit.setText(str(ckpt))
    w.steps_spin.setValue(10)
    assert w.start()
    qtbot.waitUntil(lambda: w.status_text in ("done", "failed"), timeout=TIMEOUT_MS)
    assert w.error is None, w.error
    assert w.result.steps == 10 and not w.result.stopped
    assert w.steps and w.steps[-1] == 10 and all(np.isfinite(w.losses))
    # the final validation saved the first best checkpoint -> preview from it
    assert w.preview is not None and w.preview.shape == ((33 - 1) * 4 + 1, 96)
    _, meta = load_checkpoint(ckpt, "film")
    assert meta["training"]["self_supervised"] is True
