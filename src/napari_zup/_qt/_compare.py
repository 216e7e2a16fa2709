"""Compare widget: several methods on the same layer, side by side in napari's grid mode."""
from __future__ import annotations

from qtpy.QtWidgets import (
    QCheckBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QPushButton,
)

from .. import grid
from ..methods import get_info
from ._common import (
    DockWidget,
    LayerCombo,
    MethodChecks,
    anisotropy,
    layer_problem,
    notify_error,
)
from ._run import StreamingRun

#: dims.order of the last three axes (z, y, x) for each view; napari shows the last two.
ORIENTATIONS = {"xy": (0, 1, 2), "xz": (1, 0, 2), "yz": (2, 0, 1)}


def set_orientation(viewer, view: str) -> None:
    """Show the ``view`` plane ("xy", "xz" or "yz") of the (last three) z, y, x axes."""
    lead = viewer.dims.ndim - 3
    viewer.dims.order = tuple(range(lead)) + tuple(lead + a for a in ORIENTATIONS[view])


def show_names(layers, visible=True) -> None:
    """Write each layer's name in its grid panel (napari >= 0.9)."""
    for lay in layers:
        overlay = getattr(lay, "name_overlay", None)
        if overlay is not None:
            overlay.font_size = 9
            overlay.visible = visible


class CompareWidget(DockWidget):
    """Run the checked methods one after the other on one layer; show the results (and the
    input) side by side in grid mode with one camera, the same contrast limits and names
    "<layer> · <method> ×F". The xz / yz buttons turn every panel to a side view, where
    methods differ most."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(napari_viewer, parent)
        self.runs: list[StreamingRun] = []
        self.results = []
        self._queue: list[str] = []
        self._hidden = []
        form = QFormLayout()
        self.layer_combo = LayerCombo(self.viewer)
        self.factor_spin = QDoubleSpinBox()
        self.factor_spin.setDecimals(3)
        self.factor_spin.setRange(1.001, 100.0)
        self.factor_spin.setValue(2.0)
        form.addRow("image", self.layer_combo)
        form.addRow("factor", self.factor_spin)
        self.layout().addLayout(form)
        self.methods = MethodChecks(checked=("linear", "cubic", "of-linear"),
                                    include_learned=False)
        self.layout().addWidget(self.methods)
        self.hide_others = QCheckBox("show only the input and the results")
        self.hide_others.setChecked(True)
        self.layout().addWidget(self.hide_others)

        self.add_run_buttons()

        views = QHBoxLayout()
        self.view_buttons = {}
        for view in ("xy", "xz", "yz"):
            b = QPushButton(view)
            b.setToolTip(f"show the {view} plane of every panel")
            b.clicked.connect(lambda _=False, v=view: set_orientation(self.viewer, v))
            views.addWidget(b)
            self.view_buttons[view] = b
        self.grid_button = QPushButton("grid on/off")
        self.grid_button.clicked.connect(self.toggle_grid)
        views.addWidget(self.grid_button)
        self.layout().addLayout(views)
        self.add_progress()
        self.layout().addStretch(1)

        self.layer_combo.currentIndexChanged.connect(self._prefill_factor)
        self.run_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        self._prefill_factor()

    def _prefill_factor(self, *_):
        layer = self.layer_combo.layer()
        if layer is not None and layer_problem(layer) is None and anisotropy(layer) > 1.0005:
            self.factor_spin.setValue(round(anisotropy(layer), 3))

    @property
    def running(self) -> bool:
        return bool(self._queue) or any(r.running for r in self.runs)

    def start(self):
        if self.running:
            notify_error("Compare: a comparison is already running; cancel it or wait")
            return False
        layer = self.layer_combo.layer()
        problem = layer_problem(layer)
        if problem:
            notify_error(f"Compare: {problem}")
            return False
        methods = self.methods.selected()
        if not methods:
            notify_error("Compare: check at least one method")
            return False
        factor = grid.parse_factor(self.factor_spin.value())
        bad = [m for m in methods if factor.denominator != 1 and not get_info(m).fractional]
        if bad:
            notify_error(f"Compare: {', '.join(bad)} support only integer factors, got "
                         f"{float(factor):g}; set a whole number or uncheck them")
            return False
        self._layer, self._factor = layer, factor
        self._queue = list(methods)
        self.results = []
        self._n_methods = len(methods)
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress_bar.setRange(0, len(methods))
        self.progress_bar.setValue(0)
        self.progress_bar.setVisible(True)
        self._next()
        return True

    def _next(self):
        if not self._queue:
            self._all_done()
            return
        method = self._queue.pop(0)
        run = StreamingRun(self.viewer, self._layer, method, self._factor, follow=False,
                           on_progress=self._on_progress, on_done=self._on_done)
        self.runs.append(run)
        run.start()
        self.results.append(run.layer)
        self._show_grid()

    def cancel(self):
        self._queue = []
        for r in self.runs:
            if r.running:
                r.cancel()

    def _on_progress(self, run):
        self.status.setText(f"{run.method} ({len(self.results)}/{self._n_methods}): "
                            f"{run.progress}")

    def _on_done(self, run):
        self.progress_bar.setValue(sum(r.status == "done" for r in self.runs[-len(self.results):]))
        if run.status != "done":
            self._queue = []
        self._next()

    def _all_done(self):
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.progress_bar.setVisible(False)
        done = [r for r in self.runs[-len(self.results):] if r.status == "done"]
        self.status.setText(
            f"{len(done)} of {self._n_methods} methods done; grid view with one camera. "
            "xz / yz show the side views.")

    def _show_grid(self):
        keep = [self._layer] + self.results
        if self.hide_others.isChecked():
            for lay in self.viewer.layers:
                if lay not in keep and lay.visible:
                    lay.visible = False
                    self._hidden.append(lay)
        for lay in self.results:
            lay.contrast_limits = tuple(self._layer.contrast_limits)
        show_names(keep)
        self.viewer.canvas.grid.stride = 1
        self.viewer.canvas.grid.enabled = True

    def toggle_grid(self):
        g = self.viewer.canvas.grid
        g.enabled = not g.enabled
        if not g.enabled:
            for lay in self._hidden:
                if lay in self.viewer.layers:
                    lay.visible = True
            self._hidden = []
