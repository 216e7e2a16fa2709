"""Train widget: train or adapt a learned method (niiv, a2i, film, tsain) on the user's own
anisotropic stack, live (progress, loss curve, restored preview plane), stoppable at any time;
then Reconstruct with the checkpoint it wrote.

The widget only displays a :class:`napari_zup.training.session.TrainingSession` (the same loop
as ``zup train``): a plain background thread iterates the session's events into a queue; a GUI
timer drains the queue a few times per second and redraws, so a fast training never floods the
event loop. The file at the output path always holds the best model so far (written
atomically), so Stop, or closing napari, never loses more than the steps since the last
validation. By default training starts from the bundled model (adaptation).
"""
from __future__ import annotations

import atexit
import math
import queue
import re
import threading
import time
from pathlib import Path

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QToolButton,
    QWidget,
)

from ._train_plot import TrainPlot, _fmt_s, _unit_plane
from ._common import (
    DockWidget,
    LayerCombo,
    anisotropy,
    layer_problem,
    layer_volume,
    notify_error,
    notify_info,
    wrap_label,
)

#: What a training imports the first time: torch, torch._dynamo (torch.optim's optimizers
#: import it when constructed, ~1 s) and ours.
TRAINING_MODULES = ("torch", "torch._dynamo", "napari_zup.training.session",
                    "napari_zup.training.interp", "napari_zup.training.axial",
                    "napari_zup.methods._torch_common")

#: Trainable methods offered by the widget (self-supervised on the stack itself); their
#: descriptions come from the methods' MethodInfo.
TRAINABLE = ("niiv", "a2i", "film", "tsain")
#: points on the loss curve: the mean loss over this many steps
POINT_STEPS = 10


#: Largest stack trained on as a whole (voxels; it is held as float32 in memory).
MAX_VOXELS = 400_000_000
#: GUI refresh interval while training (ms).
POLL_MS = 250
CACHE_DIR = Path.home() / ".cache" / "napari-zup"


_RUNNING: dict = {}  # thread -> stop event, of trainings still running


@atexit.register
def _stop_trainings() -> None:
    """At exit (napari closed while training): stop, and let the last save finish."""
    for thread, stop in list(_RUNNING.items()):
        stop.set()
    for thread in list(_RUNNING):
        thread.join(timeout=60)


def default_checkpoint_path(layer_name: str, method: str, directory: Path | None = None) -> Path:
    """``~/.cache/napari-zup/<layer>-<method>.safetensors``; ``-2``, ``-3``... when taken."""
    directory = Path(directory or CACHE_DIR)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{layer_name}-{method}").strip("_") or method
    path = directory / f"{stem}.safetensors"
    n = 2
    while path.exists():
        path = directory / f"{stem}-{n}.safetensors"
        n += 1
    return path


