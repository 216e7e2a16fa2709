"""Heavy imports stay off napari's GUI thread and out of the runs (issue #13: no stalls;
docs/benchmarks.md 10.11): each widget's module is imported only when that widget is asked
for, the Reconstruct dock asks torch for a GPU in the background, a dock imports what its job
will need in the background once it is up, and the plots make their matplotlib figure on
their drawing thread."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import pytest

pytestmark = pytest.mark.gui
TIMEOUT_MS = 60_000


def test_a_widget_imports_only_its_own_module():
    code = textwrap.dedent("""
        import sys
        import napari_zup._qt as q
        others = ["_compare", "_evaluate", "_flow", "_reconstruct", "_train"]
        assert not [m for m in others if "napari_zup._qt." + m in sys.modules]
        assert q.CompareWidget.__name__ == "CompareWidget"
        assert "napari_zup._qt._compare" in sys.modules
        assert "napari_zup._qt._evaluate" not in sys.modules
        assert "torch" not in sys.modules and "matplotlib" not in sys.modules
        try:
            q.NoSuchWidget
        except AttributeError as exc:
            assert "NoSuchWidget" in str(exc)
        else:
            raise AssertionError("unknown name accepted")
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


def test_preload_shares_one_thread_per_module_and_reports_when_done(tmp_path, monkeypatch):
    from napari_zup._qt._common import preload

    gate = threading.Event()
    (tmp_path / "zup_slow_mod.py").write_text(
        "import builtins\nbuiltins._zup_gate.wait(30)\nVALUE = 7\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import builtins
    monkeypatch.setattr(builtins, "_zup_gate", gate, raising=False)
    monkeypatch.delitem(sys.modules, "zup_slow_mod", raising=False)

    first = preload(("zup_slow_mod",))
    second = preload(("zup_slow_mod",))          # still importing: the same thread to wait on
    assert first is not None and second is first and first.is_alive()
    gate.set()
    first.join(10)
    assert not first.is_alive() and sys.modules["zup_slow_mod"].VALUE == 7
    assert preload(("zup_slow_mod",)) is None     # imported: nothing to do


def test_reconstruct_lists_devices_once_torch_is_imported_in_the_background(
        make_napari_viewer, qtbot, monkeypatch):
    import napari_zup._qt._reconstruct as rec
    from napari_zup.devices import available_devices

    gate = threading.Event()
    thread = threading.Thread(target=gate.wait, args=(30,), daemon=True)
    thread.start()
    asked = []

    def fake_preload(modules):
        asked.append(tuple(modules))
        return thread if thread.is_alive() else None
    monkeypatch.setattr(rec, "preload", fake_preload)

    viewer = make_napari_viewer()
    w = rec.ReconstructWidget(viewer)
    qtbot.addWidget(w)
    w.method_combo.setCurrentText("film")
    assert ("torch",) in asked
    items = [w.device_combo.itemText(i) for i in range(w.device_combo.count())]
    assert items == ["auto"] and not w.device_combo.isEnabled()  # a run meanwhile: the best
    assert "torch" in w.device_combo.toolTip()      # says why it waits
    assert w.method_params()["device"] == "auto"
    w.method_combo.setCurrentText("linear")         # a classical method needs no torch
    assert [w.device_combo.itemText(i) for i in range(w.device_combo.count())] == ["cpu"]
    assert w.device_combo.toolTip() == ""
    w.method_combo.setCurrentText("film")
    gate.set()
    expected = [d for d in available_devices() if d in ("cpu", "cuda", "mps")]
    qtbot.waitUntil(lambda: w.device_combo.toolTip() == "", timeout=TIMEOUT_MS)
    assert [w.device_combo.itemText(i) for i in range(w.device_combo.count())] == expected
    assert w.device_combo.isEnabled() == (len(expected) > 1)


def test_train_dock_preloads_what_a_training_imports(make_napari_viewer, qtbot):
    from napari_zup._qt._train import TRAINING_MODULES, TrainWidget

    viewer = make_napari_viewer()
    w = TrainWidget(viewer)
    qtbot.addWidget(w)
    assert w.preloading                              # scheduled once the dock is up
    qtbot.waitUntil(lambda: not w.preloading, timeout=TIMEOUT_MS)
    assert all(m in sys.modules for m in TRAINING_MODULES)
    assert "torch._dynamo" in TRAINING_MODULES       # torch.optim imports it when constructed


def test_the_plot_figure_is_made_on_the_drawing_thread(qtbot):
    from napari_zup._qt._figure import BackgroundFigure

    where = []
    w = BackgroundFigure(figsize=(3, 2), dpi=50, min_height=60,
                         setup=lambda fig: where.append((threading.get_ident(), fig)))
    qtbot.addWidget(w)
    w.resize(150, 100)
    w.show()
    qtbot.waitUntil(lambda: not w.pending and w.draws >= 1, timeout=TIMEOUT_MS)
    assert len(where) == 1                           # setup once, whatever the draws
    assert where[0][0] != threading.get_ident()      # not on the GUI thread
    assert w.figure is where[0][1]
