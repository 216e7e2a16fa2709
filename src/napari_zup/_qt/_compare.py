"""Compare widget: several methods on the same layer, side by side in napari's grid mode."""
from __future__ import annotations


from qtpy.QtCore import QTimer
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
    anisotropy,
    layer_problem,
    layer_volume,
    notify_error,
    notify_warning,
    set_contrast_limits,
    set_visible,
    wrap_label,
)
from ._methods import MethodPicker
from ._run import StreamingRun

#: dims.order of the last three axes (z, y, x) for each view; napari shows the last two.
ORIENTATIONS = {"xy": (0, 1, 2), "xz": (1, 0, 2), "yz": (2, 0, 1)}


def set_orientation(viewer, view: str) -> None:
    """Show the ``view`` plane ("xy", "xz" or "yz") of the (last three) z, y, x axes."""
    lead = viewer.dims.ndim - 3
    viewer.dims.order = tuple(range(lead)) + tuple(lead + a for a in ORIENTATIONS[view])


def panel_caption(viewer, layers, source=None) -> str:
    """Which of ``layers`` is in which grid panel (row by row), for the dock; asks napari's
    own grid for the positions, so it is right whatever napari's ordering rule is.

    Not drawn on the canvas: napari 0.9's per-layer name overlays (and any text overlay)
    drawn in grid mode crashed napari (segfault in the GL driver, Mesa llvmpipe) as soon as
    such a layer was removed and another added, which is what users of Compare do.
    """
    grid_, all_layers = viewer.canvas.grid, list(viewer.layers)
    panels: dict[tuple[int, int], list[str]] = {}
    for lay in layers:
        pos = tuple(grid_.position(all_layers.index(lay), all_layers))
        if pos != (-1, -1):
            name = lay.name
            if source is not None:  # "input", and results without the input's name
                name = "input" if lay is source else name.replace(f"{source.name} · ", "")
            panels.setdefault(pos, []).append(name)
    return "grid panels, row by row: " + " | ".join(
        f"{k + 1} {names[0]}" + (f" (+{len(names) - 1})" if len(names) > 1 else "")
        for k, (_, names) in enumerate(sorted(panels.items())))


