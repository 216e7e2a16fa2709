"""The C allocator's settings for the processes napari-zup owns (the ``zup`` command and the
dask workers it starts).

glibc's malloc hands every block over 32 MB out as a fresh ``mmap`` and unmaps it again when
freed. A learned method on a 1024 x 1024 tile allocates and frees hundreds of such activation
tensors per slice, each one page-faulted in afresh by the kernel: on these machines half the
CPU time of ``zup reconstruct --method film`` on the VNC stack went to the kernel (8.6 M page
faults for 9 slices; docs/benchmarks.md 16.2). Kept in the heap instead (no mmap, no trimming,
one arena so that torch's threads share the reused memory), the same run takes ~0.6x the time.

The cost: memory freed is kept by the process for reuse, not given back to the system until
it exits. Right for a command that exits when done; not applied to napari's own process
(a long session should give memory back when a layer is deleted): there the same can be had
by starting napari with the environment of :data:`ENV` set.
"""
from __future__ import annotations

import sys

#: The same settings as environment variables, read by glibc when a process starts (used
#: for the dask worker processes; any process, e.g. ``env MALLOC_MMAP_MAX_=0 ... napari``).
ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2 ** 31 - 1),
       "MALLOC_ARENA_MAX": "1"}

_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8  # glibc's malloc.h
_applied = False


def keep_freed_memory() -> bool:
    """Apply :data:`ENV`'s settings to this process now (glibc only; elsewhere nothing is
    changed). Call it first thing in a process that exits when its job is done: threads that
    already allocated keep their own arenas. Returns whether the settings are in effect."""
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.restype, mallopt.argtypes = ctypes.c_int, [ctypes.c_int, ctypes.c_int]
    ok = all(mallopt(p, v) == 1 for p, v in ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0),
                                              (_M_TRIM_THRESHOLD, 2 ** 31 - 1)))
    _applied = ok
    return ok
