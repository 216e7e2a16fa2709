"""Compute device selection for learned methods: auto picks cuda, then mps, then cpu; torch's
native libraries loaded without holding the GIL (:func:`load_torch_libraries`)."""
from __future__ import annotations

import importlib.util
import os
import platform
import re
import sys
import threading
from pathlib import Path

#: torch's core native libraries, in load order (present in CPU and CUDA builds alike).
TORCH_CORE_LIBRARIES = ("libc10", "libtorch_cpu")
_TORCH_LIBS_LOCK = threading.Lock()
_torch_libs_loaded = False


def load_torch_libraries() -> bool:
    """Load torch's core native libraries ahead of ``import torch``, letting other threads run.

    ``import torch`` loads ``libtorch_cpu`` through Python's own ``dlopen``, which holds the
    GIL while the dynamic linker and the library's static initialisers run: 0.16-0.19 s on
    these machines, a freeze of every thread (napari's interface included) even when torch is
    imported in a background thread (docs/benchmarks.md 10.12). The same ``dlopen`` called
    through ctypes' foreign-function interface releases the GIL; ``import torch`` then finds
    the libraries loaded. Same flags as Python's import (``sys.getdlopenflags()``). CUDA's
    libraries are left to torch, which knows where its CUDA runtime is.

    Best effort, safe to call from any thread and more than once: returns True when the
    libraries are loaded by this call or an earlier one; False (nothing else changed) when
    torch is imported already, is not installed, the platform has no ``dlopen`` (Windows),
    or a library does not load: ``import torch`` then does it all as usual.
    """
    global _torch_libs_loaded
    if _torch_libs_loaded:
        return True
    if "torch" in sys.modules or sys.platform not in ("linux", "darwin"):
        return False
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return False
    import ctypes

    lib = Path(list(spec.submodule_search_locations)[0]) / "lib"
    suffix = ".dylib" if sys.platform == "darwin" else ".so"
    with _TORCH_LIBS_LOCK:
        if _torch_libs_loaded:
            return True
        try:
            dlopen = ctypes.CDLL(None).dlopen  # a foreign function: called without the GIL
        except (OSError, AttributeError):
            return False
        dlopen.restype, dlopen.argtypes = ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_int]
        for name in TORCH_CORE_LIBRARIES:
            path = lib / f"{name}{suffix}"
            if not path.is_file() or not dlopen(os.fsencode(path), sys.getdlopenflags()):
                return False
        _torch_libs_loaded = True
        return True


def available_devices() -> list[str]:
    """Devices usable here, best first (always ends with ``"cpu"``)."""
    devices = []
    try:
        load_torch_libraries()
        import torch

        if torch.cuda.is_available():
            devices.append("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            devices.append("mps")
    except ImportError:  # torch is a dependency, but keep the classical path importable
        pass
    devices.append("cpu")
    return devices


def select_device(device: str | None = "auto") -> str:
    """Return a concrete device name for ``device`` ("auto", "cpu", "cuda", "cuda:1", "mps")."""
    if device in (None, "", "auto"):
        return available_devices()[0]
    base = str(device).split(":")[0]
    if base not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device must be one of 'auto', 'cpu', 'cuda', 'mps', got {device!r}")
    if base not in available_devices():
        raise ValueError(
            f"device {device!r} is not available here; available: {', '.join(available_devices())}"
        )
    return str(device)


def likely_devices() -> list[str]:
    """Devices torch would use here, guessed without importing torch (it takes seconds).

    Exact when torch is already imported; otherwise cuda = a CUDA build of torch and an NVIDIA
    driver present, mps = Apple silicon. ``zup methods --probe`` asks torch itself.
    """
    if "torch" in sys.modules:
        return available_devices()
    devices = []
    spec = importlib.util.find_spec("torch")
    if spec is not None and spec.submodule_search_locations:
        version = Path(list(spec.submodule_search_locations)[0]) / "version.py"
        text = version.read_text() if version.exists() else ""
        cuda_build = re.search(r"^cuda\s*(?::[^=]*)?=\s*['\"]", text, re.M) is not None
        if cuda_build and (os.path.exists("/proc/driver/nvidia") or os.path.exists("/dev/nvidiactl")):
            devices.append("cuda")
        if sys.platform == "darwin" and platform.machine() == "arm64":
            devices.append("mps")
    devices.append("cpu")
    return devices
