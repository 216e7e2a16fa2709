"""Compare widget in a real viewer (pytest-qt under Xvfb): every registered method offered
(learned ones with their checkpoint), panels in a fixed order whatever the speed of each
method, panel names removed with the grid. Small crops of the real FIB-SEM sample."""
import shutil
import time

import numpy as np
import pytest

from napari_zup._sample_data import anisotropic_sample
from napari_zup.methods import base, method_names
from napari_zup.methods.classical import Linear

pytestmark = pytest.mark.gui

TIMEOUT_MS = 120_000


class SlowLinear(Linear):
    """Linear interpolation that takes 40 ms per slice (a slow method next to fast ones)."""

    info = base.MethodInfo(name="slow-test", kind="pair",
                           description="linear, slowed down for the test")

    def render(self, block, positions, **kw):
        time.sleep(0.04 * len(positions))
        return super().render(block, positions, **kw)


@pytest.fixture
def slow_method(monkeypatch):
    base._load_builtin()
    # first in the registry, so that it runs first and the fast ones after it
    monkeypatch.setattr(base, "_REGISTRY", {"slow-test": base._Entry(SlowLinear.info, SlowLinear),
                                            **base._REGISTRY})
    return "slow-test"


@pytest.fixture
def small_viewer(make_napari_viewer):
    viewer = make_napari_viewer()
    data, kw, _ = anisotropic_sample()[0]
    layer = viewer.add_image(data[:6, :64, :64].copy(), **kw)
    layer.contrast_limits = (30, 220)
    return viewer, layer


def _wait(qtbot, w):
    qtbot.waitUntil(lambda: not w.running, timeout=TIMEOUT_MS)


def test_compare_offers_every_registered_method_with_checkpoint_ranges(small_viewer):
    from napari_zup._qt import CompareWidget

    viewer, _ = small_viewer
    w = CompareWidget(viewer)
    assert list(w.methods.boxes) != [] and set(w.methods.boxes) == set(method_names())
    for m in ("film", "tsain", "niiv", "a2i"):
        assert m in w.methods.checkpoint_combos
        assert w.methods.checkpoint_combos[m].currentText() == "bundled"
        assert "trained ×" in w.methods.checkpoint_labels[m].text()
    assert "trained ×1–×8" in w.methods.checkpoint_labels["film"].text()
    assert "linear" not in w.methods.checkpoint_combos
    # a factor outside a checkpoint's trained range is said in the dock
    w.methods.set_selected(["film"])
    w.factor_spin.setValue(12)
    assert "×12" in w.factor_note.text() and "film" in w.factor_note.text()
    w.factor_spin.setValue(4)
    assert w.factor_note.text() == ""


def test_slow_and_fast_methods_end_up_in_a_fixed_panel_order(qtbot, small_viewer,
                                                            slow_method):
    from napari_zup._qt import CompareWidget

    viewer, layer = small_viewer
    other = viewer.add_image(np.zeros((6, 64, 64), np.uint8), name="unrelated",
                             scale=layer.scale, units=layer.units)
    w = CompareWidget(viewer)
    w.layer_combo.set_layer(layer)
    w.factor_spin.setValue(4)
    order = ["nearest", slow_method, "linear", "cubic"]
    for attempt in range(2):  # a second comparison re-lays out the new results
        w.methods.set_selected(order)
        # the box order is the registry's: the slots follow it, not the click order
        slots = [m for m in w.methods.boxes if m in order]
        assert w.start()
        _wait(qtbot, w)
        names = [f"{layer.name} · {m} ×4" + ("" if attempt == 0 else " [2]") for m in slots]
        layers = list(viewer.layers)
        assert [lay.name for lay in layers[:5]] == [layer.name] + names
        assert all(lay.visible for lay in layers[:5])
        assert not any(lay.visible for lay in layers[5:])  # others (and older results) hidden
        g = viewer.canvas.grid
        assert g.enabled
        positions = [g.position(i, layers) for i in range(5)]
        assert len(set(positions)) == 5 and (-1, -1) not in positions
        assert positions[0] == (0, 0)
        for lay in layers[1:5]:
            assert tuple(lay.contrast_limits) == (30, 220)
            assert lay.metadata["zup"]["status"] == "done"
            assert lay.data.shape == (21, 64, 64)
        assert w.status.text().startswith("4 of 4 methods done")
    assert other in viewer.layers and not other.visible


