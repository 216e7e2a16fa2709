"""One reconstruction of a (large) layer on a dask cluster, shown live in napari.

The work is done by :func:`napari_zup.distributed.reconstruct_to_zarr`, the same function as
``zup reconstruct IN OUT.zarr --workers N`` / ``--scheduler ADDRESS``: every output chunk is one
dask task that reads its input (plus halo), renders it and writes its own zarr chunk; the GUI
never holds the volume. The output layer is the OME-Zarr store itself, read lazily (all
pyramid levels, as a multiscale layer), so napari shows chunks as the workers write them
(zarr's local store writes each chunk file atomically: a reader never sees half a chunk).

A cancelled or failed run leaves a resumable store: running again with the same output path
and settings skips the chunks already written.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
from qtpy.QtCore import QTimer

from .. import grid, io
from ..engine import ReconstructionCancelled
from ..progress import Meter, Progress
from ._common import (
    layer_units,
    layer_volume,
    notify_error,
    notify_info,
    start_worker,
    unique_name,
)
from ._run import PARTIAL_SUFFIX, REFRESH_S


def cluster_source(layer):
    """What the cluster reads for ``layer``: the file it was opened from when the layer reads
    that file lazily (workers then read it themselves, nothing is sent from napari), else the
    layer's array (a dask array goes as its graph, a numpy array is sent to the cluster once).
    """
    data = layer_volume(layer)
    meta = layer.metadata or {}
    path = (meta.get("zup") or {}).get("source")
    if path and not isinstance(data, np.ndarray) and Path(path).exists():
        level = int((meta.get("file") or {}).get("level", 0) or 0)
        # distributed.client._resolve_source checks that the file's level has the layer's
        # shape and falls back to the array when it does not.
        return io.Volume(data, None, "nm", {"level": level}, str(path))
    return data


def layer_voxel(layer):
    """(voxel size (z, y, x), unit) of ``layer``, or (None, "nm") when it is unknown."""
    units = layer_units(layer)
    unit = str(units[-1]) if units else "pixel"
    scale = tuple(float(s) for s in layer.scale[-3:])
    if unit == "pixel":
        if all(s == 1.0 for s in scale):
            return None, "nm"
        return scale, "nm"  # a scale set by hand, without a unit: keep it, say nm
    return scale, io.short_unit(unit) or unit


def suggest_output(layer, method: str, factor) -> Path:
    """A new ``.zarr`` path for the result: beside the source file when that folder is
    writable, else in the temporary folder."""
    import os
    import tempfile

    src = (layer.metadata.get("zup") or {}).get("source") if layer.metadata else None
    folder = Path(src).parent if src else None
    if folder is None or not os.access(folder, os.W_OK):
        folder = Path(tempfile.gettempdir())
    stem = Path(src).stem if src else layer.name
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem).strip("_") or "volume"
    base = f"{stem}.{method}-x{float(grid.parse_factor(factor)):g}"
    p = folder / f"{base}.zarr"
    n = 2
    while p.exists():
        p = folder / f"{base}-{n}.zarr"
        n += 1
    return p


class ClusterRun:
    """Reconstruct ``layer`` into the OME-Zarr store ``out_path`` on a dask cluster and show
    the store as a layer that fills in.

    Cluster: ``scheduler`` (an address such as ``tcp://host:8786``) or a LocalCluster of
    ``workers`` processes (default: one per core). Callbacks (GUI thread):
    ``on_progress(run)`` as chunks finish, ``on_done(run)`` at the end (``run.status`` is
    "done", "cancelled" or "failed").
    """

    def __init__(self, viewer, layer, method: str, factor, out_path, *, method_params=None,
                 workers=None, scheduler=None, processes=True, chunks=None, levels=None,
                 name=None, on_progress=None, on_done=None):
        self.viewer = viewer
        self.source = layer
        self.method = method
        self.factor = grid.parse_factor(factor)
        self.out_path = Path(out_path)
        self.method_params = method_params or {}
        self.workers = workers
        self.scheduler = scheduler or None
        self.processes = processes
        self.chunks = chunks
        self.levels = levels
        self.on_progress = on_progress
        self.on_done = on_done
        self.cancel_event = threading.Event()
        self.status = "pending"
        self.error: BaseException | None = None
        self.layer = None
        self.worker = None
        self.stats: dict = {}
        self.done = 0
        self.total = 0
        self.meter: Meter | None = None  # from the first report on (the store exists then)
        self._name = name
        self._last_refresh = 0.0
        z, h, w = (int(s) for s in layer_volume(layer).shape)
        self.out_shape = (grid.output_length(z, self.factor), h, w)
        self._trailing = QTimer()
        self._trailing.setSingleShot(True)
        self._trailing.timeout.connect(self._refresh)

    # -- worker (runs in a thread) ----------------------------------------------------------

    def _events(self):
        """The cluster run's progress events (chunks written)."""
        from ..distributed import iter_reconstruct_to_zarr

        voxel, unit = layer_voxel(self.source)
        return iter_reconstruct_to_zarr(
            cluster_source(self.source), self.out_path, self.method, self.factor,
            method_params=self.method_params or None, workers=self.workers,
            scheduler=self.scheduler, processes=self.processes, chunks=self.chunks,
            levels=self.levels, voxel_size=voxel, unit=unit, resume=True,
            cancel=self.cancel_event, stats=self.stats)

    def _job(self):
        try:
            yield from self._events()
        except ReconstructionCancelled:
            return "cancelled"
        return "done"

    # -- GUI thread -------------------------------------------------------------------------

    def start(self):
        self.t_start = time.perf_counter()
        self.status = "running"
        self.worker = start_worker(self._job, on_yield=self._on_chunks,
                                   on_return=self._on_return, on_error=self._on_error)
        return self

    def cancel(self):
        self.cancel_event.set()

    @property
    def running(self) -> bool:
        return self.status == "running"

    @property
    def eta(self) -> float:
        """Seconds left, from the chunks finished in this session (nan until known)."""
        return float("nan") if self.meter is None else self.meter.eta

    def describe(self) -> str:
        eta = self.eta
        return (f"{self.done}/{self.total} chunks written"
                + ("" if np.isnan(eta) else f", ETA {eta:.0f} s"))

    def _on_chunks(self, event: Progress):
        self.done, self.total = event.done, event.total
        if self.meter is None:  # the store exists from the first report on
            self.meter = Meter(self.total, "chunks", self.done)
            self.stats["store_ready_s"] = self.meter.start - self.t_start
            self.stats["resumed_chunks"] = self.done
            if self.status == "running":
                self._add_layer()
        self.meter.update(event)
        now = time.perf_counter()
        if now - self._last_refresh >= REFRESH_S:
            self._refresh()
        elif not self._trailing.isActive():
            self._trailing.start(max(1, int(1000 * (REFRESH_S - (now - self._last_refresh)))))
        if self.on_progress is not None and self.status == "running":
            self.on_progress(self)

    def _levels(self):
        import zarr

        root = zarr.open_group(str(self.out_path), mode="r")
        names = [d["path"] for d in root.attrs["multiscales"][0]["datasets"]]
        return [root[n] for n in names]

    def _add_layer(self):
        src = self.source
        levels = self._levels()
        data = levels if len(levels) > 1 else levels[0]
        sz, sy, sx = (float(s) for s in src.scale[-3:])
        kw = {"scale": (sz / float(self.factor), sy, sx),
              "translate": tuple(src.translate[-3:])}
        units = layer_units(src)
        if units:
            kw["units"] = units
        base = self._name or f"{src.name} · {self.method} ×{float(self.factor):g} (cluster)"
        meta = {"zup": {
            "source_layer": src.name, "method": self.method, "factor": str(self.factor),
            "method_params": dict(self.method_params), "voxel_size": [kw["scale"][0], sy, sx],
            "status": "running", "partial": True, "chunks_done": self.done,
            "chunks_total": self.total, "output": str(self.out_path), "engine": "dask",
            # not "store": that key marks temporary stores to delete with the layer; this one
            # is the user's result and stays on disk.
        }}
        self.layer = self.viewer.add_image(
            data, multiscale=len(levels) > 1, name=unique_name(self.viewer, base),
            metadata=meta, contrast_limits=tuple(src.contrast_limits), colormap=src.colormap,
            axis_labels=("z", "y", "x"), **kw)
        self.viewer.layers.events.removed.connect(self._on_layer_removed)

    def _on_layer_removed(self, event):
        if event.value is self.layer and self.status == "running":
            self.cancel_event.set()  # the user deleted the output: stop computing it

    def _refresh(self):
        self._last_refresh = time.perf_counter()
        if self.layer is not None and self.layer in self.viewer.layers:
            self.layer.metadata["zup"]["chunks_done"] = self.done
            self.layer.refresh()

    def _finish(self, status: str):
        self.status = status
        self._trailing.stop()
        self.stats["total_s"] = time.perf_counter() - self.t_start
        if self.layer is not None and self.layer in self.viewer.layers:
            self._refresh()
            meta = self.layer.metadata["zup"]
            meta["status"] = status
            meta["partial"] = status != "done"
            if status != "done":
                self.layer.name = self.layer.name + PARTIAL_SUFFIX
        if self.on_done is not None:
            self.on_done(self)

    def _on_return(self, status):
        self._finish(status or "done")
        if status == "cancelled":
            notify_info(f"{self.method}: cancelled after {self.done} of {self.total} chunks; "
                        f"{self.out_path} keeps them: run again with the same output to "
                        "resume")

    def _on_error(self, exc):
        self.error = exc
        self._finish("failed")
        notify_error(f"{self.method} ×{float(self.factor):g} on the dask cluster failed: {exc}")
