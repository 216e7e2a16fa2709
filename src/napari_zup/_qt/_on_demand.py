"""Reconstruct "on demand": the whole output layer at once, computed where the user looks.

The layer's data is a :class:`napari_zup.lazy.OnDemandVolume` over
:func:`napari_zup.lazy.lazy_reconstruct` of the input layer: napari slices it without waiting
(missing chunks read as 0 and are queued for a background thread), and every chunk that
arrives triggers one coalesced ``layer.refresh()`` on the GUI thread. xy slices compute as the
slider moves, xz/yz planes tile by tile; computed chunks are cached (bounded), so going back
is instant. Nothing is written to disk; the input layer is never modified.
"""
from __future__ import annotations

import os
import time

from qtpy.QtCore import QObject, QTimer, Signal

from .. import grid
from ..lazy import OnDemandVolume, lazy_reconstruct
from ._common import layer_units, layer_volume, notify_error, result_name, unique_name


class _Relay(QObject):
    """Carries "a chunk arrived" from pool threads to the GUI thread (queued signal)."""

    arrived = Signal()


class OnDemandRun:
    """An on-demand result layer; same small interface as the streaming and cluster runs."""

    REFRESH_MS = 50  # coalesce chunk arrivals into at most one refresh per 50 ms

    def __init__(self, viewer, layer, method: str, factor, *, method_params=None,
                 tile_size=None, cache_bytes: int = 1 << 30, on_done=None):
        self.viewer, self.source, self.method = viewer, layer, method
        self.factor = grid.parse_factor(factor)
        self.on_done = on_done
        self.status = "new"
        self.stats: dict = {}
        vol = layer_volume(layer)
        lo, hi = (float(c) for c in layer.contrast_limits)
        self.view = OnDemandVolume(
            lazy_reconstruct(vol, method, self.factor, method_params=method_params,
                             tile_size=tile_size),
            on_ready=self._chunk_arrived, cache_bytes=cache_bytes,
            workers=max(1, min(4, os.cpu_count() or 1)))  # the tiles of a view in parallel
        self.out_shape = self.view.shape
        self._relay = _Relay()
        self._relay.arrived.connect(self._schedule_refresh)
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self._refresh)
        self._contrast = (lo, hi)
        self._errors_shown = 0
        self.layer = None

    @property
    def running(self) -> bool:
        return False  # interactive: nothing to wait for, another run may start at once

    def start(self):
        scale = list(self.source.scale)
        scale[0] = scale[0] / float(self.factor)
        name = unique_name(self.viewer, result_name(self.source.name, self.method,
                                                    self.factor) + " (on demand)")
        kwargs = {"name": name, "scale": scale, "translate": list(self.source.translate),
                  "contrast_limits": self._contrast, "colormap": self.source.colormap.name,
                  "metadata": {"zup": {"method": self.method, "factor": str(self.factor),
                                       "on_demand": True, "source": self.source.name}}}
        units = layer_units(self.source)
        if units:
            kwargs["units"] = units
        t0 = time.perf_counter()
        self.layer = self.viewer.add_image(self.view, **kwargs)
        self.stats["add_layer_s"] = time.perf_counter() - t0
        self.viewer.layers.events.removed.connect(self._on_removed)
        self.status = "viewing"
        if self.on_done is not None:
            self.on_done(self)
        return self

    def cancel(self):
        self.view.close()
        self.status = "closed"

    def describe(self) -> str:
        n = len(self.view._cache)
        return f"{n} chunk{'s' * (n != 1)} computed (on demand)"

    # -- GUI-thread side ----------------------------------------------------------------------
    def _chunk_arrived(self):  # pool thread
        self._relay.arrived.emit()

    def _schedule_refresh(self):
        if not self._timer.isActive():
            self._timer.start(self.REFRESH_MS)

    def _refresh(self):
        if self.layer is None or self.status == "closed":
            return
        if len(self.view.errors) > self._errors_shown:
            exc = self.view.errors[-1]
            self._errors_shown = len(self.view.errors)
            notify_error(f"Reconstruct on demand ({self.method}): {exc}")
        self.layer.refresh()

    def _on_removed(self, event):
        if event.value is self.layer:
            self.cancel()
