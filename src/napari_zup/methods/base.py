"""The one interface every reconstruction method implements, and the method registry.

A method renders output slices at arbitrary z-positions from a *block* of input slices
(knots). The engine (``napari_zup.engine``) cuts the volume into blocks along z (with
``z_context`` extra knots on each side) and tiles along y/x (with ``halo(...)`` extra pixels),
calls :meth:`Method.render` on each piece and stitches the results. A method therefore never
sees the whole volume and never deals with tiling, streaming, dtypes on disk or cancellation.

Adding a method = one module that subclasses :class:`Method` and calls :func:`register`.
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, ClassVar, Sequence

import numpy as np


@dataclass(frozen=True)
class MethodInfo:
    """What a user needs to know to pick a method (shown by ``zup methods`` and the widgets)."""

    name: str
    #: "pair": interpolates between neighbouring slices (one z-interval at a time);
    #: "axial": restores xz/yz planes of a z-slab.
    kind: str
    description: str
    #: Non-integer factors (e.g. 2.5) are supported.
    fractional: bool = True
    #: Fewest input slices the method can work with.
    min_slices: int = 2
    needs_checkpoint: bool = False
    #: "cpu" or "cpu, cuda, mps" etc.
    devices: tuple[str, ...] = ("cpu",)
    #: Seconds per megapixel of restored slice when self-evaluated on a small sample at
    #: twice the spacing on 2 CPU cores (measured; 0 = negligible). ``--method auto`` predicts
    #: from it whether scoring a candidate fits its time budget, before starting it.
    sample_cost: float = 0.0
    #: The method takes the Farnebäck flow parameters and can show its flows (Flow, vectors).
    has_flows: bool = False
    #: ``render(want_flows=True)`` gives a displacement field per restored slice (its own,
    #: learned: film, tsain), shown like the optical-flow methods' (Reconstruct's "show flow",
    #: ``zup reconstruct --flows``); implied by ``has_flows``.
    shows_flows: bool = False
    #: The method takes ``texture=RATIO`` (``--texture``; the widgets' "texture" box): the
    #: knots' fine texture is added back to the restored slices (docs/learned-interpolation.md).
    texture: bool = False


@dataclass
class RenderResult:
    """Slices rendered by a method for one block/tile.

    slices: (n_positions, H, W), same dtype as the block (rounded and clipped for integers).
    flows:  optional list (one per position) of (H, W, 2) float32 displacement fields in
            pixels, (dx, dy), of "what moved" between the knots that slice lies between
            (first knot -> second knot). Methods without a notion of flow return None.
    """

    slices: np.ndarray
    flows: list[np.ndarray] | None = None


class Method(ABC):
    """Base class of all methods.

    Subclasses set ``info`` and implement :meth:`render`; they may override ``z_context``,
    :meth:`halo` and ``copies_knots``.
    """

    info: ClassVar[MethodInfo]
    #: Extra knots the method needs on each side of the z-range it renders (cubic: 1).
    z_context: ClassVar[int] = 0
    #: Knots are passed through unchanged (EVALUATION.md: interpolating methods copy knots).
    #: When True the engine copies knots itself and never asks ``render`` for them.
    copies_knots: ClassVar[bool] = True
    #: Number of z-intervals the engine hands over at once (1 for pair interpolators; axial
    #: restorers see a longer slab).
    slab_intervals: ClassVar[int] = 1
    #: Most engine threads worth running this method in (None = one per core). Torch models
    #: use their own intra-op threads: 1 avoids oversubscribing the cores.
    max_workers: ClassVar[int | None] = None

    def halo(self) -> int:
        """Pixels of y/x context a tile needs so that tiled output equals untiled output."""
        return 0

    def prepare(self, volume) -> None:
        """Called once by the planner with the whole input ``volume`` before any tile is
        rendered (learned methods fit their intensity map here, :mod:`napari_zup.intensity`).
        One method object renders one volume at a time."""

    def notes(self) -> list[str]:
        """What a user should know about how this run treats their data (after
        :meth:`prepare`); printed by the CLI."""
        return []

    def min_tile(self) -> int:
        """Smallest y/x extent of the block a tile is computed on (0 = no minimum)."""
        return 0

    @abstractmethod
    def render(
        self,
        block: np.ndarray,
        positions: Sequence[float],
        *,
        value_range: tuple[float, float],
        want_flows: bool = False,
    ) -> RenderResult:
        """Render slices of ``block`` (n, H, W) at z-``positions`` in block coordinates.

        ``positions`` are floats in ``[0, n - 1]`` (0 = first slice of the block).
        ``value_range`` = (lo, hi) of the intensity scale (dtype range for integers, the
        volume's min/max for floats): learned methods map it to [0, 1].
        """

    def close(self) -> None:
        """Free resources (models, threads). Called by the engine when a run ends."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.info.name}>"


# -- registry ---------------------------------------------------------------------------------

@dataclass
class _Entry:
    info: MethodInfo
    factory: Callable[..., Method] | str  # class or "module:Class" (lazy import of torch models)


_REGISTRY: dict[str, _Entry] = {}


def register(info: MethodInfo, factory: Callable[..., Method] | str) -> None:
    """Register a method under ``info.name``. ``factory`` may be "package.module:Class" so
    that heavy imports (torch models) happen only when the method is used."""
    _REGISTRY[info.name] = _Entry(info, factory)


def method_names() -> list[str]:
    _load_builtin()
    return list(_REGISTRY)


def method_infos() -> list[MethodInfo]:
    _load_builtin()
    return [e.info for e in _REGISTRY.values()]


def get_info(name: str) -> MethodInfo:
    _load_builtin()
    try:
        return _REGISTRY[name].info
    except KeyError:
        raise ValueError(
            f"unknown method {name!r}; choose one of: {', '.join(_REGISTRY)}"
        ) from None


def method_class(name: str) -> type:
    """The class registered for ``name`` (imports its module: torch for learned methods)."""
    get_info(name)
    factory = _REGISTRY[name].factory
    if isinstance(factory, str):
        if _REGISTRY[name].info.needs_checkpoint:  # a learned method: its module imports torch
            from ..devices import load_torch_libraries

            load_torch_libraries()  # without holding the GIL: other threads keep running
        module_name, _, attr = factory.partition(":")
        factory = getattr(importlib.import_module(module_name), attr)
    return factory


def create_method(name: str, **params) -> Method:
    """Instantiate method ``name`` with its keyword parameters (e.g. ``winsize=129``)."""
    info = get_info(name)
    factory = method_class(name)
    try:
        return factory(**params)
    except TypeError as exc:
        raise ValueError(f"method {info.name!r}: bad parameters {params}: {exc}") from None


_BUILTIN_MODULES = (
    "napari_zup.methods.classical",
    "napari_zup.methods.optical_flow",
    "napari_zup.methods.learned_registry",
)
_loaded = False


def _load_builtin() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in _BUILTIN_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:  # a real missing dependency inside the module: surface it
                raise


# -- helpers shared by methods ----------------------------------------------------------------

def to_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Round and clip float ``values`` into integer ``dtype`` (floats pass through)."""
    dtype = np.dtype(dtype)
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype, copy=False)


def dtype_value_range(dtype) -> tuple[float, float] | None:
    """(lo, hi) for integer dtypes; None for floats (use the data's min/max)."""
    dtype = np.dtype(dtype)
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        return float(info.min), float(info.max)
    return None
