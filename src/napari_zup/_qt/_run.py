"""One streaming reconstruction run inside napari: the output layer appears at once and fills
in slice by slice while :func:`napari_zup.engine.reconstruct_events` runs in a worker thread.

Used by the Reconstruct and Compare widgets. The worker writes every finished slice straight
into the output buffer (numpy, or a zarr store on disk for large outputs) and only tells the
GUI thread *which* slice is ready; the GUI thread refreshes the layer at most every
``REFRESH_S`` seconds, so a fast method never floods the event loop.
"""
from __future__ import annotations

import threading
import time
from fractions import Fraction

import numpy as np
from qtpy.QtCore import QTimer

from .. import grid
from ..engine import ReconstructionCancelled, reconstruct_events
from ..flow import flow_to_rgb, flow_vectors
from ..progress import Meter, Progress
from ._common import (
    allocate_output,
    layer_units,
    layer_volume,
    notify_error,
    notify_info,
    preload,
    release_store,
    unique_name,
)

#: Smallest interval between two redraws of a streaming layer (seconds).
REFRESH_S = 0.1
PARTIAL_SUFFIX = " (partial)"


class StreamingRun:
    """Reconstruct ``layer`` with ``method`` at ``factor`` into a new layer, live.

    Callbacks (GUI thread): ``on_progress(run)`` after each slice, ``on_done(run)`` at the end
    (``run.status`` is "done", "cancelled" or "failed").
    """

    def __init__(self, viewer, layer, method: str, factor, *, method_params=None,
                 tile_size=None, want_flows=False, vector_step=16, vector_length=1.0,
                 follow=True, name=None, on_progress=None, on_done=None, workers=None):
        self.viewer = viewer
        self.source = layer
        self.method = method
        self.factor: Fraction = grid.parse_factor(factor)
        self.method_params = method_params or {}
        self.tile_size = tile_size or None
        self.want_flows = want_flows
        self.vector_step = int(vector_step)
        self.vector_length = float(vector_length)
        self.follow = follow
        self.workers = workers
        self.on_progress = on_progress
        self.on_done = on_done
        self.cancel_event = threading.Event()
        self._layer_ready = threading.Event()
        self.status = "pending"
        self.error: BaseException | None = None
        self.layer = None
        self.flow_layer = None
        self.vectors_layer = None
        self.store = None
        self.worker = None
        self.stats: dict = {}
        volume = layer_volume(layer)
        self.volume = volume
        z, h, w = (int(s) for s in volume.shape)
        self.out_shape = (grid.output_length(z, self.factor), h, w)
        self.progress = Meter(self.out_shape[0])
        self._name = name
        self._vectors: list[np.ndarray] = []
        self._magnitudes: list[np.ndarray] = []
        self._vec_dirty = False
        self._last_refresh = 0.0
        self._latest = -1
        self._pbar = None
        self._in_refresh = False
        self._release_later: list = []
        self._trailing = QTimer()
        self._trailing.setSingleShot(True)
        self._trailing.timeout.connect(self._trailing_refresh)

    # -- layers -----------------------------------------------------------------------------

    def _out_scale(self):
        sz, sy, sx = (float(s) for s in self.source.scale[-3:])
        return (sz / float(self.factor), sy, sx)

    def _common_kwargs(self):
        kw = {"scale": self._out_scale(), "translate": tuple(self.source.translate[-3:])}
        units = layer_units(self.source)
        if units:
            kw["units"] = units
        return kw

    def _add_layers(self):
        src = self.source
        base = self._base = self._name or f"{src.name} · {self.method} ×{float(self.factor):g}"
        data = self._out
        sz, sy, sx = self._out_scale()
        meta = {"zup": {
            "source_layer": src.name, "method": self.method,
            "factor": str(self.factor), "method_params": dict(self.method_params),
            "voxel_size": [sz, sy, sx], "status": "running", "slices_done": 0,
            "slices_total": self.out_shape[0], "partial": True, "store": self.store,
        }}
        self.layer = self.viewer.add_image(
            data, name=unique_name(self.viewer, base), metadata=meta,
            contrast_limits=tuple(src.contrast_limits), colormap=src.colormap,
            axis_labels=("z", "y", "x"), **self._common_kwargs())
        self.viewer.layers.events.removed.connect(self._on_layer_removed)

    def _add_flow_colour_layer(self):
        self.flow_layer = self.viewer.add_image(
            self._flow_out, rgb=True, name=unique_name(self.viewer, self._base + " flow colours"),
            opacity=0.6, blending="additive", visible=False,
            metadata={"zup": {"store": self._flow_store, "source_layer": self.source.name,
                              "kind": "flow colour wheel (hue = direction)"}},
            **self._common_kwargs())

    def _add_vectors_layer(self, data, features, limits):
        self.vectors_layer = self.viewer.add_vectors(
            data, features=features, edge_color="magnitude", edge_colormap="turbo",
            edge_contrast_limits=limits, edge_width=1.5, length=self.vector_length,
            vector_style="arrow", name=unique_name(self.viewer, self._base + " flow"),
            metadata={"zup": {"source_layer": self.source.name}}, **self._common_kwargs())

    def _on_layer_removed(self, event):
        layer = event.value
        if layer is not self.layer and layer is not self.flow_layer:
            return
        store = layer.metadata.get("zup", {}).get("store")
        if self.status == "running":
            self.cancel_event.set()  # the user deleted an output: stop computing it
            self._release_later.append(store)  # the worker may still be writing into it
        else:
            release_store(store)

    # -- worker (runs in a thread) ----------------------------------------------------------

    def _job(self):
        """Progress events for the GUI thread; their payload is ``(index, flow display data
        or None)``: the slice itself is already in the output buffer."""
        out = self._out
        flow_vmax = None
        # the first compute waits for the pass after the output layer was added (at most a
        # second): the engine's threads running numpy/OpenCV while napari builds the layer's
        # controls made that pass 0.2-0.3 s (GIL contention; docs/benchmarks.md 10.11)
        self._layer_ready.wait(1.0)
        it = reconstruct_events(
            self.volume, self.method, self.factor, method_params=self.method_params or None,
            tile_size=self.tile_size, want_flows=self.want_flows, cancel=self.cancel_event,
            workers=self.workers)
        try:
            for event in it:
                item = event.payload
                i = item[0]
                out[i] = item[1]
                extra = None
                if self.want_flows and item[2] is not None:
                    flow = item[2]
                    if flow_vmax is None:  # one colour scale for the whole run
                        mag = np.hypot(flow[..., 0], flow[..., 1])
                        flow_vmax = max(float(np.percentile(mag, 99)), 0.5)
                    self._flow_out[i] = flow_to_rgb(flow, flow_vmax)
                    vec2 = flow_vectors(flow, self.vector_step)
                    vec = np.zeros((len(vec2), 2, 3), np.float32)
                    vec[:, 0, 0] = i
                    vec[:, :, 1:] = vec2
                    extra = (vec, np.hypot(vec2[:, 1, 0], vec2[:, 1, 1]).astype(np.float32),
                             flow_vmax)
                yield Progress(event.done, event.total, event.message, (i, extra))
        except ReconstructionCancelled:
            return "cancelled"
        finally:
            it.close()
        return "done"

    # -- GUI thread -------------------------------------------------------------------------

    def start(self):
        from ._common import start_worker

        self.t_start = time.perf_counter()
        self._out, self.store = allocate_output(self.out_shape, self.volume.dtype)
        if self.want_flows:
            self._flow_out, self._flow_store = allocate_output(self.out_shape + (3,), np.uint8)
        self.status = "running"
        if self.want_flows:
            preload()  # what the first Vectors layer imports, before the first flow arrives
        # The worker thread starts now and computes from the pass after the output layer is
        # added (_layer_ready: the first slice ~0.08 s later, fewer stalls; benchmarks.md
        # 10.11). napari's progress() runs processEvents, which
        # delivers the slices that arrived meanwhile: they only count (``_on_slice``), and
        # what would redraw or end the run waits (``_in_refresh``) until start() returns.
        # (Creating the progress bar before the first layer made llvmpipe segfault in a
        # later draw, every time: benchmarks/bench_gui_stalls.py.)
        self.worker = start_worker(self._job, on_yield=self._on_slice,
                                   on_return=self._on_return, on_error=self._on_error)
        self._in_refresh = True
        try:
            self._add_layers()
        finally:
            self._in_refresh = False
            QTimer.singleShot(0, self._layer_ready.set)
        # napari's progress bar (its activity-dock widget and a processEvents that repaints
        # the layer list) in the next pass: with the new layer in one pass it was 0.3-0.6 s
        QTimer.singleShot(0, self._add_progress_bar)
        if self.want_flows:  # in a pass of its own, before the first flow
            QTimer.singleShot(0, self._flow_colour_layer_early)
        return self

    def _add_progress_bar(self):
        from ._common import progress_bar

        if self.status != "running" or self._pbar is not None:
            return
        outer, self._in_refresh = self._in_refresh, True  # slices in its processEvents count
        try:
            self._pbar = progress_bar(self.out_shape[0],
                                      f"{self.method} ×{float(self.factor):g}",
                                      self.progress.done)
        finally:
            self._in_refresh = outer

    def _flow_colour_layer_early(self):
        if self.flow_layer is None and self.status == "running" and self.layer is not None:
            self._add_flow_colour_layer()

    def cancel(self):
        self.cancel_event.set()

    @property
    def running(self) -> bool:
        return self.status == "running"

    def _on_slice(self, event: Progress):
        i, extra = event.payload
        now = time.perf_counter()
        self.progress.update(event)
        self._latest = max(self._latest, i)
        if extra is not None:
            vec, mag, vmax = extra
            self._vectors.append(vec)
            self._magnitudes.append(mag)
            self._flow_vmax = vmax
            self._vec_dirty = True
        # Slices only count here; the redraw (and the widget's progress) comes from a timer,
        # at most once per REFRESH_S and in an event-loop pass of its own. Redrawing from
        # here made one pass of a backlog of slices (those queued while the layers were
        # built, or delivered inside napari's progress bar's processEvents) into a freeze of
        # a second or more: several redraws between two timer ticks.
        if not self._trailing.isActive():
            first = "first_slice_s" not in self.stats
            wait = 0.0 if first else REFRESH_S - (now - self._last_refresh)
            self._trailing.start(max(0, int(1000 * wait)))

    def _trailing_refresh(self):
        if self.status != "running":
            return
        if self._in_refresh:  # inside start() or a redraw's processEvents: right after it
            self._trailing.start(10)
            return
        self._refresh()
        if self.on_progress is not None and self.status == "running":
            self.on_progress(self)

    def _refresh(self, every_layer=False):
        self._in_refresh = True
        try:
            self._redraw(every_layer)
        finally:
            self._in_refresh = False
        if "first_slice_s" not in self.stats and self.progress.done and self.layer is not None:
            self.stats["first_slice_s"] = time.perf_counter() - self.t_start  # on screen

    def _redraw(self, every_layer=False):
        """Show what has arrived. One new layer per event-loop pass (each is 0.1-0.4 s of
        napari's GUI work on these machines): the output layer in start(), the flow colours
        in the pass after it, the Vectors layer with the first flow (and never in the same
        redraw as another new layer). ``every_layer``: the last redraw of a run adds
        whatever is still missing."""
        self._last_refresh = time.perf_counter()
        if self.layer is None:
            return
        self.layer.metadata["zup"]["slices_done"] = self.progress.done
        if self.follow and self._latest >= 0:
            z = self.layer.translate[-3] + self._latest * self.layer.scale[-3]
            axis = self.viewer.dims.ndim - 3
            self.viewer.dims.set_point(axis, z)
        self.layer.refresh()
        added = False
        if self.want_flows and self.flow_layer is None and (self._vectors or every_layer):
            self._add_flow_colour_layer()
            added = True
        elif self.flow_layer is not None:
            self.flow_layer.refresh()
        if self._vec_dirty and (every_layer or not added or self.vectors_layer is not None):
            self._vec_dirty = False
            data = np.concatenate(self._vectors)
            features = {"magnitude": np.concatenate(self._magnitudes)}
            limits = (0.0, float(self._flow_vmax))
            if self.vectors_layer is None:
                self._add_vectors_layer(data, features, limits)
            else:
                self.vectors_layer.data = data
                self.vectors_layer.features = features
                self.vectors_layer.edge_color = "magnitude"
                self.vectors_layer.edge_contrast_limits = limits
        elif self._vec_dirty and not self._trailing.isActive():
            self._trailing.start(0)  # the Vectors layer in the next pass
        if self._pbar is not None and self.progress.done > self._pbar.n:
            self._pbar.update(self.progress.done - self._pbar.n)

    def _finish(self, status: str):
        self.status = status
        self._trailing.stop()
        self.stats["slices"] = self.progress.done
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        if self.layer is not None:
            self._mark_layer()  # the last redraw: a short run's first slice on screen too
        self.stats["total_s"] = time.perf_counter() - self.t_start
        for store in self._release_later:
            release_store(store)
        if self.want_flows and self.flow_layer is None:  # ended before it was added
            release_store(self._flow_store)
        if self.want_flows and not self._vectors and status == "done":
            notify_info(f"method {self.method!r} does not produce flow fields; "
                        "flow layers stay empty (of-linear, of-cubic, film and tsain do)")
        if self.on_done is not None:
            self.on_done(self)

    def _mark_layer(self):
        """Final state of the output layer: done, or partial (name + metadata). A run that
        failed before its first slice leaves nothing behind but the error message."""
        status = self.status
        if status == "failed" and self.progress.done == 0:
            for lay in (self.layer, self.flow_layer, self.vectors_layer):
                if lay is not None and lay in self.viewer.layers:
                    self.viewer.layers.remove(lay)
            return
        self._refresh(every_layer=True)
        meta = self.layer.metadata["zup"]
        meta["status"] = status
        meta["partial"] = status != "done"
        if status != "done" and self.layer in self.viewer.layers:
            meta["slices_done"] = self.progress.done
            self.layer.name = self.layer.name + PARTIAL_SUFFIX

    def _on_return(self, status):
        if self._in_refresh:  # delivered inside the progress bar's processEvents: later
            QTimer.singleShot(0, lambda: self._on_return(status))
            return
        self._finish(status or "done")
        if status == "cancelled":
            notify_info(f"{self.method}: cancelled after {self.progress.done} of "
                        f"{self.out_shape[0]} slices; the layer is marked partial")

    def _on_error(self, exc):
        if self._in_refresh:
            QTimer.singleShot(0, lambda: self._on_error(exc))
            return
        self.error = exc
        self._finish("failed")
        notify_error(f"{self.method} ×{float(self.factor):g} failed: {exc}")
