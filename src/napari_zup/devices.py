"""Compute device selection for learned methods: auto picks cuda, then mps, then cpu."""
from __future__ import annotations


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
