"""Evaluate widget: the drop-and-restore protocol of ../shared/EVALUATION.md on an isotropic
layer, with restored layers, error maps |R - G|, a metrics table and SSIM along z.

All numbers come from :func:`napari_zup.evaluation.evaluate_method` (the same function as
``zup evaluate``); the widget only displays them.
"""
from __future__ import annotations

import threading
import time

import numpy as np
from qtpy.QtWidgets import (
    QFormLayout,
    QHeaderView,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
)

from .. import grid
from ..evaluation import decimate, evaluate_method
from ..engine import ReconstructionCancelled
from ._common import (
    DockWidget,
    LayerCombo,
    MethodChecks,
    iterate_callbacks,
    layer_problem,
    layer_units,
    layer_volume,
    notify_error,
    notify_info,
    start_worker,
    unique_name,
    wrap_label,
)

COLUMNS = ("method", "PSNR dB", "SSIM", "F-PSNR dB", "IE", "s/slice")
#: Error maps share one contrast: 0 .. this percentile of all methods' restored errors.
ERROR_PERCENTILE = 99.9


def score_cells(method: str, score) -> list[str]:
    """Table cells of one method, formatted as ``zup evaluate`` prints them."""
    return [method, f"{score.psnr:.2f}", f"{score.ssim:.4f}", f"{score.fpsnr:.2f}",
            f"{score.ie:.2f}", f"{score.seconds_per_slice:.4f}"]


