"""Flow widget: Farnebäck optical flow between neighbouring slices of a layer, shown as
napari vectors (coloured by magnitude) and a colour-wheel image (hue = direction), updated
as soon as a parameter changes."""
from __future__ import annotations

import time

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QPushButton,
    QSpinBox,
)

from ..flow import FarnebackParams, estimate_flow, flow_to_rgb, flow_vectors
from ..methods.base import dtype_value_range
from ._common import (
    DockWidget,
    LayerCombo,
    layer_problem,
    layer_units,
    layer_volume,
    notify_error,
    start_worker,
    wrap_label,
)

#: Wait this long after the last parameter change before recomputing (ms).
DEBOUNCE_MS = 150


def compute_flows(volume, pairs, params: FarnebackParams, step: int):
    """Generator (worker thread): for each first-slice index k of ``pairs`` yield
    ``(k, rgb, vectors (N, 2, 2), magnitudes, flow stats)``."""
    vr = dtype_value_range(volume.dtype)
    for k in pairs:
        a = np.asarray(volume[k])
        b = np.asarray(volume[k + 1])
        rng = vr or (float(min(a.min(), b.min())), float(max(a.max(), b.max())))
        flow = estimate_flow(a, b, params, rng)
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
        self.vectors_layer = None
        self.rgb_layer = None
        self._pending = False
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(DEBOUNCE_MS)
        self._timer.timeout.connect(self.compute)
        self.last_stats: dict = {}

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
        form.addRow("vector grid (px)", self.step)
        form.addRow("vector length ×", self.length)
        self.layout().addLayout(form)
        self.auto = QCheckBox("update at once (parameters, slice)")
        self.auto.setChecked(True)
        self.layout().addWidget(self.auto)
        self.compute_button = QPushButton("Compute flow")
        self.layout().addWidget(self.compute_button)
        self.status = wrap_label()
        self.layout().addWidget(self.status)
        self.layout().addStretch(1)

        for w in (self.pyr_scale, self.levels, self.winsize, self.iterations, self.poly_sigma,
                  self.step, self.z0, self.z1):
            w.valueChanged.connect(self._changed)
        self.poly_n.currentIndexChanged.connect(self._changed)
        self.mode.currentIndexChanged.connect(self._changed)
        self.length.valueChanged.connect(self._set_length)
        self.layer_combo.currentIndexChanged.connect(self._layer_changed)
        self.compute_button.clicked.connect(self.compute)
        self.viewer.dims.events.current_step.connect(self._dims_changed)
        self._layer_changed()

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
        n = layer_volume(layer).shape[0]
        for s in (self.z0, self.z1):
            s.blockSignals(True)
            s.setRange(0, n - 2)
            s.blockSignals(False)
        self.z1.setValue(min(max(self.z1.value(), self.z0.value()), n - 2))

    def _changed(self, *_):
        if self.auto.isChecked() and (self.vectors_layer is not None or self.rgb_layer is not None):
            self._timer.start()

    def _dims_changed(self, event=None):
        if self.mode.currentText() == "current pair":
            self._changed()

    def _set_length(self, value):
        if self.vectors_layer is not None and self.vectors_layer in self.viewer.layers:
            self.vectors_layer.length = value

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
        if self.rgb_layer is None or self.rgb_layer not in self.viewer.layers:
            self.rgb_layer = self.viewer.add_image(
                rgb, rgb=True, name=f"{base} colours", opacity=0.7, metadata=meta, **kw)
        else:
            self.rgb_layer.data = rgb
            self.rgb_layer.translate = kw["translate"]
            self.rgb_layer.scale = kw["scale"]
            self.rgb_layer.metadata = meta
        if self.vectors_layer is None or self.vectors_layer not in self.viewer.layers:
            self.vectors_layer = self.viewer.add_vectors(
                vec, features={"magnitude": mag}, edge_color="magnitude",
                edge_colormap="turbo", edge_contrast_limits=(0.0, vmax), edge_width=1.5,
                length=self.length.value(), vector_style="arrow", name=f"{base} vectors",
                metadata=meta, **kw)
        else:
            lay = self.vectors_layer
            lay.data = vec
            lay.features = {"magnitude": mag}
            lay.edge_color = "magnitude"
            lay.edge_contrast_limits = (0.0, vmax)
            lay.translate = kw["translate"]
            lay.scale = kw["scale"]
            lay.metadata = meta
        means = [r[4][0] for r in self._results]
        maxes = [r[4][1] for r in self._results]
        dt = time.perf_counter() - self._t0
        self.last_stats = {"pairs": list(self._pairs), "mean_px": float(np.mean(means)),
                           "max_px": float(np.max(maxes)), "seconds": dt}
        where = (f"slices {self._pairs[0]}→{self._pairs[0] + 1}" if len(self._pairs) == 1
                 else f"pairs {self._pairs[0]}..{self._pairs[-1]}")
        self.status.setText(f"{where}: mean |flow| {self.last_stats['mean_px']:.2f} px, "
                            f"max {self.last_stats['max_px']:.1f} px ({dt * 1000:.0f} ms). "
                            "Colours: hue = direction, brightness = magnitude.")
