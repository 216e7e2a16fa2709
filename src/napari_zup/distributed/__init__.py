"""Out-of-core, resumable reconstruction on dask.distributed, written to OME-Zarr.

    >>> from napari_zup.distributed import reconstruct_to_zarr
    >>> reconstruct_to_zarr("in.zarr", "out.zarr", "of-linear", 4, workers=4)  # doctest: +SKIP
    >>> reconstruct_to_zarr("in.tif", "out.zarr", "linear", 4,
    ...                     scheduler="tcp://host:8786")                     # doctest: +SKIP

How it works:

* Every output chunk is one dask task. It reads only the input region it needs (its knots,
  the method's z-context and y/x halo), renders its slices with the engine's one block
  function (:func:`napari_zup.engine.render_output_block`, slab by slab as the engine does),
  writes its own zarr chunk and then a *done marker*. The client only submits tasks and
  counts finished chunks; it never gathers image data.
* Output chunks are split along z at knots (a multiple of the factor's numerator, and of the
  method's slab length for axial methods), so no interval is split between two tasks when the
  defaults are used; each task writes whole chunks that no other task touches.
* Pyramid levels (2x in y/x per level) are tasks too: a level-``l`` chunk reads the four
  level-``l-1`` chunks below it and runs as soon as those are written.
* Resume: the store's attributes hold a *signature* (method, parameters, checkpoint hash,
  factor, input shape/dtype/content fingerprint, value range, chunks, levels, version) and a
  ``status`` that stays ``"incomplete"`` until the last chunk is written. A rerun with the
  same signature skips every chunk that has a done marker (a chunk written without its marker,
  e.g. by a killed process, is recomputed), and gives the same bytes as an uninterrupted run.
  A store from a run with another signature is refused unless ``overwrite=True``.
* Faults: tasks are submitted with ``retries``; a worker that dies is replaced by its nanny
  and its tasks rerun elsewhere. A task that keeps failing (e.g. disk full) stops the run with
  :class:`ReconstructionFailed`; finished chunks stay on disk and a rerun resumes.
* Learned methods are instantiated once per worker process and cached (keyed by method and
  parameters), so a model is loaded once per worker; ``device="auto"`` in ``method_params``
  is resolved on each worker, so each worker uses its own accelerator.

Modules: :mod:`.client` (``iter_reconstruct_to_zarr``, a progress generator
(:mod:`napari_zup.progress`), and ``reconstruct_to_zarr`` over it: checks, cluster,
submission window), :mod:`.chunks` (chunk shapes and each chunk's input region and render
calls, from the engine's planner), :mod:`.worker` (the tasks and the per-worker caches),
:mod:`.store` (store layout, done markers, run signature, resume/refuse/replace, completion).
"""
from __future__ import annotations

from ..engine import ReconstructionCancelled
from .client import (ReconstructionFailed, SchedulerUnreachable, iter_reconstruct_to_zarr,
                     reconstruct_to_zarr)
from .store import OutputConflict

# Also public, as before the split (tests, benchmarks and docs use them):
from .chunks import (CHUNK_YX, CHUNK_YX_LARGE_HALO, CHUNK_Z,  # noqa: F401
                     default_output_chunks, z_chunk_unit)
from .store import DONE_GROUP, SIGNATURE_FORMAT  # noqa: F401
from .worker import METHOD_LOADS, method_loads  # noqa: F401

__all__ = [
    "reconstruct_to_zarr",
    "iter_reconstruct_to_zarr",
    "ReconstructionFailed",
    "SchedulerUnreachable",
    "OutputConflict",
    "ReconstructionCancelled",
]
