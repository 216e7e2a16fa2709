"""Evaluate widget: the drop-and-restore protocol of docs/evaluation.md on an isotropic
layer, or self-evaluation on an anisotropic one (keep every second section, restore the
others, score against the real ones), with restored layers, error maps |R - G| (one method at
a time), a metrics table and the mean SSIM by position between knots.

All numbers come from :func:`napari_zup.evaluation.evaluate_events` /
:func:`napari_zup.evaluation.self_evaluate_events` (the functions behind ``zup evaluate`` and
``zup evaluate --self``); the widget only displays them.
"""
from __future__ import annotations

import threading
import time

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
)

from .. import grid, io
from ..engine import ReconstructionCancelled
from ..evaluation import (
    SELF_EVAL_LABEL,
    SELF_EVAL_MIN_SECTIONS,
    decimate,
    evaluate_events,
    self_evaluate_events,
)
from ._common import (
    DockWidget,
    LayerCombo,
    PassSteps,
    anisotropy,
    layer_problem,
    layer_units,
    layer_volume,
    notify_error,
    notify_info,
    notify_warning,
    progress_bar,
    set_contrast_limits,
    set_visible,
    start_worker,
    unique_name,
    wrap_label,
)
from ._methods import MethodPicker

#: "texture": high-frequency energy of the restored slices / that of the knots (1 = as
#: textured as real sections; below 1: smoother, seen as banding in xz/yz).
COLUMNS = ("method", "PSNR dB", "SSIM", "F-PSNR dB", "IE", "texture", "s/slice")
#: Error maps share one contrast: 0 .. this percentile of all methods' restored errors.
ERROR_PERCENTILE = 99.9
#: Layers whose z step / pixel size exceeds this get self-evaluation by default.
ANISOTROPIC = 1.5
MODE_DROP = "drop and restore (isotropic layer)"
MODE_SELF = "self-evaluation (anisotropic layer)"


def error_colormap():
    """Colormap of the error maps: transparent for small errors, then inferno's bright half
    with rising opacity, so the EM stays visible where a method is right."""
    from matplotlib import colormaps
    from napari.utils.colormaps import Colormap

    t = np.linspace(0.0, 1.0, 32)
    colors = colormaps["inferno"](0.35 + 0.65 * t)
    colors[:, 3] = np.clip((t - 0.12) / 0.55, 0.0, 1.0) ** 0.8
    return Colormap(colors=colors, controls=t, name="zup error |R-G|")


def colorbar_css(cmap) -> str:
    """A Qt style sheet drawing ``cmap`` as a horizontal gradient (the dock's colour bar)."""
    stops = ", ".join(
        f"stop:{c:.3f} rgba({int(255 * r)}, {int(255 * g)}, {int(255 * b)}, {int(255 * a)})"
        for c, (r, g, b, a) in zip(cmap.controls, cmap.colors))
    return ("background: qlineargradient(x1:0, y1:0, x2:1, y2:0, " + stops + ");"
            "border: 1px solid #606060;")


def ssim_by_position(score, factor: int) -> dict[int, float]:
    """Mean SSIM of the restored slices at each position k (1 .. F-1) between two knots."""
    ps = score.per_slice
    by: dict[int, list[float]] = {}
    for i, v in zip(ps["index"], ps["ssim"]):
        by.setdefault(int(i) % factor, []).append(v)
    return {k: float(np.mean(v)) for k, v in sorted(by.items()) if k}


def score_cells(method: str, score) -> list[str]:
    """Table cells of one method, formatted as ``zup evaluate`` prints them."""
    return [method, f"{score.psnr:.2f}", f"{score.ssim:.4f}", f"{score.fpsnr:.2f}",
            f"{score.ie:.2f}", f"{score.texture:.3f}", f"{score.seconds_per_slice:.4f}"]


