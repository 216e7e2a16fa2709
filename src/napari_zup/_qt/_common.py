"""Pieces shared by the napari-zup widgets: layer checks, layer pickers, output buffers,
worker threads. Qt and napari live here and in the widget modules only; every computation
goes through the Qt-free core (engine, evaluation, flow)."""
from __future__ import annotations

import atexit
import collections
import importlib
import shutil
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QComboBox,
    QLabel,
    QVBoxLayout,
    QWidget,
)

#: Outputs larger than this go to a temporary zarr store on disk instead of RAM.
OUTPUT_RAM_LIMIT = 2 * 1024**3

_TEMP_DIRS: list[str] = []


def _cleanup_temp_dirs() -> None:
    for d in _TEMP_DIRS:
        shutil.rmtree(d, ignore_errors=True)


atexit.register(_cleanup_temp_dirs)


#: What napari imports on the GUI thread when a widget adds its first Vectors layer: pandas, for
#: the layer's features table (~1 s on these machines: the whole of that layer's first-time
#: stall, docs/benchmarks.md section 10.8).
VECTORS_MODULES = ("pandas",)


#: module -> the preload thread importing it (while it does)
_PRELOADING: dict[str, threading.Thread] = {}
_PRELOAD_LOCK = threading.Lock()


def preload(modules=VECTORS_MODULES) -> threading.Thread | None:
    """Import ``modules`` in a background thread, ahead of the GUI thread needing them.

    Called when a widget knows it will soon add a layer whose first use imports them (a
    Vectors layer needs pandas) or start a job that does (torch), so that import does not
    freeze the interface later. Returns the thread to wait for: a new one, or the one still
    importing some of ``modules`` for an earlier call (None: all imported already); a failed
    import is left to the code that needs the module to report.
    """
    with _PRELOAD_LOCK:
        busy = [t for m in modules if (t := _PRELOADING.get(m)) is not None and t.is_alive()]
        missing = [m for m in modules if m not in sys.modules and m not in _PRELOADING]
        if not missing:
            return busy[0] if busy else None
        thread = threading.Thread(target=lambda: run(), name="zup-preload", daemon=True)
        for m in missing:
            _PRELOADING[m] = thread

    def run():
        if any(m == "torch" or m.startswith("torch.") for m in missing):
            from ..devices import load_torch_libraries

            load_torch_libraries()  # its largest library without the GIL (0.16 s otherwise)
        for name in missing:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - whoever needs the module will say why
                pass
            finally:
                with _PRELOAD_LOCK:
                    _PRELOADING.pop(name, None)

    thread.start()
    return thread


class PassSteps:
    """GUI work run one step per event-loop pass, in order.

    Adding a napari layer is 0.1-0.4 s of GUI-thread work on software OpenGL; a widget that
    shows several results queues them here (``add(step)``), so the interface gets a repaint
    and its input between two of them instead of one long freeze. ``pending``: steps not yet
    run (a widget is busy until they have).
    """

    def __init__(self):
        self._steps: collections.deque = collections.deque()

    @property
    def pending(self) -> bool:
        return bool(self._steps)

    def add(self, step) -> None:
        self._steps.append(step)
        if len(self._steps) == 1:
            QTimer.singleShot(0, self._run_one)

    def _run_one(self):
        if not self._steps:
            return
        try:
            self._steps[0]()
        finally:
            self._steps.popleft()
            if self._steps:
                QTimer.singleShot(0, self._run_one)


# -- notifications ----------------------------------------------------------------------------

def notify_error(message: str) -> None:
    from napari.utils.notifications import show_error

    show_error(message)


def notify_warning(message: str) -> None:
    from napari.utils.notifications import show_warning

    show_warning(message)


def notify_info(message: str) -> None:
    from napari.utils.notifications import show_info

    show_info(message)


# -- layers -----------------------------------------------------------------------------------

