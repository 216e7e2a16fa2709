"""A matplotlib figure drawn off the GUI thread and shown as a picture (issue #13: no stalls).

Drawing the Train widget's loss plot or the Evaluate widget's SSIM plot with matplotlib's Qt
canvas took 0.1-0.4 s of the GUI thread on a 2-core software-rendered machine (text layout,
constrained layout, Agg rasterising): the whole napari window froze that long at every
update. Here the figure belongs to a drawing thread: :meth:`BackgroundFigure.redraw` queues a
change (a function of the figure), the thread applies every queued change in order, rasterises
once with Agg and hands the picture to the GUI thread, which only swaps a pixmap.

Only the drawing thread touches the figure after construction; read its artists from the GUI
thread when :attr:`BackgroundFigure.pending` is False (tests, screenshots).
"""
from __future__ import annotations

import threading
from typing import Callable

from qtpy.QtCore import QObject, QSize, Qt, QTimer, Signal
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import QLabel, QSizePolicy


#: The first draw (which makes the figure) waits this long after the widget is made.
FIRST_DRAW_DELAY_MS = 500


class _Bridge(QObject):
    drawn = Signal(object, int)  # (QImage, generation): queued into the GUI thread


class BackgroundFigure(QLabel):
    """A QLabel showing a matplotlib :class:`~matplotlib.figure.Figure` rendered off-thread.

    ``figsize`` and ``dpi`` give the preferred size; the figure is re-rendered at the
    widget's size whenever that changes.
    """

    def __init__(self, figsize=(4.0, 2.4), dpi: int = 90, min_height: int = 170,
                 parent=None, setup: Callable | None = None, **figure_kw):
        super().__init__(parent)
        #: the Figure, made on the drawing thread by the first draw (matplotlib's import and
        #: the figure's making are 0.3-0.5 s the GUI would freeze for when the dock opens);
        #: ``setup(figure)`` runs there first, before any change
        self.figure = None
        self._figure_args = (figsize, dpi, figure_kw, setup)
        self._agg = None
        self._dpi = dpi
        self._hint = QSize(int(figsize[0] * dpi), int(figsize[1] * dpi))
        self.setMinimumHeight(min_height)
        self.setMinimumWidth(80)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self._lock = threading.Lock()
        self._started = False   # the first draw has been asked for (see _first_draw)
        self._changes: list[Callable] = []
        self._queued = False    # a draw is wanted (changes or a new size)
        self._drawing = False   # the drawing thread is alive
        self._generation = 0    # of the latest request; older pictures are not shown
        self._shown = 0
        self.draws = 0          # pictures rendered (for tests)
        self._bridge = _Bridge(self)  # deleted with the widget: a late picture is dropped
        self._bridge.drawn.connect(self._show)
        # the figure (matplotlib's import, setup) is made by the first draw, off the GUI
        # thread, once the dock has been laid out: together with the layout it was 0.3-0.6 s
        # of GIL contention here (docs/benchmarks.md 10.11); resizes before that wait for it
        QTimer.singleShot(FIRST_DRAW_DELAY_MS, self._first_draw)

    def _first_draw(self):
        self._started = True
        try:
            self.redraw()
        except RuntimeError:  # the widget was deleted meanwhile
            pass

    # -- sizes: the picture never drives the layout ------------------------------------------

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt)
        return self._hint

    def minimumSizeHint(self) -> QSize:  # noqa: N802 (Qt)
        return QSize(self.minimumWidth(), self.minimumHeight())

    def resizeEvent(self, event):  # noqa: N802 (Qt)
        super().resizeEvent(event)
        self.redraw()

    # -- drawing -------------------------------------------------------------------------------

    @property
    def pending(self) -> bool:
        """Changes queued or being drawn, or a drawn picture not yet shown."""
        with self._lock:
            return self._queued or self._drawing or self._shown != self._generation

    def redraw(self, change: Callable | None = None) -> None:
        """Queue ``change(figure)`` (None: only draw again) and draw soon, off the GUI thread."""
        w, h = self.width(), self.height()
        ratio = float(self.devicePixelRatioF())
        with self._lock:
            if change is not None:
                self._changes.append(change)
            self._size = (w, h, ratio)
            self._queued = True
            self._generation += 1
            if self._drawing or not self._started:
                return
            self._drawing = True
        threading.Thread(target=self._work, name="napari-zup figure", daemon=True).start()

    def _work(self):
        while True:
            with self._lock:
                if not self._queued:
                    self._drawing = False
                    return
                changes, self._changes = self._changes, []
                (w, h, ratio), generation = self._size, self._generation
                self._queued = False
            try:
                image = self._render(changes, w, h, ratio)
            except Exception as exc:  # a bug in a change: say so, keep the widget alive
                import logging

                logging.getLogger(__name__).exception("figure drawing failed: %s", exc)
                image = None
            try:
                self._bridge.drawn.emit(image, generation)
            except RuntimeError:  # the widget was deleted meanwhile
                with self._lock:
                    self._drawing = False
                return

    def _render(self, changes, w, h, ratio):
        if self.figure is None:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure

            figsize, dpi, figure_kw, setup = self._figure_args
            figure = Figure(figsize=figsize, dpi=dpi, **figure_kw)
            self._agg = FigureCanvasAgg(figure)
            if setup is not None:
                setup(figure)
            self.figure = figure
        for change in changes:
            change(self.figure)
        if w >= 20 and h >= 20:  # laid out: draw at the widget's size
            self.figure.set_size_inches(w * ratio / self._dpi, h * ratio / self._dpi,
                                        forward=False)
        self._agg.draw()
        buf = self._agg.buffer_rgba()
        image = QImage(bytes(buf), buf.shape[1], buf.shape[0], buf.shape[1] * 4,
                       QImage.Format.Format_RGBA8888).copy()  # owns its pixels
        image.setDevicePixelRatio(ratio)
        self.draws += 1
        return image

    def _show(self, image, generation):
        with self._lock:
            self._shown = max(self._shown, generation)
        if image is not None:
            try:
                self.setPixmap(QPixmap.fromImage(image))
            except RuntimeError:  # the widget was deleted meanwhile
                pass
