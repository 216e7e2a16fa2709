"""BackgroundFigure (_qt/_figure.py): matplotlib figures drawn off the GUI thread, shown as a
picture; the Train and Evaluate widgets' plots use it (issue #13: no GUI stalls)."""
import threading
import time

import numpy as np
import pytest

pytestmark = pytest.mark.gui


@pytest.fixture
def fig_widget(qtbot):
    from napari_zup._qt._figure import BackgroundFigure

    w = BackgroundFigure(figsize=(3, 2), dpi=50, min_height=60, facecolor="#ff0000")
    qtbot.addWidget(w)
    w.resize(150, 100)
    w.show()
    qtbot.waitExposed(w)
    return w


def _pixels(w):
    img = w.pixmap().toImage().convertToFormat(w.pixmap().toImage().Format.Format_RGBA8888)
    buf = img.constBits()
    buf.setsize(img.sizeInBytes())
    return np.frombuffer(buf, np.uint8).reshape(img.height(), img.bytesPerLine() // 4, 4)


def test_changes_run_off_the_gui_thread_in_order_and_the_picture_shows_them(qtbot, fig_widget):
    w = fig_widget
    main = threading.get_ident()
    seen = []

    def change(tag, colour=None):
        def f(fig):
            seen.append((tag, threading.get_ident()))
            if colour:
                fig.set_facecolor(colour)
            time.sleep(0.05)  # a slow draw: later requests pile up meanwhile
        return f

    w.redraw(change("a"))
    for k in range(5):
        w.redraw(change(f"b{k}"))
    w.redraw(change("c", "#0000ff"))
    assert w.pending
    qtbot.waitUntil(lambda: not w.pending, timeout=10_000)
    assert [t for t, _ in seen] == ["a", "b0", "b1", "b2", "b3", "b4", "c"]  # all, in order
    assert all(ident != main for _, ident in seen)
    assert w.draws < len(seen)  # the piled-up changes made one draw, not one each
    px = _pixels(w)
    assert px.shape[0] >= 90 and px.shape[1] >= 140  # drawn at the widget's size
    assert tuple(px[px.shape[0] // 2, px.shape[1] // 2, :3]) == (0, 0, 255)  # the last change


def test_gui_thread_stays_free_while_a_slow_figure_draws(qtbot, fig_widget):
    """A change that holds its thread for 0.6 s leaves the GUI thread's timers running."""
    from qtpy.QtCore import QTimer

    ticks = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    fig_widget.redraw(lambda fig: time.sleep(0.6))
    qtbot.waitUntil(lambda: not fig_widget.pending, timeout=10_000)
    timer.stop()
    assert len(ticks) > 10
    assert np.max(np.diff(ticks)) < 0.3


def test_a_failing_change_is_logged_and_the_widget_keeps_working(qtbot, fig_widget, caplog):
    def bad(fig):
        raise ValueError("broken change")

    fig_widget.redraw(bad)
    qtbot.waitUntil(lambda: not fig_widget.pending, timeout=10_000)
    assert "broken change" in caplog.text
    fig_widget.redraw(lambda fig: fig.set_facecolor("#00ff00"))
    qtbot.waitUntil(lambda: not fig_widget.pending, timeout=10_000)
    px = _pixels(fig_widget)
    assert tuple(px[px.shape[0] // 2, px.shape[1] // 2, :3]) == (0, 255, 0)


def test_a_widget_deleted_while_its_figure_draws_drops_the_picture(qtbot):
    """Closing a dock while its plot is drawn: no exception in the event loop or the thread
    (pytest-qt fails the test on an exception raised in a Qt slot)."""
    from qtpy.QtWidgets import QApplication

    from napari_zup._qt._figure import BackgroundFigure

    w = BackgroundFigure(figsize=(2, 2), dpi=50)
    w.show()
    w.redraw(lambda fig: time.sleep(0.3))
    w.deleteLater()
    QApplication.processEvents()
    errors = []
    hook = threading.excepthook
    threading.excepthook = lambda args: errors.append(args.exc_value)
    try:
        t_end = time.perf_counter() + 1.0
        while time.perf_counter() < t_end:
            QApplication.processEvents()
            time.sleep(0.01)
    finally:
        threading.excepthook = hook
    assert errors == []