def layer_problem(layer, min_slices: int = 2) -> str | None:
    """Why ``layer`` cannot be reconstructed along z, or None when it can."""
    from napari.layers import Image

    if layer is None:
        return "no image layer selected: open a 3D stack first (File > Open, or a sample)"
    if not isinstance(layer, Image):
        return (f"layer {layer.name!r} is a {type(layer).__name__} layer; "
                "choose an Image layer holding a 3D stack")
    if layer.rgb:
        return (f"layer {layer.name!r} is RGB/RGBA; EM stacks are single-channel: "
                "convert it to grayscale first")
    data = layer_volume(layer)
    if data.ndim == 2:
        return (f"layer {layer.name!r} is a 2D image {tuple(data.shape)}; z-reconstruction "
                "needs a 3D stack (z, y, x)")
    if data.ndim != 3:
        return (f"layer {layer.name!r} has {data.ndim} dimensions {tuple(data.shape)}; "
                "expected a 3D stack (z, y, x). Split channels / time points first "
                "(right-click the layer > Split Stack)")
    if np.dtype(data.dtype).kind not in "uif":
        return f"layer {layer.name!r} has voxel type {data.dtype}; use uint8, uint16 or float32"
    if data.shape[0] < min_slices:
        return (f"layer {layer.name!r} has {data.shape[0]} slice(s) along z; "
                f"at least {min_slices} are needed")
    return None


def progress_bar(total: int, desc: str, done: int = 0):
    """napari's progress bar (activity dock), caught up to ``done``. Call it in an event-loop
    pass of its own, not in the one that adds a layer: its creation repaints the layer list
    and runs processEvents (callers guard against what that delivers)."""
    from napari.utils import progress

    bar = progress(total=total, desc=desc)
    if done:
        bar.update(done)
    return bar


def set_visible(layer, visible: bool) -> None:
    """``layer.visible = visible`` only if that changes it: napari acts on every assignment,
    also of the value it has (refreshes the layer's data when True, rebuilds the grid's
    scene graph and redraws the whole canvas); in a loop over the layer list that was most of
    Compare's and Evaluate's longest GUI stalls."""
    if bool(layer.visible) != bool(visible):
        layer.visible = visible


def set_contrast_limits(layer, limits) -> None:
    """``layer.contrast_limits = limits`` only if that changes them (each assignment
    recomputes the layer's thumbnail and redraws it)."""
    limits = (float(limits[0]), float(limits[1]))
    if not np.allclose(tuple(layer.contrast_limits), limits, rtol=0, atol=1e-12):
        layer.contrast_limits = limits


def layer_volume(layer):
    """The layer's full-resolution array (level 0 of a multiscale layer)."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def anisotropy(layer) -> float:
    """z step / y pixel size from the layer's scale (1.0 when unknown)."""
    s = tuple(float(v) for v in layer.scale[-3:])
    return s[0] / s[1] if s[1] > 0 else 1.0


def unique_name(viewer, base: str) -> str:
    names = {lay.name for lay in viewer.layers}
    if base not in names:
        return base
    n = 2
    while f"{base} [{n}]" in names:
        n += 1
    return f"{base} [{n}]"


def factor_label(factor) -> str:
    f = float(factor)
    return f"×{f:g}"


def result_name(layer_name: str, method: str, factor) -> str:
    return f"{layer_name} · {method} {factor_label(factor)}"


def layer_units(layer):
    try:
        units = tuple(str(u) for u in layer.units)
        return units if len(units) == layer.ndim else None
    except AttributeError:  # napari < 0.6
        return None


# -- output buffers ---------------------------------------------------------------------------