class EvaluateWidget(DockWidget):
    """Score the checked methods on a layer: drop and restore (keep every F-th slice of an
    isotropic layer) or self-evaluation (keep every second section of an anisotropic one),
    restoring the dropped slices with each method and scoring them against the real ones."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(napari_viewer, parent)
        self.scores: dict = {}
        self.restored_layers: dict = {}
        self.error_layers: dict = {}
        self.error_limit = None
        self.worker = None
        self._layer = None
        self._cancel = threading.Event()
        self._shown = threading.Event()
        self._pbar = None
        self._in_pbar = False
        # a method's restored layer, error map and table row/plot each get an event-loop pass
        # (together they froze the GUI for 0.7-0.8 s); the run's end waits its turn
        self._steps = PassSteps()
        self._busy = False
        self._ui_t = 0.0
        self.cmap = error_colormap()
        form = QFormLayout()
        self.layer_combo = LayerCombo(self.viewer)
        self.mode_combo = QComboBox()
        self.mode_combo.addItems([MODE_DROP, MODE_SELF])
        self.mode_combo.setToolTip(
            "drop and restore: keep every F-th slice of an isotropic stack (ground truth "
            "known). Self-evaluation: keep every second section of your anisotropic stack and "
            "restore the others; scores are at twice the real spacing")
        self.factor_spin = QSpinBox()
        self.factor_spin.setRange(2, 32)
        self.factor_spin.setValue(4)
        self.factor_spin.setToolTip("keep every F-th slice (G[::F]), restore the others")
        form.addRow("image", self.layer_combo)
        form.addRow("protocol", self.mode_combo)
        form.addRow("factor F", self.factor_spin)
        self.layout().addLayout(form)
        self.mode_note = wrap_label()
        self.layout().addWidget(self.mode_note)
        self.methods = MethodPicker(checked=("linear", "cubic", "of-linear"))
        self.layout().addWidget(self.methods)
        self.add_run_buttons()
        self.add_progress()

        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setDefaultSectionSize(
            self.table.fontMetrics().height() + 6)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(True)
        self._fit_table()
        self.layout().addWidget(self.table)

        maps = QHBoxLayout()
        self.map_combo = QComboBox()
        self.map_combo.setToolTip("the method whose restored slices and error map are shown")
        self.map_combo.currentTextChanged.connect(self.show_map)
        maps.addWidget(QLabel("error map of"))
        maps.addWidget(self.map_combo, 1)
        self.layout().addLayout(maps)
        bar = QHBoxLayout()
        self.bar_lo = QLabel("0")
        self.colorbar = QLabel()
        self.colorbar.setFixedHeight(12)
        self.colorbar.setStyleSheet(colorbar_css(self.cmap))
        self.bar_hi = QLabel("–")
        bar.addWidget(self.bar_lo)
        bar.addWidget(self.colorbar, 1)
        bar.addWidget(self.bar_hi)
        self.layout().addLayout(bar)
        self.bar_note = wrap_label("|R − G| (fraction of the intensity range), one scale for "
                                   "all; small errors transparent")
        self.bar_note.setStyleSheet("color: #a0a0a0")
        self.layout().addWidget(self.bar_note)
        self.side_button = QPushButton("side by side (one panel per method)")
        self.side_button.setToolTip("grid view: each method's restored slices with its error "
                                    "map on top, the ground truth in the last panel")
        self.side_button.clicked.connect(self.side_by_side)
        self.layout().addWidget(self.side_button)
        self._make_plot()
        self.run_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        self.layer_combo.currentIndexChanged.connect(self._layer_changed)
        self.mode_combo.currentTextChanged.connect(self._mode_changed)
        self._layer_changed()
        self.preload_soon(("skimage.metrics",))  # the scoring's (evaluation.slice_metrics)

    # -- form ---------------------------------------------------------------------------------

    @property
    def self_mode(self) -> bool:
        return self.mode_combo.currentText() == MODE_SELF

    def _layer_changed(self, *_):
        layer = self.layer_combo.layer()
        if layer is getattr(self, "_mode_layer", None):
            return  # the same layer at another list position: keep the user's protocol
        self._mode_layer = layer
        if layer is not None and layer_problem(layer) is None:
            self.mode_combo.setCurrentText(
                MODE_SELF if anisotropy(layer) > ANISOTROPIC else MODE_DROP)
        self._mode_changed()

    def _mode_changed(self, *_):
        if self.self_mode and self.factor_spin.isEnabled():
            self._drop_factor = self.factor_spin.value()
            self.factor_spin.setValue(2)  # self-evaluation keeps every second section
        elif not self.self_mode and not self.factor_spin.isEnabled():
            self.factor_spin.setValue(getattr(self, "_drop_factor", 4))
        self.factor_spin.setEnabled(not self.self_mode)
        layer = self.layer_combo.layer()
        if not self.self_mode:
            self.mode_note.setText(
                "Keeps every F-th slice, restores the others with each method and scores only "
                "the restored slices against the original (PSNR, SSIM, Fourier PSNR, IE; "
                "protocol of EVALUATION.md, numbers equal to zup evaluate).")
            return
        spacing = ""
        if layer is not None and layer_problem(layer) is None:
            sz = float(layer.scale[-3])
            unit = (layer_units(layer) or ("",))[-3]
            unit = io.unit_symbol(unit) or unit
            unit = "" if unit in ("pixel", "") else f" {unit}"
            spacing = f" ({sz:g}{unit} → {2 * sz:g}{unit})"
        self.mode_note.setText(
            "Keeps every second section, restores the others and scores them against the "
            "real ones (zup evaluate --self). The scores are at twice the real spacing"
            f"{spacing}: they rank the methods on this stack.")

    # -- plot ---------------------------------------------------------------------------------

    def _make_plot(self):
        from ._figure import BackgroundFigure

        # drawn off the GUI thread (constrained layout + text: 0.1-0.3 s per draw here)
        self.canvas = BackgroundFigure(figsize=(4, 2.4), dpi=90, min_height=170,
                                       facecolor="#262930", layout="constrained",
                                       setup=self._setup_plot)
        self.layout().addWidget(self.canvas, 1)  # the plot takes the spare height

    def _setup_plot(self, figure):  # on the figure's drawing thread, before any change
        self.figure = figure
        self.ax = figure.add_subplot()
        self._style_axes()

    def _style_axes(self):
        ax = self.ax
        ax.set_facecolor("#262930")
        for side in ax.spines.values():
            side.set_color("#9a9a9a")
        ax.tick_params(colors="#d0d0d0", labelsize=8)
        ax.set_ylabel("mean SSIM", color="#d0d0d0", fontsize=9)
        ax.grid(alpha=0.2)

    def _plot(self):
        """Mean SSIM per method at each position between two kept slices (F = 2: one bar
        per method), legend outside the axes. The values are taken now; the figure is drawn
        on its own thread."""
        f = getattr(self, "_factor", 2)
        names = list(self.scores)
        by = {m: ssim_by_position(self.scores[m], f) for m in names}
        labels = [self._labels.get(m, m) for m in names]
        self.canvas.redraw(lambda fig: self._draw_plot(f, names, labels, by))

    def _draw_plot(self, f, names, labels, by):  # on the figure's drawing thread
        self.ax.clear()
        self._style_axes()
        if names and f == 2:
            vals = [by[m].get(1, np.nan) for m in names]
            colors = [f"C{k}" for k in range(len(names))]
            # horizontal bars: the method names stay readable however narrow the dock is
            pos = np.arange(len(names))[::-1]
            bars = self.ax.barh(pos, vals, color=colors, label=None)
            self.ax.bar_label(bars, fmt="%.3f", color="#d0d0d0", fontsize=7, padding=2)
            self.ax.set_yticks(pos, labels)
            lo, hi = np.nanmin(vals), np.nanmax(vals)
            self.ax.set_xlim(max(0.0, lo - 0.3 * (hi - lo) - 0.02),
                             min(1.0, hi + 0.25 * (hi - lo) + 0.02))
            self.ax.set_ylabel("")
            self.ax.set_title("mean SSIM of the restored slices", color="#d0d0d0",
                              fontsize=9)
        elif names:
            for k, m in enumerate(names):
                self.ax.plot([p / f for p in by[m]], list(by[m].values()), "o-", ms=4,
                             lw=1.5, color=f"C{k}", label=m)
            self.ax.set_xlim(0, 1)
            self.ax.set_xlabel("position between kept slices (0 and 1 = kept)",
                               color="#d0d0d0", fontsize=9)
            self.ax.legend(fontsize=8, facecolor="#262930", labelcolor="#d0d0d0",
                           edgecolor="#555555", loc="upper left", bbox_to_anchor=(1.02, 1.0),
                           borderaxespad=0.0)

    # -- run ----------------------------------------------------------------------------------

    def _refuse(self, message: str) -> bool:
        self.status.setText(f"<span style='color:#e8a33d'>{message}</span>")
        notify_error(f"Evaluate: {message}")
        return False

    def start(self):
        if self.worker is not None and self.worker.is_running:
            notify_error("Evaluate: an evaluation is already running; cancel it or wait")
            return False
        layer = self.layer_combo.layer()
        self_mode = self.self_mode
        f = 2 if self_mode else self.factor_spin.value()
        problem = layer_problem(layer, min_slices=1)
        if problem:
            return self._refuse(problem)
        n = layer_volume(layer).shape[0]
        if self_mode and n < SELF_EVAL_MIN_SECTIONS:
            return self._refuse(
                f"self-evaluation needs at least {SELF_EVAL_MIN_SECTIONS} sections (it keeps "
                f"every second one and restores the others); layer {layer.name!r} has {n}")
        if not self_mode and n < f + 1:
            return self._refuse(f"layer {layer.name!r} has {n} slices; drop and restore at "
                                f"×{f} needs at least {f + 1}")
        methods = self.methods.selected()
        if not methods:
            return self._refuse("check at least one method")
        try:
            params = {m: self.methods.params(m) for m in methods}
        except ValueError as exc:
            return self._refuse(str(exc))
        for note in self.methods.factor_notes(methods, f):
            notify_warning(f"Evaluate: {note}")
        if not self_mode and anisotropy(layer) > 1.05:
            s = tuple(float(v) for v in layer.scale[-3:])
            notify_info(f"Evaluate: layer {layer.name!r} has voxel {s[0]:g}×{s[1]:g}×{s[2]:g}, "
                        "not isotropic; drop and restore then measures slices "
                        f"{f}× further apart than they are. Self-evaluation is meant for it")
        self._layer, self._factor, self._methods = layer, f, methods
        self._self_mode = self_mode
        self._labels = {m: self.methods.label(m) for m in methods}
        self._clear_results()
        ground_truth = layer_volume(layer)
        n_kept = len(range(0, ground_truth.shape[0], f))
        self._n_out = grid.output_length(n_kept, f)
        total = self._n_out * len(methods)
        self._cancel = threading.Event()
        self.progress_bar.setRange(0, total)
        self.progress_bar.setValue(0)
        self.progress_bar.setVisible(True)
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.status.setText("")
        # napari's progress bar in the next event-loop pass (its creation repaints the layer
        # list and the activity dock: with the rest of the click one long pass)
        QTimer.singleShot(0, lambda: self._add_progress_bar(total, f))
        self._busy = True
        self._done_slices = 0
        self._shown = threading.Event()
        self.worker = start_worker(self._job, ground_truth, f, methods, params, self_mode,
                                   self._cancel, self._shown, on_yield=self._on_yield,
                                   on_return=self._on_return, on_error=self._on_error)
        return True

    def _add_progress_bar(self, total, f):
        if not self._busy or self._pbar is not None:
            return  # already over (a very short evaluation)
        self._in_pbar = True  # its processEvents may deliver slices: they only count
        try:
            self._pbar = progress_bar(total, f"evaluate ×{f}", self._done_slices)
        finally:
            self._in_pbar = False

    def _clear_results(self):
        self.scores, self.restored_layers, self.error_layers = {}, {}, {}
        self.error_limit = None
        self.table.setRowCount(0)
        self._fit_table()
        self.map_combo.blockSignals(True)
        self.map_combo.clear()
        self.map_combo.blockSignals(False)
        self.bar_hi.setText("–")
        self._plot()

    def cancel(self):
        self._cancel.set()

    #: the longest the next method waits for the previous one's results to be shown
    SHOW_WAIT_S = 2.0

    @staticmethod
    def _job(ground_truth, factor, methods, params, self_mode, cancel, shown=None):
        """Each method's events; after a method's result, the next one starts once the GUI
        has shown it (``shown``; at most SHOW_WAIT_S): computing while napari adds the
        result's layers made those passes 0.2-0.3 s (GIL contention)."""
        g = np.asarray(ground_truth)
        for m in methods:
            kw = {"method_params": params.get(m), "cancel": cancel, "keep_output": True,
                  "error_maps": True}
            events = (self_evaluate_events(g, m, **kw) if self_mode
                      else evaluate_events(g, factor, m, **kw))
            try:
                while True:
                    try:
                        event = next(events)
                    except StopIteration as stop:
                        score, recon, maps = stop.value
                        break
                    yield ("slice", m, event.payload[0])
            except ReconstructionCancelled:
                return "cancelled"
            finally:
                events.close()
            if shown is not None:
                shown.clear()
            yield ("method", m, (score, recon, maps))
            if shown is not None and m != methods[-1]:
                shown.wait(EvaluateWidget.SHOW_WAIT_S)
        return "done"

    def _on_yield(self, item):
        kind, method, payload = item
        if kind == "slice":
            self._done_slices += 1
            now = time.perf_counter()
            # a QProgressBar repaints at once on setValue and napari's progress bar processes
            # events (re-entrant calls): in software OpenGL each repaint of the window costs
            # tens of ms, so the dock and napari's bar update at most ~8 times a second
            if now - self._ui_t < 0.125:
                return
            self._ui_t = now
            self.progress_bar.setValue(self._done_slices)
            self.status.setText(f"{method}: slice {payload + 1}/{self._n_out}")
            if self._pbar is not None and not self._in_pbar:
                self._in_pbar = True
                try:
                    self._pbar.update(self._done_slices - self._pbar.n)
                finally:
                    self._in_pbar = False
            return
        score, recon, maps = payload
        self.progress_bar.setValue(self._done_slices)
        self._show_method(method, score, recon, maps)

    @property
    def busy(self) -> bool:
        """Computing, or still showing what was computed."""
        return self._busy or self._steps.pending or self.canvas.pending

    def _show_method(self, method, score, recon, maps):
        self._steps.add(lambda: self._add_restored_layer(method, score, recon))
        self._steps.add(lambda: self._add_error_layer(method, score, maps))
        self._steps.add(lambda: self._add_score(method, score))
        self._steps.add(self._shown.set)  # the next method computes from now on

    def _result_kwargs(self, method, score):
        layer = self._layer
        f = self._factor
        kw = {"scale": tuple(layer.scale[-3:]), "translate": tuple(layer.translate[-3:]),
              "axis_labels": ("z", "y", "x")}
        units = layer_units(layer)
        if units:
            kw["units"] = units
        protocol = (SELF_EVAL_LABEL if self._self_mode
                    else "EVALUATION.md: keep G[::F], restore, score restored")
        meta = {"zup": {"source_layer": layer.name, "method": method, "factor": f,
                        "protocol": protocol, "scores": score.summary()}}
        label = self._labels.get(method, method)
        tag = "self-eval ×2" if self._self_mode else f"×{f}"
        return label, tag, meta, kw

    def _add_restored_layer(self, method, score, recon):
        label, tag, meta, kw = self._result_kwargs(method, score)
        lay = self.viewer.add_image(
            recon, name=unique_name(self.viewer, f"{label} {tag} restored"),
            contrast_limits=tuple(self._layer.contrast_limits), metadata=meta, visible=False,
            **kw)
        self.restored_layers[method] = lay

    def _add_error_layer(self, method, score, maps):
        label, tag, meta, kw = self._result_kwargs(method, score)
        f = self._factor
        # One contrast for all error maps so that brighter means larger error everywhere.
        restored = grid.restored_output_indices(len(decimate(layer_volume(self._layer), f)), f)
        hi = float(np.percentile(maps[restored], ERROR_PERCENTILE)) if len(restored) else 1.0
        self.error_limit = max(self.error_limit or 0.0, hi, 1e-3)
        self.error_layers[method] = self.viewer.add_image(
            maps, name=unique_name(self.viewer, f"{label} {tag} |R-G|"),
            colormap=self.cmap, blending="translucent", opacity=1.0, metadata=meta,
            contrast_limits=(0.0, self.error_limit), visible=False, **kw)
        for lay in self.error_layers.values():
            set_contrast_limits(lay, (0.0, self.error_limit))
        self.bar_hi.setText(f"{self.error_limit:.3f}")

    def _add_score(self, method, score):
        label = self._labels.get(method, method)
        self.scores[method] = score
        row = self.table.rowCount()
        self.table.insertRow(row)
        for c, text in enumerate(score_cells(label, score)):
            self.table.setItem(row, c, QTableWidgetItem(text))
        self._fit_table()
        self._plot()
        self.map_combo.addItem(method)
        self.map_combo.setCurrentText(method)  # the newest result is the one shown
        self.show_map(method)

    def show_map(self, method: str):
        """Single view: the input, and the restored slices and error map of ``method`` only."""
        if method not in self.restored_layers:
            return
        layers = self.viewer.layers
        if self.viewer.canvas.grid.enabled:
            self.viewer.canvas.grid.enabled = False
        for m in self.restored_layers:
            for lay in (self.restored_layers[m], self.error_layers[m]):
                if lay in layers:
                    set_visible(lay, m == method)
        for lay in layers:  # older results and unrelated layers too
            if lay is not self._layer and lay not in (self.restored_layers[method],
                                                      self.error_layers[method]):
                set_visible(lay, False)  # only what changes: napari redraws on each
        if self._layer in layers:
            set_visible(self._layer, True)
        if self.error_layers[method] in layers:  # its controls in napari's layer panel
            layers.selection.active = self.error_layers[method]

    def _fit_table(self):
        t = self.table
        rows = sum(t.rowHeight(r) for r in range(t.rowCount()))
        # room for the horizontal scroll bar too: the columns are wider than a narrow dock,
        # and the bar would otherwise cover the last row
        bar = t.horizontalScrollBar().sizeHint().height()
        t.setFixedHeight(max(60, t.horizontalHeader().height() + rows + bar
                             + 2 * t.frameWidth() + 2))

    def side_by_side(self):
        """Grid mode, stride 2: panel k = restored layer of method k + its error map."""
        from ._compare import panel_caption

        layers = self.viewer.layers
        pairs = [(self.restored_layers[m], self.error_layers[m]) for m in self.scores
                 if self.restored_layers[m] in layers and self.error_layers[m] in layers]
        if not pairs:
            notify_error("Evaluate: run an evaluation first")
            return
        order = [lay for pair in pairs for lay in pair]
        if self._layer in layers:
            order.append(self._layer)
        for dest, lay in enumerate(order):  # these first, in this order; the rest after
            layers.move(layers.index(lay), dest)
        for lay in layers:
            set_visible(lay, lay in order)
        self.viewer.canvas.grid.stride = 2
        self.viewer.canvas.grid.enabled = True
        self.status.setText(panel_caption(self.viewer, order, source=self._layer)
                            + "; (+1) = with its error map")

    def _finish(self):
        self._busy = False
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.progress_bar.setVisible(False)
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None

    def _on_return(self, status):
        self._steps.add(lambda: self._returned(status))

    def _returned(self, status):
        self._finish()
        if status == "cancelled":
            self.status.setText(f"cancelled; {len(self.scores)} of {len(self._methods)} "
                                "methods scored")
            return
        best = max(self.scores, key=lambda m: self.scores[m].psnr)
        what = (f"{SELF_EVAL_LABEL}: kept every second section and restored"
                if self._self_mode else f"drop and restore at ×{self._factor} over")
        self.status.setText(f"{len(self.scores)} methods scored, {what} "
                            f"{next(iter(self.scores.values())).n_slices} slices; best PSNR: "
                            f"{self._labels.get(best, best)}. Error maps share the scale "
                            f"0..{self.error_limit:.3f}.")

    def _on_error(self, exc):
        self._steps.add(lambda: self._failed(exc))

    def _failed(self, exc):
        self._finish()
        self.status.setText(f"failed: {exc}")
        notify_error(f"Evaluate failed: {exc}")

