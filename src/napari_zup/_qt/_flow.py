"""Flow widget: Farnebäck optical flow between neighbouring slices of a layer, shown as
napari vectors (coloured by magnitude) and a colour-wheel image (hue = direction, legend in
the dock), updated as soon as a parameter changes.

Defaults follow the data: the vector grid from the image size, the vector length from the
flow magnitudes (so that arrows are visible, not just arrowheads), and a Farnebäck window no
larger than a quarter of a small image (129 px on a 192 px image averages the flow of the
whole slice into one almost uniform field)."""
from __future__ import annotations

import time

import numpy as np
from qtpy.QtCore import Qt, QTimer
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
)

from ..flow import FarnebackParams, flow_to_rgb, flow_vectors
from ._common import (
    DockWidget,
    LayerCombo,
    PassSteps,
    layer_problem,
    layer_units,
    layer_volume,
    notify_error,
    preload,
    start_worker,
    wrap_label,
)

#: Wait this long after the last parameter change before recomputing (ms).
DEBOUNCE_MS = 150
#: About this many vectors across the smaller image side by default.
VECTORS_ACROSS = 24
#: The longest arrows (90th percentile of the magnitudes) are drawn this long, in grid steps.
ARROW_STEPS = 0.8
#: The default window is at most this fraction of the smaller image side.
WINDOW_FRACTION = 0.25
COLOURS_BESIDE = "beside the image"
COLOURS_OVER = "over the image (40 %)"


def default_step(h: int, w: int) -> int:
    """Vector grid spacing (px) giving about :data:`VECTORS_ACROSS` vectors across."""
    return int(np.clip(round(min(h, w) / VECTORS_ACROSS), 4, 64))


def default_length(magnitudes, step: int) -> float:
    """Vector length factor so that the 90th-percentile flow is drawn ARROW_STEPS grid steps
    long (at least 1: never shorter than the flow itself), in steps of 0.5."""
    mags = np.asarray(magnitudes, np.float64)
    p90 = float(np.percentile(mags, 90)) if mags.size else 0.0
    if p90 <= 1e-6:
        return 1.0
    return float(np.clip(np.round(2 * ARROW_STEPS * step / p90) / 2, 1.0, 20.0))


def default_window(h: int, w: int, winsize: int) -> int:
    """``winsize``, or an odd window of WINDOW_FRACTION of a smaller image (at least 15)."""
    most = int(min(h, w) * WINDOW_FRACTION)
    if winsize <= most:
        return winsize
    return max(15, most - (1 - most % 2))


def colour_wheel(size: int = 72) -> np.ndarray:
    """RGBA legend of :func:`flow_to_rgb`: hue = direction of motion, brightness = magnitude
    (full at the rim), transparent outside the disc; +x to the right, +y down as in napari."""
    c = (size - 1) / 2
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    flow = np.dstack([x - c, y - c]).astype(np.float32)
    rgb = flow_to_rgb(flow, c)
    alpha = (np.hypot(x - c, y - c) <= c).astype(np.uint8) * 255
    return np.dstack([rgb, alpha])


def compute_flows(volume, pairs, params: FarnebackParams, step: int):
    """Generator (worker thread): for each first-slice index k of ``pairs`` yield
    ``(k, rgb, vectors (N, 2, 2), magnitudes, flow stats)``."""
    from ..flow import volume_flows  # the layer's value range once, as zup flow and reconstruct

    for k, flow in volume_flows(volume, pairs, params):
        mag = np.hypot(flow[..., 0], flow[..., 1])
        vec = flow_vectors(flow, step)
        yield (k, flow_to_rgb(flow, max(float(np.percentile(mag, 99)), 0.5)), vec,
               np.hypot(vec[:, 1, 0], vec[:, 1, 1]).astype(np.float32),
               (float(mag.mean()), float(mag.max())))


