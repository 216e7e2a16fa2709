"""Compute device selection for learned methods: auto picks cuda, then mps, then cpu."""
from __future__ import annotations

import importlib.util
import os
import platform
import re
import sys
from pathlib import Path


def available_devices() -> list[str]:
    """Devices usable here, best first (always ends with ``"cpu"``)."""
    devices = []
    try:
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
