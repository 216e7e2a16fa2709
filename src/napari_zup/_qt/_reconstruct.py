"""Reconstruct widget: one image layer -> a new, isotropic layer that streams in live."""
from __future__ import annotations

import os
import time
from pathlib import Path

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QWidget,
)

from .. import grid
from ..checkpoints import factor_warning
from ..methods import get_info, method_infos
from ._common import (
    OUTPUT_RAM_LIMIT,
    DockWidget,
    LayerCombo,
    anisotropy,
    layer_problem,
    layer_volume,
    notify_error,
    notify_warning,
    preload,
    wrap_label,
)
from ._auto import AUTO, AUTO_DESCRIPTION, choice_table, choose
from ._cluster_run import ClusterRun, suggest_output
from ._on_demand import OnDemandRun
from ._run import StreamingRun
from ._voxel_banner import layer_lacks_voxel_size

CHOOSE_FILE = "Choose a file…"
BUNDLED = "bundled default"
#: Where a run computes: napari's own threads (result in memory, or a temporary store), or a
#: dask cluster writing an OME-Zarr store (same engine as ``zup reconstruct --workers/
#: --scheduler``).
ENGINE_THREADS = "this napari (threads)"
ENGINE_LOCAL = "dask: local cluster"
ENGINE_SCHEDULER = "dask: scheduler address"
#: The whole output layer at once, computed where the user looks (_on_demand.OnDemandRun).
ENGINE_ON_DEMAND = "on demand (computes what you view)"
ENGINES = (ENGINE_THREADS, ENGINE_ON_DEMAND, ENGINE_LOCAL, ENGINE_SCHEDULER)

#: Texture ratio of the "texture" box (docs/learned-interpolation.md, "Texture").
TEXTURE_RATIO = 0.8


def oversampling_note(layer, factor) -> str | None:
    """:func:`grid.oversampling_note` for a layer: None when its scale is napari's default (no
    voxel size to judge by)."""
    if layer_lacks_voxel_size(layer):
        return None
    try:  # napari's units are pint units: "nm", not "nanometer"
        unit = format(layer.units[-1], "~")
    except (AttributeError, IndexError, TypeError, ValueError):
        unit = ""
    return grid.oversampling_note(tuple(float(v) for v in layer.scale[-3:]), factor,
                                  "" if unit in ("pixel", "px") else unit, what="the layer",
                                  auto="'from scale' gives ×{:.4g}")


