"""napari widgets of napari-zup (Qt). They only collect inputs, start the Qt-free core
(:mod:`napari_zup.engine`, :mod:`napari_zup.evaluation`, :mod:`napari_zup.flow`) in worker
threads and show its results as layers. Adding a widget = one module here + one entry in
napari.yaml.

Each widget's module is imported when that widget is first asked for (napari opens a dock
by ``napari_zup._qt:<Name>``), not all at once: opening the first dock imported every
widget's dependencies in one GUI freeze (docs/benchmarks.md 10.11)."""
from __future__ import annotations

import importlib

_MODULES = {
    "CompareWidget": "._compare",
    "EvaluateWidget": "._evaluate",
    "FlowWidget": "._flow",
    "ReconstructWidget": "._reconstruct",
    "TrainWidget": "._train",
}

__all__ = sorted(_MODULES)


def __getattr__(name: str):
    if name in _MODULES:
        return getattr(importlib.import_module(_MODULES[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_MODULES))
