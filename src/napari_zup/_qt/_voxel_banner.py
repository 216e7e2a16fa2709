"""The "this layer has no voxel size" banner at the top of every napari-zup dock widget.

A TIFF dropped on napari opens, unless the user chose otherwise, with napari's builtin reader,
which ignores the voxel size in the file: the layer gets scale (1, 1, 1) and the widgets cannot
pre-fill the factor. When the selected layer came from a file (``layer.source.path``) whose
metadata records a voxel size the layer lacks, the banner says so and offers two buttons:
apply the file's voxel size to the layer, or make napari-zup napari's preferred reader for
.tif/.tiff/.zarr (a napari setting, changed only on that click; the banner says how to undo it).
"""
from __future__ import annotations

import os

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QFrame, QPushButton, QVBoxLayout

from ._common import LayerCombo, notify_info, wrap_label

#: Patterns napari-zup becomes the preferred reader for ("*.zarr/": napari matches folders
#: with a trailing separator).
PREFERRED_PATTERNS = ("*.tif", "*.tiff", "*.zarr", "*.zarr/")
PLUGIN = "napari-zup"
UNDO_HINT = ("The second button changes a napari setting; to undo it, remove the "
             ".tif/.tiff/.zarr rows in Preferences > Plugins > File extension readers.")


def _fmt(voxel, unit: str) -> str:
    return " x ".join(f"{v:g}" for v in voxel) + f" {unit}"


def layer_lacks_voxel_size(layer) -> bool:
    """True when the layer's (z, y, x) scale is napari's default 1, 1, 1."""
    return all(abs(float(s) - 1.0) < 1e-12 for s in tuple(layer.scale)[-3:])


def missing_voxel_size(layer):
    """(voxel size, unit) the layer's source file records and its scale lacks, else None."""
    if layer is None or getattr(layer, "ndim", 0) < 3 or not layer_lacks_voxel_size(layer):
        return None
    path = getattr(getattr(layer, "source", None), "path", None)
    if not path:
        return None
    from ..io import is_pixel_unit

    found = _probe(str(path))
    if found is None or is_pixel_unit(found[1]) or all(abs(v - 1.0) < 1e-12 for v in found[0]):
        return None  # a size in pixels is no voxel size
    return found


_PROBED: dict = {}


def _probe(path: str):
    """The file's voxel size, cached per (path, modification time): the banner re-checks on
    every layer change and the header is read only once."""
    from ..formats import file_voxel_size

    try:
        key = (path, os.stat(path).st_mtime_ns)
    except OSError:
        return None
    if key not in _PROBED:
        _PROBED[key] = file_voxel_size(path)
    return _PROBED[key]


def preferred_reader_set() -> bool:
    from napari.settings import get_settings

    e2r = get_settings().plugins.extension2reader
    return all(e2r.get(p) == PLUGIN for p in PREFERRED_PATTERNS)


def prefer_napari_zup() -> None:
    """Make napari-zup the preferred reader for .tif/.tiff/.zarr (napari's own setting)."""
    from napari.settings import get_settings

    plugins = get_settings().plugins
    plugins.extension2reader = {**plugins.extension2reader,
                                **{p: PLUGIN for p in PREFERRED_PATTERNS}}


def apply_voxel_size(layer, voxel, unit: str) -> None:
    """Set the layer's (z, y, x) scale and units to ``voxel`` in ``unit``."""
    extra = layer.ndim - 3
    layer.scale = tuple(layer.scale)[:extra] + tuple(float(v) for v in voxel)
    try:
        units = tuple(layer.units)[:extra] + (unit,) * 3
        layer.units = units
    except (AttributeError, ValueError, TypeError):  # napari < 0.6 has no layer units
        pass


class VoxelBanner(QFrame):
    """Hidden unless the dock's selected layer lacks the voxel size its file records."""

    def __init__(self, dock):
        super().__init__(dock)
        self.dock, self.viewer = dock, dock.viewer
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.setStyleSheet("VoxelBanner { border: 1px solid #d9a400; border-radius: 3px; }")
        lay = QVBoxLayout(self)
        lay.setContentsMargins(6, 4, 6, 4)
        self.message = wrap_label()
        self.apply_button = QPushButton()
        self.apply_button.clicked.connect(self.apply)
        self.prefer_button = QPushButton("Always open .tif/.tiff/.zarr with napari-zup")
        self.prefer_button.setToolTip(
            "Changes napari's reader preference so that dropped or opened TIFF and Zarr files "
            "keep their voxel size (napari setting plugins.extension2reader). " + UNDO_HINT)
        self.prefer_button.clicked.connect(self.prefer)
        self.undo_hint = wrap_label(UNDO_HINT)
        for w in (self.message, self.apply_button, self.prefer_button, self.undo_hint):
            lay.addWidget(w)
        self.layer = self.found = None
        self._combos: list = []
        self.hide()
        dock.layout().insertWidget(0, self)
        # the dock builds its layer pickers after the base __init__: connect once it has
        QTimer.singleShot(0, self.connect_combos)

    # -- which layer ------------------------------------------------------------------------

    def connect_combos(self) -> None:
        for combo in self.dock.findChildren(LayerCombo):
            if combo not in self._combos:
                combo.currentIndexChanged.connect(self.check)
                self._combos.append(combo)
        self.check()

    def selected_layer(self):
        combo = getattr(self.dock, "layer_combo", None)
        if not isinstance(combo, LayerCombo):
            combo = self._combos[0] if self._combos else None
        return combo.layer() if combo is not None else None

    def check(self, *_) -> None:
        try:
            self._check()
        except RuntimeError:  # the dock was closed (Qt object deleted): stop listening
            if self.layer is not None:
                self._disconnect(self.layer)

    def _check(self) -> None:
        layer = self.selected_layer()
        if layer is not self.layer:
            if self.layer is not None:
                self._disconnect(self.layer)
            if layer is not None:
                layer.events.scale.connect(self.check)
            self.layer = layer
        self.found = missing_voxel_size(layer)
        if self.found is None:
            self.hide()
            return
        voxel, unit = self.found
        self.message.setText(
            f"The file says {_fmt(voxel, unit)} (z, y, x); this layer has no voxel size "
            f"(scale 1, 1, 1: napari's builtin reader ignores it), so the factor for an "
            f"isotropic result cannot be pre-filled.")
        self.apply_button.setText(f"Apply {_fmt(voxel, unit)} to '{layer.name}'")
        done = preferred_reader_set()
        self.prefer_button.setEnabled(not done)
        if done:
            self.prefer_button.setText("napari-zup is the preferred reader for .tif/.tiff/.zarr")
        self.show()

    def _disconnect(self, layer) -> None:
        try:
            layer.events.scale.disconnect(self.check)
        except (TypeError, ValueError, RuntimeError):
            pass

    # -- the buttons --------------------------------------------------------------------------

    def apply(self) -> None:
        layer, found = self.layer, self.found
        if layer is None or found is None:
            return
        apply_voxel_size(layer, *found)
        self.viewer.reset_view()
        for combo in self._combos:  # the widgets pre-fill the factor on a layer change
            if combo.layer() is layer:
                combo.currentIndexChanged.emit(combo.currentIndex())
        self.check()

    def prefer(self) -> None:
        prefer_napari_zup()
        notify_info("napari-zup is now napari's preferred reader for .tif/.tiff/.zarr; to undo "
                    "it, remove those rows in Preferences > Plugins > File extension readers.")
        self.check()