def allocate_output(shape, dtype, limit: int | None = None):
    """A zero-filled array for streamed results: numpy in RAM, or a zarr store in a temporary
    folder when larger than ``limit`` bytes (default: :data:`OUTPUT_RAM_LIMIT` or half the
    free memory, whichever is smaller).

    Returns ``(array, store_path or None)``.
    """
    if limit is None:
        import psutil

        # also on disk when RAM is short: half of what is free now
        limit = min(OUTPUT_RAM_LIMIT, psutil.virtual_memory().available // 2)
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if nbytes <= limit:
        return np.zeros(shape, dtype), None  # calloc: pages are touched only when filled
    import zarr

    tmp = tempfile.mkdtemp(prefix="napari-zup-")
    _TEMP_DIRS.append(tmp)
    path = str(Path(tmp) / "output.zarr")
    chunks = (1,) + tuple(min(s, 1024) for s in shape[1:])
    arr = zarr.open_array(path, mode="w", shape=tuple(shape), chunks=chunks, dtype=dtype,
                          fill_value=0)
    return arr, path


def release_store(path: str | None) -> None:
    """Delete a temporary store made by :func:`allocate_output` (when its layer is removed)."""
    if not path:
        return
    parent = str(Path(path).parent)
    if parent in _TEMP_DIRS:
        shutil.rmtree(parent, ignore_errors=True)
        _TEMP_DIRS.remove(parent)


# -- widgets ----------------------------------------------------------------------------------

class LayerCombo(QComboBox):
    """A combo box of the viewer's Image layers, kept in sync with the layer list."""

    def __init__(self, viewer, parent=None, kinds=None):
        from napari.layers import Image

        super().__init__(parent)
        self.viewer = viewer
        self.kinds = kinds or (Image,)
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(18)
        ev = viewer.layers.events
        ev.inserted.connect(self._refresh)
        ev.removed.connect(self._refresh)
        ev.reordered.connect(self._refresh)
        ev.inserted.connect(self._watch_names)
        for layer in viewer.layers:
            layer.events.name.connect(self._refresh)
        self._refresh()
        active = viewer.layers.selection.active
        if isinstance(active, self.kinds):
            self.set_layer(active)

    def _watch_names(self, event):
        event.value.events.name.connect(self._refresh)

    def _refresh(self, event=None):
        current = self.layer()
        self.blockSignals(True)
        self.clear()
        for layer in reversed(list(self.viewer.layers)):
            if isinstance(layer, self.kinds):
                self.addItem(layer.name, layer)
        self.blockSignals(False)
        if current is not None and current in self.viewer.layers:
            self.set_layer(current)
        elif self.count():
            self.setCurrentIndex(0)
            self.currentIndexChanged.emit(0)

    def layer(self):
        return self.currentData() if self.count() else None

    def set_layer(self, layer) -> None:
        for i in range(self.count()):
            if self.itemData(i) is layer:
                self.setCurrentIndex(i)
                return


def wrap_label(text: str = "") -> QLabel:
    lab = QLabel(text)
    lab.setWordWrap(True)
    lab.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    return lab


class DockWidget(QWidget):
    """Base of the dock widgets: a vertical layout and the viewer."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.setLayout(QVBoxLayout())
        self.layout().setContentsMargins(6, 6, 6, 6)
        from ._voxel_banner import VoxelBanner  # "the file says 50 x 4 x 4 nm; this layer..."

        self.voxel_banner = VoxelBanner(self)

    def preload_soon(self, modules, delay_ms: int = 300) -> None:
        """:func:`preload` ``modules`` (what this dock's job imports the first time) in the
        background once the dock is up: an import holds the GIL in stretches (torch's
        libraries 0.15-0.3 s here), which freezes the GUI less when nothing runs yet."""
        self._preload = True  # pending

        def start():
            self._preload = preload(modules)
        QTimer.singleShot(delay_ms, start)

    @property
    def preloading(self) -> bool:
        """Imports started by :meth:`preload_soon` are pending or running."""
        p = getattr(self, "_preload", None)
        return p is True or (p is not None and p.is_alive())

    def add_run_buttons(self, run_text: str = "Run", cancel_text: str = "Cancel") -> None:
        """A Run / Cancel row (``self.run_button``, ``self.cancel_button``)."""
        from qtpy.QtWidgets import QHBoxLayout, QPushButton

        buttons = QHBoxLayout()
        self.run_button = QPushButton(run_text)
        self.cancel_button = QPushButton(cancel_text)
        self.cancel_button.setEnabled(False)
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        self.layout().addLayout(buttons)

    def add_progress(self) -> None:
        """A hidden progress bar and a status line (``self.progress_bar``, ``self.status``)."""
        from qtpy.QtWidgets import QProgressBar

        self.progress_bar = QProgressBar()
        self.progress_bar.setVisible(False)
        self.status = wrap_label()
        self.layout().addWidget(self.progress_bar)
        self.layout().addWidget(self.status)


def start_worker(function, *args, on_yield=None, on_return=None, on_error=None,
                 on_finish=None, **kwargs):
    """Run a generator or function in napari's ``thread_worker`` and connect callbacks
    (all called in the GUI thread)."""
    from napari.qt.threading import create_worker

    connect = {}
    if on_yield is not None:
        connect["yielded"] = on_yield
    if on_return is not None:
        connect["returned"] = on_return
    if on_error is not None:
        connect["errored"] = on_error  # handled: no re-raise in the GUI thread
    if on_finish is not None:
        connect["finished"] = on_finish
    worker = create_worker(function, *args, _start_thread=False, _connect=connect, **kwargs)
    worker.start()
    return worker