class CompareWidget(DockWidget):
    """Run the checked methods one after the other on one layer; show the results (and the
    input) side by side in grid mode with one camera, the same contrast limits and names
    "<layer> · <method> ×F". The xz / yz buttons turn every panel to a side view, where
    methods differ most.

    The panels have a fixed order decided at Run (the input, then the methods in the order of
    the list), whatever order and speed the results arrive in: every layout step places all
    the layers of the comparison from that order, and the final layout is made once all runs
    have ended.
    """

    def __init__(self, napari_viewer, parent=None):
        super().__init__(napari_viewer, parent)
        self.runs: list[StreamingRun] = []
        self.results = []
        self.slots: list[str] = []
        self._slot_runs: dict[str, StreamingRun] = {}
        self._queue: list[str] = []
        self._hidden = []
        self._scheduled = False
        form = QFormLayout()
        self.layer_combo = LayerCombo(self.viewer)
        self.factor_spin = QDoubleSpinBox()
        self.factor_spin.setDecimals(3)
        self.factor_spin.setRange(1.001, 100.0)
        self.factor_spin.setValue(2.0)
        form.addRow("image", self.layer_combo)
        form.addRow("factor", self.factor_spin)
        self.layout().addLayout(form)
        self.methods = MethodPicker(checked=("linear", "cubic", "of-linear"))
        self.layout().addWidget(self.methods)
        self.factor_note = wrap_label()
        self.factor_note.setStyleSheet("color: #e8a33d")
        self.layout().addWidget(self.factor_note)
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
        self.panels = wrap_label()  # which method is in which panel (see panel_caption)
        self.layout().addWidget(self.panels)
        self.add_progress()
        self.layout().addStretch(1)

        self.layer_combo.currentIndexChanged.connect(self._prefill_factor)
        self.factor_spin.valueChanged.connect(self._update_notes)
        for box in self.methods.boxes.values():
            box.toggled.connect(self._update_notes)
        for combo in self.methods.checkpoint_combos.values():
            combo.currentIndexChanged.connect(self._update_notes)
        self.run_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        self._prefill_factor()

    def _prefill_factor(self, *_):
        layer = self.layer_combo.layer()
        if layer is not None and layer_problem(layer) is None and anisotropy(layer) > 1.0005:
            self.factor_spin.setValue(round(anisotropy(layer), 3))
        self._update_notes()

    def _update_notes(self, *_):
        notes = self.methods.factor_notes(self.methods.selected(), self.factor_spin.value())
        self.factor_note.setText("\n".join(notes))
        self.factor_note.setVisible(bool(notes))

    @property
    def running(self) -> bool:
        return bool(self._queue) or self._scheduled or any(r.running for r in self.runs)

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
        n = layer_volume(layer).shape[0]
        short = [m for m in methods if n < get_info(m).min_slices]
        if short:
            notify_error(f"Compare: {', '.join(short)} need at least "
                         f"{max(get_info(m).min_slices for m in short)} slices; the layer has "
                         f"{n}: uncheck them")
            return False
        try:
            params = {m: self.methods.params(m) for m in methods}
        except ValueError as exc:
            notify_error(f"Compare: {exc}")
            return False
        for note in self.methods.factor_notes(methods, factor):
            notify_warning(f"Compare: {note}")
        self._layer, self._factor, self._params = layer, factor, params
        self._labels = {m: self.methods.label(m) for m in methods}
        self.slots = list(methods)  # the panel order, fixed now
        self._slot_runs = {}
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
        self._scheduled = False
        if not self._queue:
            self._all_done()
            return
        method = self._queue.pop(0)
        name = f"{self._layer.name} · {self._labels[method]} ×{float(self._factor):g}"
        run = StreamingRun(self.viewer, self._layer, method, self._factor,
                           method_params=self._params.get(method), follow=False, name=name,
                           on_progress=self._on_progress, on_done=self._on_done)
        self.runs.append(run)
        self._slot_runs[method] = run
        run.start()
        # the grid re-layout (moving layers, redrawing every panel) in a pass of its own:
        # together with the new layer and its progress bar it froze the GUI for 0.3-0.6 s
        QTimer.singleShot(0, self._layout)

    def cancel(self):
        self._queue = []
        for r in self.runs:
            if r.running:
                r.cancel()

    def _on_progress(self, run):
        k = self.slots.index(run.method) + 1 if run.method in self.slots else 0
        self.status.setText(f"{run.method} ({k}/{self._n_methods}): {run.progress}")

    def _on_done(self, run):
        self.progress_bar.setValue(sum(r.status == "done" for r in self._slot_runs.values()))
        if run.status != "done":
            self._queue = []
        # Next run from the event loop, never from inside this run's callbacks (a short run
        # can end inside StreamingRun.start(), whose progress bar processes events).
        if not self._scheduled:
            self._scheduled = True
            QTimer.singleShot(0, self._next)

    def _all_done(self):
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.progress_bar.setVisible(False)
        self._layout()  # the final layout, from the final set of results
        done = [m for m in self.slots
                if m in self._slot_runs and self._slot_runs[m].status == "done"]
        missing = [m for m in self.slots if m not in done]
        text = (f"{len(done)} of {self._n_methods} methods done; grid view with one camera, "
                f"panels: input, {', '.join(done) or 'none'}. xz / yz show the side views.")
        if missing:
            text += f" Not done: {', '.join(missing)}."
        self.status.setText(text)

    def result_layers(self) -> list:
        """The comparison's result layers, in slot order (those still in the viewer)."""
        out = []
        for m in self.slots:
            run = self._slot_runs.get(m)
            if run is not None and run.layer is not None and run.layer in self.viewer.layers:
                out.append(run.layer)
        return out

    def _layout(self):
        """Place the input and every result in its slot: layer list positions 0, 1, ... (the
        grid fills from the bottom layer), others hidden, one contrast, names in the panels."""
        layer = self._layer
        layers = self.viewer.layers
        if layer not in layers:
            return
        self.results = self.result_layers()
        keep = [layer] + self.results
        for dest, lay in enumerate(keep):
            src = layers.index(lay)
            if src != dest:
                layers.move(src, dest)
        if self.hide_others.isChecked():
            for lay in layers:
                if lay not in keep and lay.visible:
                    lay.visible = False
                    self._hidden.append(lay)
        for lay in keep:  # only what changes: napari redraws on every assignment
            set_visible(lay, True)
        for lay in self.results:
            set_contrast_limits(lay, layer.contrast_limits)
        grid_ = self.viewer.canvas.grid
        if grid_.stride != 1:
            grid_.stride = 1
        if not grid_.enabled:
            grid_.enabled = True
        self.panels.setText(panel_caption(self.viewer, keep, source=layer))

    def toggle_grid(self):
        g = self.viewer.canvas.grid
        g.enabled = not g.enabled
        if not g.enabled:
            for lay in self._hidden:
                if lay in self.viewer.layers:
                    set_visible(lay, True)
            self._hidden = []