class FlowWidget(DockWidget):
    """Optical flow of the current slice pair (z, z+1) or of a range of pairs."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(napari_viewer, parent)
        self.worker = None
        self._steps = PassSteps()
        self.vectors_layer = None
        self.rgb_layer = None
        self._pending = False
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(DEBOUNCE_MS)
        self._timer.timeout.connect(self.compute)
        self.last_stats: dict = {}
        preload()  # this widget always adds a Vectors layer: its imports, off the GUI thread
        self._build_form()
        self._build_legend_and_buttons()
        for w in (self.pyr_scale, self.levels, self.winsize, self.iterations, self.poly_sigma,
                  self.step, self.z0, self.z1):
            w.valueChanged.connect(self._changed)
        self.poly_n.currentIndexChanged.connect(self._changed)
        self.mode.currentIndexChanged.connect(self._changed)
        self.colours.currentIndexChanged.connect(self._place_colours)
        self._length_auto = True
        self._step_auto = True
        self._window_auto = True
        self.length.valueChanged.connect(self._set_length)
        self.length.valueChanged.connect(lambda *_: setattr(self, "_length_auto", False))
        self.step.valueChanged.connect(lambda *_: setattr(self, "_step_auto", False))
        self.winsize.valueChanged.connect(lambda *_: setattr(self, "_window_auto", False))
        self.layer_combo.currentIndexChanged.connect(self._layer_changed)
        self.compute_button.clicked.connect(self.compute)
        self.viewer.dims.events.current_step.connect(self._dims_changed)
        self._layer_changed()

    def _build_form(self):
        """Image, slices and the Farneback and display parameters."""
        form = QFormLayout()
        self.layer_combo = LayerCombo(self.viewer)
        self.mode = QComboBox()
        self.mode.addItems(["current pair", "range"])
        self.z0 = QSpinBox()
        self.z1 = QSpinBox()
        zrow = QHBoxLayout()
        zrow.addWidget(self.z0)
        zrow.addWidget(self.z1)
        form.addRow("image", self.layer_combo)
        form.addRow("slices", self.mode)
        form.addRow("range first..last", zrow)
        d = FarnebackParams()
        self.pyr_scale = self._dspin(0.1, 0.9, 0.05, d.pyr_scale)
        self.levels = self._ispin(1, 8, d.levels)
        self.winsize = self._ispin(3, 401, d.winsize, step=2)
        self.iterations = self._ispin(1, 20, d.iterations)
        self.poly_n = QComboBox()
        self.poly_n.addItems(["5", "7"])
        self.poly_n.setCurrentText(str(d.poly_n))
        self.poly_sigma = self._dspin(0.5, 3.0, 0.1, d.poly_sigma)
        form.addRow("pyramid scale", self.pyr_scale)
        form.addRow("levels", self.levels)
        form.addRow("window (px)", self.winsize)
        form.addRow("iterations", self.iterations)
        form.addRow("poly n", self.poly_n)
        form.addRow("poly sigma", self.poly_sigma)
        self.step = self._ispin(4, 256, 16)
        self.length = self._dspin(0.1, 20.0, 0.5, 2.0)
        self.length.setToolTip("arrow length = flow × this; set from the flow magnitudes "
                               "until you change it")
        self.colours = QComboBox()
        self.colours.addItems([COLOURS_BESIDE, COLOURS_OVER])
        self.colours.setToolTip("where the colour-coded flow is drawn: next to the image (the "
                                "EM stays visible) or over it, translucent")
        form.addRow("vector grid (px)", self.step)
        form.addRow("vector length ×", self.length)
        form.addRow("colour flow", self.colours)
        self.layout().addLayout(form)

    def _build_legend_and_buttons(self):
        """The window note, the colour-wheel legend, "update at once", Compute, status."""
        self.window_note = wrap_label()
        self.window_note.setStyleSheet("color: #a0a0a0")
        self.layout().addWidget(self.window_note)
        legend = QHBoxLayout()
        self.wheel = QLabel()
        wheel = np.ascontiguousarray(colour_wheel())
        self._wheel_image = QImage(wheel.data, wheel.shape[1], wheel.shape[0],
                                   4 * wheel.shape[1], QImage.Format.Format_RGBA8888).copy()
        self.wheel.setPixmap(QPixmap.fromImage(self._wheel_image))
        self.wheel.setFixedSize(wheel.shape[1], wheel.shape[0])
        legend.addWidget(self.wheel, 0, Qt.AlignmentFlag.AlignTop)
        legend.addWidget(wrap_label(
            "Colour flow: hue = direction of the motion from slice z to z+1 (right = red, "
            "down = green-yellow, left = cyan, up = blue-violet), brightness = magnitude "
            "(full brightness at the 99th percentile). Vectors: arrows coloured by magnitude "
            "(turbo)."), 1)
        self.layout().addLayout(legend)
        self.auto = QCheckBox("update at once (parameters, slice)")
        self.auto.setChecked(True)
        self.layout().addWidget(self.auto)
        self.compute_button = QPushButton("Compute flow")
        self.layout().addWidget(self.compute_button)
        self.status = wrap_label()
        self.layout().addWidget(self.status)
        self.layout().addStretch(1)

    @staticmethod
    def _ispin(lo, hi, value, step=1):
        s = QSpinBox()
        s.setRange(lo, hi)
        s.setSingleStep(step)
        s.setValue(value)
        return s

    @staticmethod
    def _dspin(lo, hi, step, value):
        s = QDoubleSpinBox()
        s.setRange(lo, hi)
        s.setSingleStep(step)
        s.setValue(value)
        return s

    def params(self) -> FarnebackParams:
        return FarnebackParams(
            pyr_scale=self.pyr_scale.value(), levels=self.levels.value(),
            winsize=self.winsize.value(), iterations=self.iterations.value(),
            poly_n=int(self.poly_n.currentText()), poly_sigma=self.poly_sigma.value())

    def _layer_changed(self, *_):
        layer = self.layer_combo.layer()
        if layer is None or layer_problem(layer):
            return
        n, h, w = (int(v) for v in layer_volume(layer).shape)
        for s in (self.z0, self.z1):
            s.blockSignals(True)
            s.setRange(0, n - 2)
            s.blockSignals(False)
        self.z1.setValue(min(max(self.z1.value(), self.z0.value()), n - 2))
        if self._step_auto:
            self._set_quietly(self.step, default_step(h, w))
        note = ""
        if self._window_auto:
            paper = FarnebackParams().winsize
            win = default_window(h, w, paper)
            self._set_quietly(self.winsize, win)
            if win != paper:
                note = (f"Window {win} px for this {min(h, w)} px image: the {paper} px "
                        "default of of-linear / of-cubic would average the flow of most of the "
                        f"slice into one almost uniform field. Reconstruct still uses {paper} px "
                        "unless you set its window.")
        self.window_note.setText(note)
        self.window_note.setVisible(bool(note))

    @staticmethod
    def _set_quietly(spin, value):
        spin.blockSignals(True)
        spin.setValue(value)
        spin.blockSignals(False)

    def _changed(self, *_):
        if self.auto.isChecked() and (self.vectors_layer is not None or self.rgb_layer is not None):
            self._timer.start()

    def _dims_changed(self, event=None):
        if self.mode.currentText() == "current pair":
            self._changed()

    def _set_length(self, value):
        if self.vectors_layer is not None and self.vectors_layer in self.viewer.layers:
            self.vectors_layer.length = value

    def _place_colours(self, *_):
        """The colour-coded flow next to the image (one image width and a gap to the right),
        or over it at 40 % opacity."""
        lay = self.rgb_layer
        if lay is None or lay not in self.viewer.layers or not hasattr(self, "_rgb_kw"):
            return
        tz, ty, tx = self._rgb_kw["translate"]
        if self.colours.currentText() == COLOURS_BESIDE:
            w = lay.data.shape[-2] * float(self._rgb_kw["scale"][-1])
            lay.translate = (tz, ty, tx + 1.05 * w)
            lay.opacity, lay.blending = 1.0, "translucent"
        else:
            lay.translate = (tz, ty, tx)
            lay.opacity, lay.blending = 0.4, "translucent"

    def current_pair(self, layer) -> int:
        """First slice index (data coordinates) of the pair under the z slider."""
        n = layer_volume(layer).shape[0]
        z = float(layer.world_to_data(self.viewer.dims.point)[-3])
        return int(np.clip(np.floor(z + 0.5), 0, n - 2))

    def compute(self):
        """Compute the flow of the chosen pairs in a worker (latest request wins)."""
        if self.worker is not None and self.worker.is_running:
            self._pending = True
            return False
        layer = self.layer_combo.layer()
        problem = layer_problem(layer)
        if problem:
            notify_error(f"Flow: {problem}")
            return False
        try:
            params = self.params()
        except ValueError as exc:
            notify_error(f"Flow: {exc}")
            return False
        if self.mode.currentText() == "current pair":
            pairs = [self.current_pair(layer)]
        else:
            z0, z1 = sorted((self.z0.value(), self.z1.value()))
            pairs = list(range(z0, z1 + 1))
        self._layer, self._pairs, self._params = layer, pairs, params
        self._results = []
        self._t0 = time.perf_counter()
        self.status.setText(f"computing {len(pairs)} pair(s)…")
        self.compute_button.setEnabled(False)
        self.worker = start_worker(compute_flows, layer_volume(layer), pairs, params,
                                   self.step.value(), on_yield=self._results.append,
                                   on_return=self._on_return, on_error=self._on_error)
        return True

    def _on_return(self, _=None):
        self.compute_button.setEnabled(True)
        self._show()
        if self._pending:
            self._pending = False
            self.compute()

    def _on_error(self, exc):
        self.compute_button.setEnabled(True)
        self._pending = False
        notify_error(f"Flow failed: {exc}")

    def _show(self):
        layer = self._layer
        if not self._results or layer not in self.viewer.layers:
            return
        k0 = self._pairs[0]
        sz, sy, sx = (float(s) for s in layer.scale[-3:])
        tz, ty, tx = (float(t) for t in layer.translate[-3:])
        kw = {"scale": (sz, sy, sx), "translate": (tz + k0 * sz, ty, tx)}
        units = layer_units(layer)
        if units:
            kw["units"] = units
        rgb = np.stack([r[1] for r in self._results])
        vecs, mags = [], []
        for n, (_, _, vec2, mag, _) in enumerate(self._results):
            v = np.zeros((len(vec2), 2, 3), np.float32)
            v[:, 0, 0] = n
            v[:, :, 1:] = vec2
            vecs.append(v)
            mags.append(mag)
        vec = np.concatenate(vecs)
        mag = np.concatenate(mags)
        vmax = max(float(np.percentile(mag, 99)) if len(mag) else 1.0, 0.5)
        meta = {"zup": {"source_layer": layer.name, "pairs": [int(k) for k in self._pairs],
                        "farneback": self._params.as_dict(),
                        "note": "flow from slice k to k+1, drawn on slice k"}}
        base = f"{layer.name} flow"
        if self._length_auto:
            self._set_quietly(self.length, default_length(mag, self.step.value()))
        self._rgb_kw = kw
        new_rgb = self.rgb_layer is None or self.rgb_layer not in self.viewer.layers
        if new_rgb:
            self.rgb_layer = self.viewer.add_image(
                rgb, rgb=True, name=f"{base} colours", metadata=meta, **kw)
        else:
            self.rgb_layer.data = rgb
            self.rgb_layer.scale = kw["scale"]
            self.rgb_layer.metadata = meta
        self._place_colours()
        stats = ([r[4][0] for r in self._results], [r[4][1] for r in self._results],
                 list(self._pairs))
        new_vectors = self.vectors_layer is None or self.vectors_layer not in self.viewer.layers
        if new_rgb and new_vectors:
            # two new layers: the Vectors layer in the next event-loop pass
            self._steps.add(lambda: self._show_vectors(vec, mag, vmax, meta, base, kw, stats))
        else:
            self._show_vectors(vec, mag, vmax, meta, base, kw, stats)

    @property
    def busy(self) -> bool:
        """Computing, or still adding what was computed."""
        return self._steps.pending or (self.worker is not None and self.worker.is_running)

    def _show_vectors(self, vec, mag, vmax, meta, base, kw, stats):
        if self.vectors_layer is None or self.vectors_layer not in self.viewer.layers:
            self.vectors_layer = self.viewer.add_vectors(
                vec, features={"magnitude": mag}, edge_color="magnitude",
                edge_colormap="turbo", edge_contrast_limits=(0.0, vmax), edge_width=1.5,
                length=self.length.value(), vector_style="arrow", name=f"{base} vectors",
                metadata=meta, **kw)
        else:
            lay = self.vectors_layer
            lay.length = self.length.value()
            lay.data = vec
            lay.features = {"magnitude": mag}
            lay.edge_color = "magnitude"
            lay.edge_contrast_limits = (0.0, vmax)
            lay.translate = kw["translate"]
            lay.scale = kw["scale"]
            lay.metadata = meta
        means, maxes, pairs = stats
        dt = time.perf_counter() - self._t0
        self.last_stats = {"pairs": pairs, "mean_px": float(np.mean(means)),
                           "max_px": float(np.max(maxes)), "seconds": dt}
        where = (f"slices {pairs[0]}→{pairs[0] + 1}" if len(pairs) == 1
                 else f"pairs {pairs[0]}..{pairs[-1]}")
        self.status.setText(f"{where}: mean |flow| {self.last_stats['mean_px']:.2f} px, "
                            f"max {self.last_stats['max_px']:.1f} px ({dt * 1000:.0f} ms). "
                            "Colours: hue = direction, brightness = magnitude.")
