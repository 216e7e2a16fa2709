"""Intensity normalisation of the learned methods: a user's stack mapped to the training data's.

The learned models were trained on FlyEM stacks whose grey values fill a certain part of the
dtype range. A user's stack often does not: lower contrast, a gamma, a different offset, or
16-bit data that uses a few thousand of its 65,536 levels. A model fed such data sees inputs
unlike anything it trained on (measured: niiv/a2i fell below optical flow under a contrast
change, docs/benchmarks.md section 13). So, as CARE and StarDist do, the learned methods map
the stack's 1st/99th percentiles to the ones the training data had (stored in the checkpoint
as ``metadata["intensity"]``), run the model, and map the output back. The map is one affine
per volume, from a bounded sample of it, so every tile, the lazy array and every cluster
worker use the same one.

No Qt, no torch: the cluster client computes the map before any worker starts.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

#: the percentiles matched (robust to a few saturated or black pixels)
PERCENTILES = (1.0, 99.0)


def sample_values(volume, max_slices: int = 16, max_side: int = 512) -> np.ndarray:
    """A bounded sample of ``volume``'s voxels (float64, 1D): up to ``max_slices`` evenly
    spaced z-slices, each strided to at most ``max_side`` pixels a side. Reads only those
    slices of a dask/zarr array."""
    z, h, w = (int(s) for s in volume.shape)
    zs = np.unique(np.linspace(0, z - 1, min(z, max_slices)).round().astype(int))
    sy, sx = max(1, -(-h // max_side)), max(1, -(-w // max_side))
    parts = []
    for k in zs:
        sl = volume[int(k)]
        sl = sl.compute() if hasattr(sl, "compute") else np.asarray(sl)
        parts.append(np.asarray(sl)[::sy, ::sx].astype(np.float64).ravel())
    values = np.concatenate(parts)
    return values[np.isfinite(values)]


def reference_of(metadata: Mapping | None) -> tuple[float, float] | None:
    """The training data's percentiles (in the model's [0, 1] units) from checkpoint
    metadata, or None for a checkpoint that has none (trained before normalisation)."""
    ref = (metadata or {}).get("intensity") or {}
    vals = ref.get("values")
    if not vals or len(vals) != 2 or tuple(ref.get("percentiles", PERCENTILES)) != PERCENTILES:
        return None
    lo, hi = float(vals[0]), float(vals[1])
    return (lo, hi) if hi > lo else None


def reference_metadata(values_01: np.ndarray) -> dict:
    """``metadata["intensity"]`` for training data whose voxels (scaled to [0, 1]) are
    ``values_01``."""
    lo, hi = np.percentile(values_01, PERCENTILES)
    return {"percentiles": list(PERCENTILES), "values": [round(float(lo), 5), round(float(hi), 5)]}


def matching_range(values: np.ndarray, reference: tuple[float, float],
                   value_span: float | None = None) -> tuple[float, float] | None:
    """``(lo, hi)`` in the stack's units such that ``(x - lo) / (hi - lo)`` puts the
    stack's percentiles where the training data had them; None when the stack is (nearly)
    constant and no map can be fitted.

    Contrast is only ever raised, not lowered: for a stack with more contrast than the
    training data (``hi - lo`` would be wider than ``value_span``, the stack's value range:
    the dtype range for integers) the map keeps ``value_span`` and only centres the
    percentiles on the training data's. Measured on the ssTEM stacks, whose grey values spread
    wider than the FlyEM cubes': squeezing them cost niiv and a2i 0.08-0.12 dB
    (docs/benchmarks.md section 13), and the training augmentation already covers higher
    contrast (gain up to 1.4)."""
    v_lo, v_hi = (float(v) for v in np.percentile(values, PERCENTILES))
    r_lo, r_hi = reference
    if not v_hi > v_lo:
        return None
    span = (v_hi - v_lo) / (r_hi - r_lo)
    if value_span is not None and span > value_span:
        span = float(value_span)  # the midpoints meet; continuous where the gain reaches 1
        lo = 0.5 * (v_lo + v_hi) - 0.5 * (r_lo + r_hi) * span
    else:
        lo = v_lo - r_lo * span
    return lo, lo + span


def input_range_for(volume, metadata: Mapping | None) -> tuple[float, float] | None:
    """The learned method's input range for ``volume`` (see :func:`matching_range`), or
    None when the checkpoint has no intensity reference."""
    ref = reference_of(metadata)
    if ref is None:
        return None
    return fit_range(volume, ref)


def fit_range(volume, reference: tuple[float, float]) -> tuple[float, float] | None:
    """:func:`matching_range` for ``volume``, from its bounded sample; the value span is the
    dtype range for integers, the sample's min/max for floats."""
    values = sample_values(volume)
    if values.size == 0:
        return None
    kind = np.dtype(volume.dtype).kind
    if kind in "ui":
        info = np.iinfo(volume.dtype)
        value_span = float(info.max) - float(info.min)
    else:
        value_span = float(values.max() - values.min())
    return matching_range(values, reference, value_span)


def normalise_unit_stack(data: np.ndarray, reference: tuple[float, float]) -> np.ndarray:
    """A training stack already in [0, 1] (dtype scale) mapped as inference maps it, so that
    training and inference see the same values."""
    rng = matching_range(sample_values(data), reference, 1.0)
    if rng is None:
        return data
    lo, hi = rng
    return ((data - np.float32(lo)) / np.float32(hi - lo)).astype(np.float32)


class IntensityMap:
    """A learned method's input map: ``range(value_range)`` is the ``(lo, hi)`` that the
    method maps to [0, 1] before its model and back after it.

    ``normalize=False``, or a checkpoint without an intensity reference: the volume's value
    range (dtype range), as before normalisation existed. ``input_range``: a given map (the
    cluster client fits it once for all workers); otherwise :meth:`fit` fits it to a volume.
    """

    def __init__(self, metadata: Mapping | None, normalize: bool = True, input_range=None):
        if input_range is not None:
            lo, hi = (float(v) for v in input_range)
            if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
                raise ValueError(f"input_range must be two finite numbers lo < hi, "
                                 f"got {input_range!r}")
            input_range = (lo, hi)
        self.reference = reference_of(metadata) if normalize else None
        self.given = input_range
        self.fitted: tuple[float, float] | None = None
        self._fitted_to = None

    def fit(self, volume) -> None:
        if self.given is not None or self.reference is None or volume is self._fitted_to:
            return
        self.fitted = fit_range(volume, self.reference)
        self._fitted_to = volume

    @property
    def input_range(self) -> tuple[float, float] | None:
        """The map in use (None: the value range)."""
        return self.given or self.fitted

    def range(self, value_range) -> tuple[float, float]:
        rng = self.input_range
        return rng if rng is not None else (float(value_range[0]), float(value_range[1]))

    def notes(self) -> list[str]:
        rng = self.input_range
        if rng is None:
            return []
        how = "given" if self.given is not None else "fitted"
        return [f"intensity map ({how}): grey values {rng[0]:.4g}..{rng[1]:.4g} -> the model's "
                f"0..1, so that the stack's 1st/99th percentiles sit where the training data's "
                f"did ({self.reference[0]:.3f}/{self.reference[1]:.3f}; off: "
                f"--param normalize=false)" if self.reference else
                f"intensity map ({how}): grey values {rng[0]:.4g}..{rng[1]:.4g} -> 0..1"]