class ReconstructWidget(DockWidget):
    """Pick a 3D image layer, a method and a factor; Run streams the result into a new layer.

    The input layer is never modified; every run adds a new layer with a unique name. Cancel
    stops within one tile and keeps what was computed, marked "(partial)".
    """

    def __init__(self, napari_viewer, parent=None):
        super().__init__(napari_viewer, parent)
        self.run: StreamingRun | None = None
        self.runs: list[StreamingRun] = []
        self._checkpoint_file: str | None = None
        self._output_auto = True
        self._last_status = 0.0
        #: Methods ``auto`` chooses from (None: every registered method).
        self.auto_candidates = None
        self.choice = None
        self._auto_worker = None
        self._choosing = False
        self._build_form()
        self.add_run_buttons()
        self.add_progress()
        self.auto_table = choice_table()
        self.layout().addWidget(self.auto_table)
        self.layout().addStretch(1)
        self._connect()

    def _build_form(self):
        factor_row = self._build_method_widgets()
        self._build_engine_widgets()
        form = QFormLayout()
        form.addRow("image", self.layer_combo)
        form.addRow("", self.layer_info)
        form.addRow("method", self.method_combo)
        form.addRow("", self.method_desc)
        form.addRow("factor", factor_row)
        form.addRow("checkpoint", self.checkpoint_combo)
        form.addRow("device", self.device_combo)
        form.addRow("tile size", self.tile_spin)
        form.addRow("flow", self.flow_check)
        form.addRow("texture", self.texture_check)
        form.addRow("vectors", self.vector_step)
        form.addRow("", self.follow_check)
        form.addRow("run on", self.engine_combo)
        form.addRow("workers", self.workers_spin)
        form.addRow("scheduler", self.scheduler_edit)
        form.addRow("output", self.output_row)
        self.form = form
        self.layout().addLayout(form)

    def _build_method_widgets(self) -> QWidget:
        """The widgets of the rows "image" to "follow"; returns the factor row."""
        self.layer_combo = LayerCombo(self.viewer)
        self.layer_info = wrap_label()
        self.method_combo = QComboBox()
        for n, info in enumerate(method_infos()):
            self.method_combo.addItem(info.name)
            self.method_combo.setItemData(n, info.description, 3)  # Qt.ToolTipRole
        self.method_combo.addItem(AUTO)
        self.method_combo.setItemData(self.method_combo.count() - 1, AUTO_DESCRIPTION, 3)
        self.method_combo.setCurrentText("of-linear")
        self.method_desc = wrap_label()
        self.factor_spin = QDoubleSpinBox()
        self.factor_spin.setDecimals(3)
        self.factor_spin.setRange(1.001, 100.0)
        self.factor_spin.setSingleStep(0.5)
        self.factor_spin.setValue(2.0)
        self.factor_spin.setToolTip(
            "Output slices per input slice interval (z step / pixel size gives isotropic "
            "voxels). Fractional factors (e.g. 2.5) work with most methods.")
        self.factor_from_scale = QPushButton("from scale")
        self.factor_from_scale.setToolTip("z step / pixel size of the layer (isotropic output)")
        frow = QHBoxLayout()
        frow.addWidget(self.factor_spin, 1)
        frow.addWidget(self.factor_from_scale)
        factor_row = QWidget()
        factor_row.setLayout(frow)
        frow.setContentsMargins(0, 0, 0, 0)
        self.checkpoint_combo = QComboBox()
        self.checkpoint_combo.setToolTip("Weights of a learned method: the file shipped with "
                                         "napari-zup, or one you trained (zup train)")
        self.device_combo = QComboBox()
        self._device_probe = None  # (thread importing torch, method info) while it runs
        self.tile_spin = QSpinBox()
        self.tile_spin.setRange(0, 16384)
        self.tile_spin.setSingleStep(256)
        self.tile_spin.setSpecialValueText("auto")
        self.tile_spin.setToolTip("y/x tile edge in pixels (auto: 2048, or the chunks of a "
                                  "lazy layer); smaller tiles need less memory")
        self.flow_check = QCheckBox("show flow (vectors + colour wheel)")
        self.flow_check.setToolTip("of-linear / of-cubic (Farnebäck) and film / tsain (their "
                                   "learned flows): add a Vectors layer and a colour-coded "
                                   "flow layer in register with the output")
        self.vector_step = QSpinBox()
        self.vector_step.setRange(4, 256)
        self.vector_step.setValue(16)
        self.vector_step.setSuffix(" px grid")
        self.texture_check = QCheckBox(f"texture ({TEXTURE_RATIO:g} of the knots')")
        self.texture_check.setToolTip(
            "film, tsain: add real section texture (film: both knots warped by its flows; "
            "tsain: the nearest knot) back to the restored slices, so xz/yz views show no "
            "banding (smooth rows between textured knots). Costs PSNR "
            "(docs/learned-interpolation.md); off = the most faithful output")
        self.follow_check = QCheckBox("follow the newest slice")
        self.follow_check.setChecked(True)
        return factor_row

    def _build_engine_widgets(self):
        """The widgets of the rows "run on" to "output": where a run computes."""
        self.engine_combo = QComboBox()
        self.engine_combo.addItems(ENGINES)
        self.engine_combo.setToolTip(
            "threads: computed inside napari, fastest start, for what fits this machine. "
            "dask: every output chunk is a task on a dask cluster writing an OME-Zarr store "
            "(with a pyramid) that the new layer reads as it fills in; resumable, and for "
            "volumes larger than this machine. on demand: the whole result layer at once; "
            "the slices (and xz/yz tiles) you look at are computed in the background and "
            "kept in memory, nothing is written")
        self.workers_spin = QSpinBox()
        self.workers_spin.setRange(1, 256)
        self.workers_spin.setValue(max(1, os.cpu_count() or 1))
        self.workers_spin.setToolTip("worker processes of the local dask cluster")
        self.scheduler_edit = QLineEdit()
        self.scheduler_edit.setPlaceholderText("tcp://host:8786")
        self.scheduler_edit.setToolTip("address of a running dask scheduler (dask-jobqueue, "
                                       "Kubernetes, `dask scheduler`); the workers must see "
                                       "the input and output paths")
        self.output_edit = QLineEdit()
        self.output_edit.setPlaceholderText("result.zarr")
        self.output_edit.setToolTip("OME-Zarr store the cluster writes; an unfinished store "
                                    "of the same run is resumed")
        self.output_browse = QPushButton("…")
        self.output_browse.setMaximumWidth(32)
        orow = QHBoxLayout()
        orow.setContentsMargins(0, 0, 0, 0)
        orow.addWidget(self.output_edit, 1)
        orow.addWidget(self.output_browse)
        self.output_row = QWidget()
        self.output_row.setLayout(orow)

    def _connect(self):
        self.layer_combo.currentIndexChanged.connect(self._layer_changed)
        self.method_combo.currentTextChanged.connect(self._method_changed)
        self.factor_from_scale.clicked.connect(self._prefill_factor)
        self.checkpoint_combo.activated.connect(self._checkpoint_chosen)
        self.flow_check.toggled.connect(self.vector_step.setEnabled)
        # "show flow" adds a Vectors layer; the first one imports pandas (~1 s) on the GUI
        # thread: import it in the background as soon as the box is ticked
        self.flow_check.toggled.connect(lambda on: on and preload())
        self.run_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        self.engine_combo.currentTextChanged.connect(self._engine_changed)
        self.output_browse.clicked.connect(self._browse_output)
        self.output_edit.textEdited.connect(lambda *_: setattr(self, "_output_auto", False))
        self.method_combo.currentTextChanged.connect(self._suggest_output)
        self.factor_spin.valueChanged.connect(self._suggest_output)
        self.vector_step.setEnabled(False)
        self._method_changed(self.method_combo.currentText())
        self._layer_changed()
        self._engine_changed(self.engine_combo.currentText())

    # -- form ---------------------------------------------------------------------------------

    def _layer_changed(self, *_):
        layer = self.layer_combo.layer()
        if layer is None:
            self.layer_info.setText("open a 3D stack (File > Open, or File > Open Sample)")
            return
        problem = layer_problem(layer)
        if problem:
            self.layer_info.setText(f"<span style='color:#e8a33d'>{problem}</span>")
            return
        data = layer_volume(layer)
        shape = tuple(data.shape)
        s = tuple(float(v) for v in layer.scale[-3:])
        text = (f"{shape[0]}×{shape[1]}×{shape[2]} (z,y,x), voxel {s[0]:g}×{s[1]:g}×{s[2]:g}, "
                f"anisotropy {anisotropy(layer):.3g}")
        a = max(anisotropy(layer), 1.0)
        out_bytes = a * shape[0] * shape[1] * shape[2] * data.dtype.itemsize
        if out_bytes > OUTPUT_RAM_LIMIT:
            text += (f"; isotropic output ≈ {out_bytes / 1e9:.1f} GB: for volumes this size "
                     "'run on: dask' writes an OME-Zarr store chunk by chunk (resumable)")
        self.layer_info.setText(text)
        self._prefill_factor()
        self._suggest_output()

    def _prefill_factor(self, *_):
        layer = self.layer_combo.layer()
        if layer is not None and layer_problem(layer) is None:
            name = self.method_combo.currentText()
            try:  # the rule of `zup reconstruct --factor auto`: one function for both
                fractional = name == AUTO or get_info(name).fractional
                f = grid.auto_factor(tuple(float(v) for v in layer.scale[-3:]), fractional)
            except ValueError:  # unknown voxel size or already isotropic: keep the value
                return
            self.factor_spin.setValue(float(f))

    def _fill_devices(self, info) -> None:
        """The device list of method ``info`` (None: auto's learned candidates). Asking torch
        for a GPU imports it (1-2 s, 0.15-0.3 s of it holding the GIL): if it is not imported
        yet, that happens in the background while the list says "auto", and the list is filled
        when it is done (a classical method needs no torch)."""
        from ..devices import available_devices

        self.device_combo.clear()
        self._device_probe = None
        self.device_combo.setToolTip("")
        if info is not None and tuple(info.devices) == ("cpu",):
            self.device_combo.addItem("cpu")
            self.device_combo.setEnabled(False)
            return
        thread = preload(("torch",))  # None: imported already
        if thread is not None:  # a run started meanwhile takes the best device there is
            self.device_combo.addItem("auto")
            self.device_combo.setEnabled(False)
            self.device_combo.setToolTip("looking for a GPU (importing torch)…; auto: the "
                                         "best device found when the run starts")
            self._device_probe = (thread, info)
            QTimer.singleShot(100, self._devices_probed)
            return
        devices = [d for d in available_devices()
                   if info is None or d in info.devices] or ["cpu"]
        self.device_combo.addItems(devices)
        self.device_combo.setEnabled(len(devices) > 1)

    def _devices_probed(self) -> None:
        if self._device_probe is None:  # superseded
            return
        thread, info = self._device_probe
        if thread.is_alive():
            QTimer.singleShot(100, self._devices_probed)
            return
        self._device_probe = None
        self._fill_devices(info)

    def _method_changed(self, name):
        from ..checkpoints import default_checkpoint

        if name == AUTO:
            self.method_desc.setText(AUTO_DESCRIPTION)
            self.method_combo.setToolTip(AUTO_DESCRIPTION)
            self.checkpoint_combo.clear()
            self.checkpoint_combo.addItem("bundled (learned candidates)")
            self.checkpoint_combo.setEnabled(False)
            self._fill_devices(None)
            self.flow_check.setChecked(False)
            self.flow_check.setEnabled(False)
            self.texture_check.setChecked(False)
            self.texture_check.setEnabled(False)
            return
        info = get_info(name)
        self.method_desc.setText(info.description)
        self.method_combo.setToolTip(info.description)
        self.checkpoint_combo.clear()
        if info.needs_checkpoint:
            if default_checkpoint(name) is not None:
                self.checkpoint_combo.addItem(BUNDLED)
            if self._checkpoint_file:
                self.checkpoint_combo.addItem(self._checkpoint_file)
            self.checkpoint_combo.addItem(CHOOSE_FILE)
        else:
            self.checkpoint_combo.addItem("not needed")
        self.checkpoint_combo.setEnabled(info.needs_checkpoint)
        self._fill_devices(info)
        flows = info.has_flows or info.shows_flows
        self.flow_check.setEnabled(flows)
        if not flows:
            self.flow_check.setChecked(False)
        self.texture_check.setEnabled(info.texture)
        if not info.texture:
            self.texture_check.setChecked(False)

    # -- engine -----------------------------------------------------------------------------

    def _show_row(self, widget, on: bool) -> None:
        if hasattr(self.form, "setRowVisible"):  # Qt >= 6.4
            self.form.setRowVisible(widget, on)
        else:
            widget.setVisible(on)
            label = self.form.labelForField(widget)
            if label is not None:
                label.setVisible(on)

    def _engine_changed(self, engine):
        on_dask = engine in (ENGINE_LOCAL, ENGINE_SCHEDULER)
        self._show_row(self.workers_spin, engine == ENGINE_LOCAL)
        self._show_row(self.scheduler_edit, engine == ENGINE_SCHEDULER)
        self._show_row(self.output_row, on_dask)
        # The cluster writes chunk by chunk and keeps no flow fields; tiles are its chunks.
        for w in (self.tile_spin, self.flow_check, self.vector_step, self.follow_check):
            self._show_row(w, not on_dask and engine != ENGINE_ON_DEMAND)
        self._show_row(self.tile_spin, not on_dask)
        if on_dask:
            self._suggest_output()

    def _suggest_output(self, *_):
        """Fill the output path with a fresh name, unless the user typed one."""
        if self.output_edit.text() and not self._output_auto:
            return
        run = self.run
        if isinstance(run, ClusterRun) and run.status != "done" and \
                Path(self.output_edit.text()).expanduser() == run.out_path:
            return  # keep the store of a running or unfinished run: rerunning resumes it
        layer = self.layer_combo.layer()
        if (layer is None or layer_problem(layer)
                or self.engine_combo.currentText() in (ENGINE_THREADS, ENGINE_ON_DEMAND)):
            return
        self.output_edit.setText(str(suggest_output(layer, self.method_combo.currentText(),
                                                    self.factor_spin.value())))
        self._output_auto = True

    def _browse_output(self):
        path, _ = QFileDialog.getSaveFileName(self, "Output OME-Zarr store",
                                              self.output_edit.text(), "OME-Zarr (*.zarr)")
        if path:
            if not path.lower().endswith(".zarr"):
                path += ".zarr"
            self.output_edit.setText(path)
            self._output_auto = False

    def _checkpoint_chosen(self, index):
        if self.checkpoint_combo.itemText(index) != CHOOSE_FILE:
            return
        path, _ = QFileDialog.getOpenFileName(self, "Checkpoint", "",
                                              "Checkpoints (*.safetensors *.pt)")
        if path:
            self._checkpoint_file = path
            self._method_changed(self.method_combo.currentText())
            self.checkpoint_combo.setCurrentText(path)

    def method_params(self, name: str | None = None) -> dict | None:
        """Parameters passed to the method: checkpoint and device for learned methods."""
        name = name or self.method_combo.currentText()
        info = get_info(name)
        if not info.needs_checkpoint:
            return None
        choice = self.checkpoint_combo.currentText()
        params = {"device": self.device_combo.currentText()}
        if info.texture and self.texture_check.isChecked():
            params["texture"] = TEXTURE_RATIO
        if choice == CHOOSE_FILE or not choice:
            raise ValueError(f"method {name!r} needs a checkpoint: choose a file")
        if choice != BUNDLED:
            if not Path(choice).is_file():
                raise ValueError(f"checkpoint {choice!r} does not exist")
            params["checkpoint"] = choice
        return params

    # -- run ----------------------------------------------------------------------------------

    @property
    def choosing(self) -> bool:
        return self._choosing

    def start(self, method: str | None = None):
        """Check the inputs, add the output layer and start streaming into it. With "auto",
        start the choice (a worker); the run with the winner follows when it is made."""
        if (self.run is not None and self.run.running) or self.choosing:
            notify_error("a reconstruction is already running; cancel it or wait")
            return None
        layer = self.layer_combo.layer()
        problem = layer_problem(layer)
        if problem:
            notify_error(f"Reconstruct: {problem}")
            return None
        method = method or self.method_combo.currentText()
        if method == AUTO:
            return self._start_auto(layer)
        info = get_info(method)
        try:
            factor = grid.parse_factor(self.factor_spin.value())
            if factor.denominator != 1 and not info.fractional:
                raise ValueError(f"method {method!r} supports only integer factors, got "
                                 f"{float(factor):g}; set the factor to a whole number")
            if layer_volume(layer).shape[0] < info.min_slices:
                raise ValueError(f"method {method!r} needs at least {info.min_slices} slices")
            params = (self.method_params(method) if method == self.method_combo.currentText()
                      else self._auto_params().get(method))
            for note in (factor_warning(method, factor, (params or {}).get("checkpoint")),
                         oversampling_note(layer, factor)):
                if note:
                    notify_warning(f"Reconstruct: {note}")
            engine = self.engine_combo.currentText()
            if engine == ENGINE_ON_DEMAND:
                return self._start_on_demand(layer, method, factor, params)
            if engine != ENGINE_THREADS:
                return self._start_cluster(layer, method, factor, params, engine)
        except ValueError as exc:
            notify_error(f"Reconstruct: {exc}")
            return None
        self.run = StreamingRun(
            self.viewer, layer, method, factor, method_params=params,
            tile_size=self.tile_spin.value() or None,
            want_flows=self.flow_check.isChecked() and self.flow_check.isEnabled(),
            vector_step=self.vector_step.value(), follow=self.follow_check.isChecked(),
            on_progress=self._on_progress, on_done=self._on_done)
        self.runs.append(self.run)
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress_bar.setRange(0, self.run.out_shape[0])
        self.progress_bar.setValue(0)
        self.progress_bar.setVisible(True)
        self.status.setText(f"{method} ×{float(factor):g}: starting…")
        self.run.start()
        return self.run

    def _start_on_demand(self, layer, method, factor, params):
        self.run = OnDemandRun(self.viewer, layer, method, factor, method_params=params,
                               tile_size=self.tile_spin.value() or None)
        self.runs.append(self.run)
        self.run.start()
        self.status.setText(f"{method} ×{float(factor):g} on demand: layer "
                            f"{self.run.layer.name!r}; the slices you view are computed in the "
                            "background (black until they arrive)")
        return self.run

    def _start_cluster(self, layer, method, factor, params, engine):
        out = self.output_edit.text().strip()
        if not out:
            raise ValueError("choose an output .zarr store for the dask cluster to write")
        if not out.lower().endswith(".zarr"):
            raise ValueError(f"output {out!r}: the dask cluster writes OME-Zarr; use a name "
                             "ending in .zarr")
        parent = Path(out).expanduser().parent
        if not parent.is_dir():
            raise ValueError(f"output folder {str(parent)!r} does not exist; create it or "
                             "choose another")
        scheduler = None
        if engine == ENGINE_SCHEDULER:
            scheduler = self.scheduler_edit.text().strip()
            if not scheduler:
                raise ValueError("enter the address of the dask scheduler "
                                 "(e.g. tcp://host:8786)")
        self.run = ClusterRun(
            self.viewer, layer, method, factor, Path(out).expanduser(), method_params=params,
            workers=self.workers_spin.value() if engine == ENGINE_LOCAL else None,
            scheduler=scheduler, on_progress=self._on_cluster_progress, on_done=self._on_done)
        self.runs.append(self.run)
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress_bar.setRange(0, 0)  # busy until the cluster reports its chunk count
        self.progress_bar.setVisible(True)
        where = scheduler or f"a local cluster of {self.workers_spin.value()} workers"
        self.status.setText(f"{method} ×{float(factor):g}: starting {where}…")
        self.run.start()
        return self.run

    def _on_cluster_progress(self, run):
        self.progress_bar.setRange(0, max(run.total, 1))
        self.progress_bar.setValue(run.done)
        self.status.setText(f"{run.method} on dask: {run.describe()} -> {run.out_path}")

    # -- auto ---------------------------------------------------------------------------------

    def _auto_params(self) -> dict:
        """Device for the learned candidates (bundled checkpoints)."""
        dev = self.device_combo.currentText() or "cpu"
        return {i.name: {"device": dev if dev in i.devices or dev == "auto" else "cpu"}
                for i in method_infos() if i.needs_checkpoint}

    def _start_auto(self, layer):
        import threading

        from ..progress import events_from_callback
        from ._common import start_worker

        try:
            factor = grid.parse_factor(self.factor_spin.value())
        except ValueError as exc:
            notify_error(f"Reconstruct: {exc}")
            return None
        self._auto_layer, self._auto_factor = layer, factor
        self._auto_cancel = threading.Event()
        self.choice = None
        self._choosing = True
        self.auto_table.setVisible(False)
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress_bar.setRange(0, 0)
        self.progress_bar.setVisible(True)
        self.status.setText("auto: self-evaluating the methods on a sample of the stack…")
        self._auto_worker = start_worker(
            events_from_callback, choose, layer_volume(layer), factor, self.auto_candidates,
            self._auto_params(), self._auto_cancel, on_yield=self._on_auto_progress,
            on_return=self._on_auto_choice, on_error=self._on_auto_error)
        return self._auto_worker

    def _on_auto_progress(self, event):
        self.progress_bar.setRange(0, max(event.total, 1))
        self.progress_bar.setValue(event.done)
        self.status.setText(f"{event.message} ({event.done}/{event.total})")

    def _auto_ended(self):
        self._choosing = False
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.progress_bar.setVisible(False)

    def _on_auto_choice(self, choice):
        self._auto_ended()
        if choice is None:
            self.status.setText("auto: cancelled before a method was chosen; nothing added")
            return
        self.choice = choice
        self.auto_table.setPlainText(choice.table)
        self.auto_table.setVisible(True)
        layer = self._auto_layer
        if layer not in self.viewer.layers:
            self.status.setText(f"auto chose {choice.method}, but the layer is gone")
            return
        self.layer_combo.set_layer(layer)
        self.factor_spin.setValue(float(self._auto_factor))
        reason = choice.reason.removeprefix(f"{choice.method}: ")
        note = f"auto chose {choice.method}: {reason}."
        self.status.setText(note + " Reconstructing with it…")
        self._auto_note = note  # before start(): a short run may end inside it
        run = self.start(choice.method)
        if run is None:
            self._auto_note = None
            self.status.setText(note + " The run could not start (see the notification).")

    def _on_auto_error(self, exc):
        self._auto_ended()
        self.status.setText(f"<span style='color:#e8a33d'>auto: {exc}</span>")
        notify_error(f"Reconstruct auto: {exc}")

    def cancel(self):
        if self.choosing:
            self._auto_cancel.set()
            self.status.setText("cancelling the auto choice…")
            return
        if self.run is not None and self.run.running:
            self.run.cancel()
            self.status.setText("cancelling (stops after the tiles in progress)…")

    def _on_progress(self, run):
        # At most ~8 updates a second: each new status text can relayout the dock (and the
        # canvas beside it); per slice, fast methods spent seconds of the GUI thread there.
        now = time.perf_counter()
        if now - self._last_status < 0.125 and run.progress.done < run.progress.total:
            return
        self._last_status = now
        self.progress_bar.setValue(run.progress.done)
        first = run.stats.get("first_slice_s")
        self.status.setText(f"{run.method}: {run.progress}"
                            + (f"; first slice after {first:.2f} s" if first else ""))

    def _on_done(self, run):
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.progress_bar.setVisible(False)
        s = run.stats
        if isinstance(run, ClusterRun):
            if run.status == "done":
                self.status.setText(f"{run.method} on dask: {run.total} chunks in "
                                    f"{s['total_s']:.1f} s -> {run.out_path}")
                self._output_auto = True
                self._suggest_output()  # the next run must not overwrite this result
            else:
                self.status.setText(f"{run.method} on dask: {run.status} after {run.done} of "
                                    f"{run.total} chunks; run again with the same output "
                                    "to resume")
            return
        note = getattr(self, "_auto_note", None)
        self._auto_note = None
        prefix = note + " " if note and self.choice is not None and \
            run.method == self.choice.method else ""
        if run.status == "done":
            self.status.setText(
                f"{prefix}{run.method}: {s['slices']} slices in "
                f"{s['total_s']:.{2 if s['total_s'] < 10 else 1}f} s "  # as precise as the next
                f"(first slice after {s.get('first_slice_s', float('nan')):.2f} s) -> "
                f"layer {run.layer.name!r}")
        else:
            self.status.setText(f"{run.method}: {run.status} after {s['slices']} of "
                                f"{run.out_shape[0]} slices; layer marked partial")