def test_panel_names_are_in_the_dock_not_on_the_canvas(qtbot, small_viewer):
    """Names drawn on the canvas in grid mode crashed napari once a named layer was removed
    and another added (segfault in the GL driver): the dock says which panel is which."""
    from napari_zup._qt import CompareWidget

    viewer, layer = small_viewer
    w = CompareWidget(viewer)
    w.methods.set_selected(["linear", "nearest"])
    assert w.start()
    _wait(qtbot, w)
    assert viewer.canvas.grid.enabled
    assert not any(lay.name_overlay.visible for lay in viewer.layers)
    overlays = getattr(viewer.canvas, "overlays", None)   # napari >= 0.9; older: text_overlay
    text_overlay = overlays.text if overlays is not None else viewer.text_overlay
    assert not text_overlay.visible
    text = w.panels.text()
    names = [lay.name.replace(f"{layer.name} · ", "") for lay in w.results] + ["input"]
    pos_of = {lay.name.replace(f"{layer.name} · ", ""): lay for lay in w.results}
    pos_of["input"] = layer
    assert all(n in text for n in names) and text.count("|") == len(names) - 1
    # the caption follows napari's own grid placement
    pos = {n: tuple(viewer.canvas.grid.position(list(viewer.layers).index(lay),
                                                  list(viewer.layers)))
           for n, lay in pos_of.items()}
    order = sorted(names, key=lambda n: pos[n])
    assert [text.index(n) for n in order] == sorted(text.index(n) for n in order)
    # removing a result and adding a layer afterwards (what crashed) works
    viewer.layers.remove(w.results[0])
    viewer.add_image(np.zeros((5, 16, 16), np.uint8))
    qtbot.wait(200)


def test_learned_methods_run_in_compare_with_bundled_and_chosen_checkpoints(
        qtbot, small_viewer, tmp_path):
    from napari_zup._qt import CompareWidget
    from napari_zup.checkpoints import default_checkpoint
    from napari_zup.engine import reconstruct

    viewer, layer = small_viewer
    mine = tmp_path / "my_film.safetensors"
    shutil.copy(default_checkpoint("film"), mine)
    w = CompareWidget(viewer)
    w.factor_spin.setValue(2)
    w.methods.set_selected(["linear", "film", "tsain"])
    w.methods.set_checkpoint("tsain", mine.with_name("missing.safetensors"))
    assert not w.start()  # a chosen file that is gone is refused before anything runs
    w.methods.set_checkpoint("tsain", None)
    w.methods.set_checkpoint("film", mine)
    assert "trained ×1–×8" in w.methods.checkpoint_labels["film"].text()
    assert w.start()
    _wait(qtbot, w)
    film = viewer.layers[f"{layer.name} · film [my_film] ×2"]
    tsain = viewer.layers[f"{layer.name} · tsain ×2"]
    assert film.metadata["zup"]["method_params"] == {"checkpoint": str(mine)}
    ref = reconstruct(np.asarray(layer.data), "film", 2)
    assert film.data.shape == ref.shape == (11, 64, 64)
    assert np.abs(film.data.astype(int) - ref.astype(int)).max() <= 1
    assert tsain.metadata["zup"]["status"] == "done" and tsain.data[1].any()
    assert not np.array_equal(film.data, viewer.layers[f"{layer.name} · linear ×2"].data)


def test_checkpoint_summary_says_what_a_checkpoint_was_adapted_on(tmp_path):
    from napari_zup._qt._methods import checkpoint_summary
    from napari_zup.checkpoints import default_checkpoint, load_checkpoint, save_checkpoint

    state, meta = load_checkpoint(default_checkpoint("film"))
    meta = dict(meta, adapted_on={"file": "my_stack.tif", "steps": 40})
    meta.pop("tensors_sha256", None)
    path = save_checkpoint(tmp_path / "adapted.safetensors", state, meta)
    assert checkpoint_summary("film", path) == "trained ×1–×8, adapted on my_stack.tif"
    assert checkpoint_summary("film", path, short=True) == "trained ×1–×8, adapted"
    assert "on fibsem_flyem" in checkpoint_summary("film")


def test_laying_out_an_unchanged_grid_again_touches_no_layer(small_viewer, qtbot):
    """napari refreshes, re-thumbnails and rebuilds the grid's scene graph on every
    assignment of ``visible`` / ``contrast_limits``, also of the value a layer has: laying
    out a grid that is already right must assign nothing (issue #13: GUI stalls)."""
    from napari_zup._qt import CompareWidget

    viewer, layer = small_viewer
    other = viewer.add_image(np.zeros((6, 64, 64), np.uint8), name="unrelated")
    w = CompareWidget(viewer)
    w.layer_combo.set_layer(layer)
    assert w.hide_others.isChecked()  # the default
    w.methods.set_selected(["nearest", "linear"])
    assert w.start()
    _wait(qtbot, w)
    assert [lay.visible for lay in w.result_layers()] == [True, True] and not other.visible
    fired = []
    for lay in viewer.layers:
        lay.events.visible.connect(lambda e, n=lay.name: fired.append(("visible", n)))
        lay.events.contrast_limits.connect(lambda e, n=lay.name: fired.append(("limits", n)))
    w._layout()
    assert fired == []
    layer.contrast_limits = (40, 200)
    fired.clear()
    w._layout()  # the results follow the input's new contrast, nothing else is touched
    assert sorted(fired) == sorted(("limits", lay.name) for lay in w.result_layers())
    assert all(tuple(lay.contrast_limits) == (40, 200) for lay in w.result_layers())