class TrainWidget(DockWidget):
    """Train a learned method on a 3D image layer; see the module docstring."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(napari_viewer, parent)
        self.thread: threading.Thread | None = None
        self.stop_event = threading.Event()
        self.result = None
        self.error: BaseException | None = None
        self.status_text = "idle"  # idle, running, stopping, done, stopped, failed
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.preview: np.ndarray | None = None
        self.input_plane: np.ndarray | None = None
        self.run = None  # the StreamingRun started by "Reconstruct with the result"
        self.trained: dict | None = None  # layer, method, factor, path of the last training
        #: validation (and preview) interval in steps; None: 50, or less for short runs
        self.eval_every: int | None = None
        self._queue: queue.Queue = queue.Queue()
        self._path_edited = False
        self._t0 = 0.0
        self._last_status = 0.0
        self._dirty = False
        self._build_form()
        self._build_run_area()
        self._timer = QTimer(self)
        self._timer.setInterval(POLL_MS)
        self._timer.timeout.connect(self._poll)
        self.layer_combo.currentIndexChanged.connect(self._layer_changed)
        self.method_combo.currentTextChanged.connect(self._method_changed)
        self.path_edit.textEdited.connect(self._path_typed)
        self.path_edit.textChanged.connect(self._path_changed)
        self.path_button.clicked.connect(self._choose_path)
        self.start_button.clicked.connect(self.start)
        self.stop_button.clicked.connect(self.stop)
        self.reconstruct_button.clicked.connect(self.reconstruct)
        self._method_changed(self.method_combo.currentText())
        self._layer_changed()
        # torch's first import holds the GIL while its libraries load (0.15-0.3 s here): done
        # in the background once the dock is up, it does not freeze the GUI in a training
        self.preload_soon(TRAINING_MODULES)

    def _build_form(self):
        """Image, method, factor, z sampling, budget, steps and the checkpoint file."""
        form = QFormLayout()
        self.layer_combo = LayerCombo(self.viewer)
        self.layer_info = wrap_label()
        self.method_combo = QComboBox()
        from ..methods.base import get_info

        methods = {m: get_info(m).description for m in TRAINABLE}
        self.methods = methods
        for n, (name, desc) in enumerate(methods.items()):
            self.method_combo.addItem(name)
            self.method_combo.setItemData(n, desc, 3)  # Qt.ToolTipRole
        self.method_desc = wrap_label()
        self.factor_spin = QSpinBox()
        self.factor_spin.setRange(2, 64)
        self.factor_spin.setValue(4)
        self.factor_spin.setToolTip("z step / xy pixel size of the stack, as an integer "
                                    "(pre-filled from the layer's scale)")
        self.degradation_combo = QComboBox()
        self.degradation_combo.addItems(["decimate", "pool"])
        self.degradation_combo.setToolTip(
            "how z was sampled: decimate = thin sections (FIB-SEM), pool = thick sections "
            "(ssTEM, each slice averages its section)")
        self.minutes_spin = QDoubleSpinBox()
        self.minutes_spin.setRange(0.1, 24 * 60)
        self.minutes_spin.setDecimals(1)
        self.minutes_spin.setValue(10.0)
        self.minutes_spin.setSuffix(" min")
        self.minutes_spin.setToolTip("time budget; Stop ends earlier and keeps the best model")
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(0, 10_000_000)
        self.steps_spin.setSingleStep(100)
        self.steps_spin.setSpecialValueText("no limit")
        self.steps_spin.setToolTip("stop after this many steps (whichever comes first)")
        self.path_edit = QLineEdit()
        self.path_edit.setToolTip("checkpoint written during training (always the best model "
                                  "so far); use it later in Reconstruct or `zup reconstruct`")
        self.path_button = QToolButton()
        self.path_button.setText("…")
        prow = QHBoxLayout()
        prow.setContentsMargins(0, 0, 0, 0)
        prow.addWidget(self.path_edit, 1)
        prow.addWidget(self.path_button)
        path_row = QWidget()
        path_row.setLayout(prow)
        self.resume_check = QCheckBox("continue from this file")
        self.resume_check.setToolTip("resume the training state stored beside the output file "
                                     "(its step count and best score carry on)")
        self.bundled_check = QCheckBox("start from the bundled model")
        self.bundled_check.setChecked(True)
        self.bundled_check.setToolTip(
            "adapt the shipped model to this stack (kept only if it beats the bundled one on "
            "held-out sections); off: train from random weights")

        form.addRow("image", self.layer_combo)
        form.addRow("", self.layer_info)
        form.addRow("method", self.method_combo)
        form.addRow("", self.method_desc)
        form.addRow("factor", self.factor_spin)
        form.addRow("z sampling", self.degradation_combo)
        form.addRow("budget", self.minutes_spin)
        form.addRow("max steps", self.steps_spin)
        form.addRow("checkpoint", path_row)
        form.addRow("", self.bundled_check)
        form.addRow("", self.resume_check)
        self.layout().addLayout(form)

    def _build_run_area(self):
        """Start/Stop, progress, the loss plot and "Reconstruct with the result"."""
        buttons = QHBoxLayout()
        self.start_button = QPushButton("Start")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.stop_button.setToolTip("stop now; the best checkpoint so far stays on disk")
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.stop_button)
        self.layout().addLayout(buttons)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1000)
        self.progress_bar.setTextVisible(False)
        self.progress_bar.setVisible(False)
        self.status = wrap_label()
        self.layout().addWidget(self.progress_bar)
        self.layout().addWidget(self.status)

        self.plot = TrainPlot(self.layout())
        self.reconstruct_button = QPushButton("Reconstruct with the result")
        self.reconstruct_button.setEnabled(False)
        self.reconstruct_button.setToolTip(
            "stream the isotropic reconstruction of the trained layer into a new layer, as "
            "the Reconstruct widget does (and select this checkpoint there if it is open)")
        self.layout().addWidget(self.reconstruct_button)
        self.layout().addStretch(1)

    # -- form ---------------------------------------------------------------------------------

    def _layer_changed(self, *_):
        layer = self.layer_combo.layer()
        if layer is None:
            self.layer_info.setText("open a 3D stack (File > Open, or File > Open Sample)")
            return
        problem = layer_problem(layer, min_slices=3)
        if problem:
            self.layer_info.setText(f"<span style='color:#e8a33d'>{problem}</span>")
            return
        shape = tuple(layer_volume(layer).shape)
        s = tuple(float(v) for v in layer.scale[-3:])
        self.layer_info.setText(
            f"{shape[0]}×{shape[1]}×{shape[2]} (z,y,x), voxel {s[0]:g}×{s[1]:g}×{s[2]:g}, "
            f"anisotropy {anisotropy(layer):.3g}")
        a = anisotropy(layer)
        if a >= 1.5:
            self.factor_spin.setValue(int(round(a)))
        self._update_default_path()

    def _method_changed(self, name):
        self.method_desc.setText(self.methods.get(name, ""))
        pair = name in ("film", "tsain")
        self.degradation_combo.setEnabled(not pair)  # pair methods learn from z itself
        self.degradation_combo.setToolTip(
            "not used by film/tsain: they learn (z-1, z+1) -> z from the stack's own slices"
            if pair else "how z was sampled: decimate = thin sections (FIB-SEM), pool = "
            "thick sections (ssTEM, each slice averages its section)")
        self._update_default_path()
        self._path_changed(self.path_edit.text())

    def _update_default_path(self):
        if self._path_edited:
            return
        layer = self.layer_combo.layer()
        name = layer.name if layer is not None else "stack"
        self.path_edit.setText(str(default_checkpoint_path(name, self.method_combo.currentText())))

    def _path_typed(self, *_):
        self._path_edited = True

    def _resume_file(self, text) -> Path:
        path = Path(text).expanduser()
        return path.with_name(path.name + ".state.pt")

    def _path_changed(self, text):
        exists = bool(text) and self._resume_file(text).is_file()
        self.resume_check.setEnabled(exists)
        if not exists:
            self.resume_check.setChecked(False)

    def _choose_path(self):
        path, _ = QFileDialog.getSaveFileName(self, "Checkpoint to write", self.path_edit.text(),
                                              "Checkpoints (*.safetensors)")
        if path:
            if not path.endswith(".safetensors"):
                path += ".safetensors"
            self._path_edited = True
            self.path_edit.setText(path)

    # -- training -----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def _check(self):
        """(layer, volume, method, factor, path) or raise ValueError naming the problem."""
        layer = self.layer_combo.layer()
        problem = layer_problem(layer, min_slices=3)
        if problem:
            raise ValueError(problem)
        volume = layer_volume(layer)
        n = int(np.prod(volume.shape))
        if n > MAX_VOXELS:
            raise ValueError(
                f"layer {layer.name!r} has {n / 1e6:.0f} M voxels; training holds the stack in "
                f"memory (max {MAX_VOXELS / 1e6:.0f} M): train on a crop (e.g. "
                "`viewer.add_image(layer.data[:, :2048, :2048])`), then reconstruct the whole")
        method = self.method_combo.currentText()
        factor = int(self.factor_spin.value())
        if volume.shape[1] < 8 * factor and volume.shape[2] < 8 * factor:
            raise ValueError(f"layer {layer.name!r} is too small in y/x {tuple(volume.shape[1:])} "
                             f"for factor {factor}: slices of at least {8 * factor} pixels needed")
        if method in ("film", "tsain") and (volume.shape[0] < 8 or min(volume.shape[1:]) < 32):
            raise ValueError(f"{method} learns (z-1, z+1) -> z: layer {layer.name!r} "
                             f"{tuple(volume.shape)} needs at least 8 slices of 32 × 32 pixels")
        text = self.path_edit.text().strip()
        if not text:
            raise ValueError("choose a checkpoint file to write (the … button)")
        path = Path(text).expanduser()
        if path.suffix != ".safetensors":
            raise ValueError(f"checkpoint {str(path)!r} must end in .safetensors")
        if path.is_dir():
            raise ValueError(f"checkpoint {str(path)!r} is a folder; choose a file name")
        return layer, volume, method, factor, path

    def start(self):
        """Start training in a background thread; returns False (and notifies) on bad input."""
        if self.running:
            notify_error("Train: a training is already running; Stop it first")
            return False
        try:
            layer, volume, method, factor, path = self._check()
            path.parent.mkdir(parents=True, exist_ok=True)
        except (ValueError, OSError) as exc:
            notify_error(f"Train: {exc}")
            return False
        from ..training.session import Stack, TrainConfig, TrainingSession, to_unit

        resume = None
        if self.resume_check.isChecked() and self._resume_file(str(path)).is_file():
            resume = str(self._resume_file(str(path)))
        minutes = float(self.minutes_spin.value())
        max_steps = int(self.steps_spin.value()) or None
        eval_every = self.eval_every or (min(50, max_steps) if max_steps else 50)
        pair = method in ("film", "tsain")
        scale = tuple(float(v) for v in layer.scale[-3:])
        cfg = TrainConfig(
            method, None, out=path, minutes=minutes, steps=max_steps, eval_every=eval_every,
            crop=int(min(96, (min(volume.shape[1:]) // 16) * 16)) if pair else None,
            factors=None if pair else [factor], self_supervised=True, resume=resume,
            init="bundled" if self.bundled_check.isChecked() and not resume else None,
            degradation=self.degradation_combo.currentText(), preview_factor=factor)

        self.stop_event = threading.Event()
        self._queue = queue.Queue()
        self.result = None
        self.error = None
        self.steps, self.losses = [], []
        self._acc = []
        self.preview = None
        self.input_plane = self._input_plane(volume, factor)
        self.plot.reset()
        self.trained = {"layer": layer, "method": method, "factor": factor, "path": path,
                        "minutes": minutes, "max_steps": max_steps, "start_step": None,
                        "step": 0, "loss": None}
        self.status_text = "running"
        self._t0 = time.perf_counter()
        q = self._queue
        stop = self.stop_event

        def job():
            try:
                cfg.data = Stack(to_unit(np.asarray(volume), repr(layer.name)), layer.name, scale)
                for ev in TrainingSession(cfg, stop).events():
                    q.put(ev)
            except BaseException as exc:  # shown in the GUI thread, never raised there
                q.put(exc)
            finally:
                _RUNNING.pop(threading.current_thread(), None)

        self.thread = threading.Thread(target=job, daemon=True, name="zup-train")
        _RUNNING[self.thread] = stop
        self.thread.start()
        self.start_button.setEnabled(False)
        self.stop_button.setEnabled(True)
        self.reconstruct_button.setEnabled(False)
        for w in self._form_widgets():
            w.setEnabled(False)
        self.progress_bar.setValue(0)
        self.progress_bar.setVisible(True)
        start = "from the bundled model" if cfg.init else "from scratch"
        self.status.setText(f"{method} ×{factor} on {layer.name!r} ({start}): preparing…")
        # No napari progress bar (activity panel): redrawing it halved the training speed
        # (measured: 276 vs 495 niiv steps in 30 s); the dock's own bar is enough.
        self._last_status = 0.0
        self._timer.start()
        return True

    # what the tests and the plot panel read
    @property
    def loss_line(self):
        return self.plot.loss_line

    @property
    def _im_out(self):
        return self.plot.im_out

    def stop(self):
        """Ask the training to stop after the current step; the best checkpoint stays."""
        if self.running:
            self.stop_event.set()
            self.status_text = "stopping"
            self.stop_button.setEnabled(False)
            self.status.setText("stopping after the current step (final validation)…")

    def _form_widgets(self):
        return (self.layer_combo, self.method_combo, self.factor_spin, self.degradation_combo,
                self.minutes_spin, self.steps_spin, self.path_edit, self.path_button,
                self.resume_check, self.bundled_check)

    @staticmethod
    def _input_plane(volume, factor):
        """The middle xz plane as the preview shows it, the input repeated ``factor`` times
        (nearest neighbour) so that both panels have the same geometry."""
        z, h, w = volume.shape
        plane = np.asarray(volume[:, h // 2, : min(160, w)]).astype(np.float32)
        n_out = (z - 1) * factor + 1
        plane = plane[np.minimum(np.round(np.arange(n_out) / factor).astype(int), z - 1)]
        return _unit_plane(plane, volume.dtype)

    def _poll(self):
        """GUI thread: drain the session's events and redraw (every POLL_MS)."""
        from ..training.session import Finished, Message, Step, Validation

        end = None
        changed = False
        t = self.trained
        while True:
            try:
                ev = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(ev, Step):
                if t["start_step"] is None:
                    t["start_step"] = ev.step - 1
                t["step"], t["loss"] = ev.step, ev.loss
                if math.isfinite(ev.loss):
                    self._acc.append(ev.loss)
                # the status line shows the step and loss at once; the curve gets one point
                # (the mean loss) per POINT_STEPS steps
                if ev.step % POINT_STEPS == 0:
                    if self._acc:
                        self.steps.append(int(ev.step))
                        self.losses.append(float(np.mean(self._acc)))
                    self._acc = []
                    changed = True
            elif isinstance(ev, Validation):
                t["psnr"] = ev.best_psnr
                if ev.preview is not None:
                    self.preview = ev.preview
                    changed = True
            elif isinstance(ev, Message):
                t["message"] = ev.text
            elif isinstance(ev, Finished):
                end = ("done", ev.result)
            elif isinstance(ev, BaseException):
                end = ("error", ev)
        if changed:
            self.plot.redraw(self.steps, self.losses, self.preview, self.input_plane)
        self._update_progress()
        if end is not None:
            self._finish(end)
        elif not self.running and self._queue.empty():  # thread died without a word
            self._finish(("error", RuntimeError("training thread ended unexpectedly")))

    def _update_progress(self):
        t = self.trained
        elapsed = time.perf_counter() - self._t0
        budget = t["minutes"] * 60.0
        frac = elapsed / budget
        step = t["step"]
        eta = budget - elapsed
        s0 = t["start_step"] or 0
        if t["max_steps"] and step > s0:
            frac_steps = (step - s0) / t["max_steps"]
            if frac_steps > frac:
                frac = frac_steps
                eta = elapsed * (1 - frac_steps) / frac_steps
        frac = min(max(frac, 0.0), 1.0)
        self.progress_bar.setValue(int(1000 * frac))
        now = time.perf_counter()
        # the wrapped status label relayouts the dock: once a second is enough
        if self.status_text == "running" and step and now - self._last_status >= 1.0:
            self._last_status = now
            loss = f", loss {t['loss']:.4f}" if t["loss"] is not None else ""
            best = f", best held-out PSNR {t['psnr']:.2f} dB" if t.get("psnr") else ""
            self.status.setText(
                f"{t['method']} ×{t['factor']}: step {step}{loss}{best}; {_fmt_s(elapsed)} "
                f"elapsed, about {_fmt_s(max(eta, 0))} left; best model kept in "
                f"{t['path'].name}")

    def _finish(self, end):
        self._timer.stop()
        self.progress_bar.setVisible(False)
        self.start_button.setEnabled(True)
        self.stop_button.setEnabled(False)
        for w in self._form_widgets():
            w.setEnabled(True)
        self._path_changed(self.path_edit.text())
        t = self.trained
        if end[0] == "error":
            self.error = end[1]
            self.status_text = "failed"
            ok = t["path"].is_file()
            self.status.setText(f"training failed: {self.error}"
                                + (f"; last best checkpoint: {t['path']}" if ok else ""))
            self.reconstruct_button.setEnabled(ok)
            notify_error(f"Train {t['method']}: {self.error}")
            return
        res = self.result = end[1]
        self.status_text = "stopped" if res.stopped else "done"
        start = ""
        if res.start_psnr is not None:
            start = (f"; the bundled model scored {res.start_psnr:.2f} dB: "
                     + ("adapted model kept" if res.better else
                        "not better, the checkpoint holds the bundled weights (labelled)"))
        self.status.setText(
            f"{t['method']}: {self.status_text} after {res.steps} steps, {res.minutes:.1f} min;"
            f" best held-out PSNR {res.best_psnr:.2f} dB, SSIM {res.best_ssim:.3f}{start}. "
            f"Checkpoint: {res.path}")
        self.reconstruct_button.setEnabled(True)
        self._offer_to_reconstruct_widget()
        notify_info(f"Train {t['method']}: {self.status_text}; best checkpoint in {t['path']}")

    # -- reconstruct --------------------------------------------------------------------------

    def _reconstruct_widgets(self):
        from ._reconstruct import ReconstructWidget

        try:
            docked = list(self.viewer.window.dock_widgets.values())
        except AttributeError:  # no window (headless viewer) or an older napari
            return []
        found = []
        for w in docked:
            if isinstance(w, ReconstructWidget):
                found.append(w)
            elif hasattr(w, "findChildren"):  # wrapped in a container
                found.extend(w.findChildren(ReconstructWidget))
        return found

    def _offer_to_reconstruct_widget(self):
        """Select method + the new checkpoint in a docked Reconstruct widget, if any."""
        t = self.trained
        for w in self._reconstruct_widgets():
            try:
                if w.run is not None and w.run.running:
                    continue
                w._checkpoint_file = str(t["path"])
                w.method_combo.setCurrentText(t["method"])
                w._method_changed(t["method"])
                w.checkpoint_combo.setCurrentText(str(t["path"]))
                if t["layer"] in self.viewer.layers:
                    w.layer_combo.set_layer(t["layer"])
            except Exception:  # an older Reconstruct widget: nothing to select
                pass

    def reconstruct(self):
        """Reconstruct the trained layer with the trained checkpoint into a new layer."""
        from ._run import StreamingRun

        t = self.trained
        if t is None or not t["path"].is_file():
            notify_error("Train: no checkpoint yet; train first")
            return None
        if self.run is not None and self.run.running:
            notify_error("Train: the reconstruction is still running")
            return None
        layer = t["layer"]
        if layer not in self.viewer.layers:
            notify_error(f"Train: layer {layer.name!r} was removed; open it again, then use the "
                         f"Reconstruct widget with checkpoint {t['path']}")
            return None
        self.run = StreamingRun(
            self.viewer, layer, t["method"], t["factor"],
            method_params={"checkpoint": str(t["path"])},
            name=f"{layer.name} · {t['method']} ×{t['factor']} ({t['path'].stem})",
            on_done=self._reconstruct_done)
        self.reconstruct_button.setEnabled(False)
        self.status.setText(f"reconstructing {layer.name!r} with {t['path'].name}…")
        self.run.start()
        return self.run

    def _reconstruct_done(self, run):
        self.reconstruct_button.setEnabled(True)
        if run.status == "done":
            self.status.setText(f"reconstructed with {self.trained['path'].name} -> layer "
                                f"{run.layer.name!r} ({run.stats['total_s']:.1f} s)")
        else:
            self.status.setText(f"reconstruction {run.status}")