class EvaluateWidget(DockWidget):
    """Keep every F-th slice of an isotropic layer, restore the others with each checked
    method and score them against the original slices."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(napari_viewer, parent)
        self.scores: dict = {}
        self.restored_layers: dict = {}
        self.error_layers: dict = {}
        self.error_limit = None
        self.worker = None
        self._cancel = threading.Event()
        self._pbar = None
        self._in_pbar = False
        self._pbar_t = 0.0
        form = QFormLayout()
        self.layer_combo = LayerCombo(self.viewer)
        self.factor_spin = QSpinBox()
        self.factor_spin.setRange(2, 32)
        self.factor_spin.setValue(4)
        self.factor_spin.setToolTip("keep every F-th slice (G[::F]), restore the others")
        form.addRow("isotropic image", self.layer_combo)
        form.addRow("factor F", self.factor_spin)
        self.layout().addLayout(form)
        self.layout().addWidget(wrap_label(
            "Keeps every F-th slice, restores the others with each method and scores only "
            "the restored slices against the original (PSNR, SSIM, Fourier PSNR, IE; "
            "protocol of EVALUATION.md, numbers equal to zup evaluate)."))
        self.methods = MethodChecks(checked=("linear", "cubic", "of-linear"),
                                    include_learned=False)
        self.layout().addWidget(self.methods)
        self.add_run_buttons()
        self.add_progress()

        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self._fit_table()
        self.layout().addWidget(self.table)
        self.side_button = QPushButton("side by side (one panel per method)")
        self.side_button.setToolTip("grid view: each method's restored slices with its error "
                                    "map on top, the ground truth in the last panel")
        self.side_button.clicked.connect(self.side_by_side)
        self.layout().addWidget(self.side_button)
        self._make_plot()
        self.run_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        self.viewer.dims.events.current_step.connect(self._update_cursor)

    # -- plot ---------------------------------------------------------------------------------

    def _make_plot(self):
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(4, 2.6), facecolor="#262930", layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(220)
        self.ax = self.figure.add_subplot()
        self._style_axes()
        self._cursor = None
        self.layout().addWidget(self.canvas, 1)  # the plot takes the spare height

    def _style_axes(self):
        ax = self.ax
        ax.set_facecolor("#262930")
        for side in ax.spines.values():
            side.set_color("#9a9a9a")
        ax.tick_params(colors="#d0d0d0", labelsize=8)
        ax.set_xlabel("z (output slice)", color="#d0d0d0", fontsize=9)
        ax.set_ylabel("SSIM", color="#d0d0d0", fontsize=9)
        ax.grid(alpha=0.2)

    def _plot(self):
        self.ax.clear()
        self._style_axes()
        for m, s in self.scores.items():
            ps = s.per_slice
            self.ax.plot(ps["index"], ps["ssim"], ".-", ms=3, lw=1, label=m)
        if self.scores:
            self.ax.legend(fontsize=8, facecolor="#262930", labelcolor="#d0d0d0",
                           edgecolor="#555555")
        self._cursor = None
        self._update_cursor()
        self.canvas.draw_idle()

    def _update_cursor(self, event=None):
        layer = getattr(self, "_layer", None)
        if not self.scores or layer is None or layer not in self.viewer.layers:
            return
        try:
            z = float(layer.world_to_data(self.viewer.dims.point)[-3])
        except Exception:  # noqa: BLE001 - a cursor is cosmetic
            return
        if self._cursor is None:
            self._cursor = self.ax.axvline(z, color="#e8a33d", lw=1, alpha=0.8)
        else:
            self._cursor.set_xdata([z, z])
        self.canvas.draw_idle()

    # -- run ----------------------------------------------------------------------------------

    def start(self):
        if self.worker is not None and self.worker.is_running:
            notify_error("Evaluate: an evaluation is already running; cancel it or wait")
            return False
        layer = self.layer_combo.layer()
        f = self.factor_spin.value()
        problem = layer_problem(layer, min_slices=f + 1)
        if problem:
            notify_error(f"Evaluate: {problem}")
            return False
        methods = self.methods.selected()
        if not methods:
            notify_error("Evaluate: check at least one method")
            return False
        s = tuple(float(v) for v in layer.scale[-3:])
        if abs(s[0] - s[1]) > 0.05 * s[1]:
            notify_info(f"Evaluate: layer {layer.name!r} has voxel {s[0]:g}×{s[1]:g}×{s[2]:g}, "
                        "not isotropic; the scores measure how well slices of this stack "
                        "are restored, not isotropic quality")
        self._layer, self._factor, self._methods = layer, f, methods
        self.scores, self.restored_layers, self.error_layers = {}, {}, {}
        self.error_limit = None
        self.table.setRowCount(0)
        self._fit_table()
        self._plot()
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
        from napari.utils import progress

        self._pbar = progress(total=total, desc=f"evaluate ×{f}")
        self._done_slices = 0
        self.worker = start_worker(self._job, ground_truth, f, methods, self._cancel,
                                   on_yield=self._on_yield, on_return=self._on_return,
                                   on_error=self._on_error)
        return True

    def cancel(self):
        self._cancel.set()

    @staticmethod
    def _job(ground_truth, factor, methods, cancel):
        g = np.asarray(ground_truth)
        for m in methods:
            gen = iterate_callbacks(_evaluate_with_callback, g, factor, m, cancel)
            while True:
                try:
                    i = next(gen)
                except StopIteration as stop:
                    score, recon, maps = stop.value
                    break
                except ReconstructionCancelled:
                    return "cancelled"
                yield ("slice", m, i)
            yield ("method", m, (score, recon, maps))
        return "done"

    def _on_yield(self, item):
        kind, method, payload = item
        if kind == "slice":
            self._done_slices += 1
            self.progress_bar.setValue(self._done_slices)
            self.status.setText(f"{method}: slice {payload + 1}/{self._n_out}")
            now = time.perf_counter()
            # napari's progress bar processes events (re-entrant calls): update it rarely
            if self._pbar is not None and not self._in_pbar and now - self._pbar_t > 0.1:
                self._in_pbar, self._pbar_t = True, now
                try:
                    self._pbar.update(self._done_slices - self._pbar.n)
                finally:
                    self._in_pbar = False
            return
        score, recon, maps = payload
        self._show_method(method, score, recon, maps)

    def _show_method(self, method, score, recon, maps):
        layer = self._layer
        f = self._factor
        self.scores[method] = score
        kw = {"scale": tuple(layer.scale[-3:]), "translate": tuple(layer.translate[-3:]),
              "axis_labels": ("z", "y", "x")}
        units = layer_units(layer)
        if units:
            kw["units"] = units
        meta = {"zup": {"source_layer": layer.name, "method": method, "factor": f,
                        "protocol": "EVALUATION.md: keep G[::F], restore, score restored",
                        "scores": score.summary()}}
        self.restored_layers[method] = self.viewer.add_image(
            recon, name=unique_name(self.viewer, f"{method} ×{f} restored"),
            contrast_limits=tuple(layer.contrast_limits), metadata=meta, **kw)
        self.error_layers[method] = self.viewer.add_image(
            maps, name=unique_name(self.viewer, f"{method} ×{f} |R-G|"),
            colormap="inferno", blending="additive", opacity=0.7, metadata=meta, **kw)
        # One contrast for all error maps so that brighter means larger error everywhere.
        restored = grid.restored_output_indices(len(decimate(layer_volume(layer), f)), f)
        hi = float(np.percentile(maps[restored], ERROR_PERCENTILE)) if len(restored) else 1.0
        self.error_limit = max(self.error_limit or 0.0, hi, 1e-3)
        for lay in self.error_layers.values():
            lay.contrast_limits = (0.0, self.error_limit)
        row = self.table.rowCount()
        self.table.insertRow(row)
        for c, text in enumerate(score_cells(method, score)):
            self.table.setItem(row, c, QTableWidgetItem(text))
        self._fit_table()
        self._plot()

    def _fit_table(self):
        t = self.table
        rows = sum(t.rowHeight(r) for r in range(t.rowCount()))
        t.setFixedHeight(max(60, t.horizontalHeader().height() + rows + 2 * t.frameWidth() + 2))

    def side_by_side(self):
        """Grid mode, stride 2: panel k = restored layer of method k + its error map."""
        from ._compare import show_names

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
            lay.visible = lay in order
        show_names([r for r, _ in pairs] + [self._layer])
        self.viewer.canvas.grid.stride = 2
        self.viewer.canvas.grid.enabled = True

    def _finish(self):
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.progress_bar.setVisible(False)
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None

    def _on_return(self, status):
        self._finish()
        if status == "cancelled":
            self.status.setText(f"cancelled; {len(self.scores)} of {len(self._methods)} "
                                "methods scored")
        else:
            best = max(self.scores, key=lambda m: self.scores[m].psnr)
            self.status.setText(f"{len(self.scores)} methods scored at ×{self._factor} over "
                                f"{next(iter(self.scores.values())).n_slices} restored "
                                f"slices; best PSNR: {best}. Error maps share the contrast "
                                f"0..{self.error_limit:.3f}.")

    def _on_error(self, exc):
        self._finish()
        self.status.setText(f"failed: {exc}")
        notify_error(f"Evaluate failed: {exc}")


def _evaluate_with_callback(g, factor, method, cancel, callback):
    return evaluate_method(g, factor, method, keep_output=True, error_maps=True,
                           cancel=cancel, on_slice=lambda i, sl: callback(i))
