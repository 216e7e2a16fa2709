"""The Train widget's live panel: the training-loss curve and the input / restored xz planes."""
from __future__ import annotations

import numpy as np


def _unit_plane(plane, dtype):
    from ..methods.base import dtype_value_range

    plane = np.asarray(plane, np.float32)
    rng = dtype_value_range(np.dtype(dtype))
    if rng is None:
        finite = plane[np.isfinite(plane)]
        rng = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    lo, hi = rng
    return np.clip((plane - lo) / ((hi - lo) or 1.0), 0, 1)


def _fmt_s(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    m, s = divmod(seconds, 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class TrainPlot:
    """The loss curve and the two xz planes, drawn off the GUI thread (display only;
    :class:`~napari_zup._qt._figure.BackgroundFigure`)."""

    def __init__(self, layout):
        from ._figure import BackgroundFigure

        self.im_in = None
        self.im_out = None
        self.canvas = BackgroundFigure(figsize=(3.4, 3.9), dpi=90, min_height=320,
                                       facecolor="#262930", setup=self._setup)
        layout.addWidget(self.canvas)

    def _setup(self, fig):  # on the figure's drawing thread, before any change
        self.figure = fig
        top = fig.add_gridspec(1, 1, left=0.17, right=0.97, top=0.94, bottom=0.58)
        bottom = fig.add_gridspec(1, 2, left=0.02, right=0.98, top=0.47, bottom=0.01,
                                  wspace=0.06)
        self.ax_loss = fig.add_subplot(top[0, 0])
        self.ax_in = fig.add_subplot(bottom[0, 0])
        self.ax_out = fig.add_subplot(bottom[0, 1])
        fg = "#d0d4da"
        ax = self.ax_loss
        ax.set_facecolor("#1e2027")
        ax.tick_params(colors=fg, labelsize=7)
        for s in ax.spines.values():
            s.set_color("#5a5f6a")
        ax.set_title("training loss", color=fg, fontsize=8)
        ax.set_xlabel("step", color=fg, fontsize=7, labelpad=1)
        (self.loss_line,) = ax.plot([], [], color="#5ab4f0", lw=1.2, marker=".", ms=3)
        for a, title in ((self.ax_in, "input xz (nearest)"), (self.ax_out, "restored xz")):
            a.set_facecolor("#1e2027")
            a.set_xticks([])
            a.set_yticks([])
            a.set_title(title, color=fg, fontsize=8)

    def reset(self):
        self.canvas.redraw(lambda fig: self._reset())

    def _reset(self):
        self.loss_line.set_data([], [])
        self.ax_loss.set_yscale("linear")
        for a in (self.ax_in, self.ax_out):
            for im in list(a.images):
                im.remove()
        self.im_in = self.im_out = None

    def redraw(self, steps, losses, preview, input_plane):
        """Queue a redraw with these data (copied: the caller keeps appending)."""
        steps, losses = list(steps), list(losses)
        self.canvas.redraw(lambda fig: self._update(steps, losses, preview, input_plane))

    def _update(self, steps, losses, preview, input_plane):  # on the drawing thread
        if steps:
            self.loss_line.set_data(steps, losses)
            # axes fitted to the points from the first one on (a single point gets a margin)
            x0, x1 = min(steps), max(steps)
            lo, hi = min(losses), max(losses)
            pad = (hi - lo) * 0.08 or abs(hi) * 0.1 or 1e-3
            self.ax_loss.set_xlim(x0 - 0.5 if x0 == x1 else x0, x1 + 0.5 if x0 == x1 else x1)
            if hi > 0 and lo > 0 and hi / lo > 20:
                self.ax_loss.set_yscale("log")
                self.ax_loss.set_ylim(lo / 1.2, hi * 1.2)
            else:
                self.ax_loss.set_ylim(lo - pad, hi + pad)
        if preview is not None:
            if self.im_out is None or self.im_out.get_array().shape != np.shape(preview):
                for a in (self.ax_in, self.ax_out):
                    for im in list(a.images):
                        im.remove()
                kw = {"cmap": "gray", "vmin": 0.0, "vmax": 1.0, "interpolation": "nearest",
                      "aspect": "equal"}  # isotropic pixels: the true xz geometry
                self.im_out = self.ax_out.imshow(preview, **kw)
                if input_plane is not None:
                    self.im_in = self.ax_in.imshow(input_plane, **kw)
            else:
                self.im_out.set_data(preview)
