"""The output grid of a z-reconstruction (docs/evaluation.md, "Grid convention").

A reconstruction at factor F maps Z input slices to ``floor((Z - 1) * F) + 1`` output slices;
output slice i lies at input z-coordinate ``i / F``. Factors are handled as exact fractions so
that knots (integer z) are found without floating-point doubt, also for F = 2.5.
"""
from __future__ import annotations

import math
from fractions import Fraction
from numbers import Real

import numpy as np

#: Factors are represented exactly up to this denominator (2.5 -> 5/2, 2.7 -> 27/10).
MAX_DENOMINATOR = 1000


def parse_factor(factor) -> Fraction:
    """Return ``factor`` as an exact :class:`~fractions.Fraction` > 1, or raise ValueError.

    Accepts ints, floats and strings such as ``"4"`` or ``"2.5"``.
    """
    if isinstance(factor, Fraction):
        value = factor
    else:
        if isinstance(factor, str):
            text = factor.strip()
            try:
                number = float(text)
            except ValueError:
                raise ValueError(
                    f"factor must be a number > 1 (e.g. 4 or 2.5), got {factor!r}"
                ) from None
        elif isinstance(factor, (Real, np.number)) and not isinstance(factor, bool):
            number = float(factor)
        else:
            raise ValueError(f"factor must be a number > 1 (e.g. 4 or 2.5), got {factor!r}")
        if not math.isfinite(number):
            raise ValueError(f"factor must be a finite number > 1, got {factor!r}")
        value = Fraction(number).limit_denominator(MAX_DENOMINATOR)
    if value <= 1:
        raise ValueError(
            f"factor must be > 1 (the output has factor times more slices), got {float(value):g}"
        )
    return value


def output_length(n_slices: int, factor) -> int:
    """Number of output slices for ``n_slices`` input slices: ``floor((n - 1) * F) + 1``."""
    f = parse_factor(factor)
    return math.floor((n_slices - 1) * f) + 1


def output_positions(n_slices: int, factor) -> list[Fraction]:
    """Input z-coordinate (exact) of every output slice: ``i / F``."""
    f = parse_factor(factor)
    return [Fraction(i) / f for i in range(output_length(n_slices, f))]


def knot_output_indices(n_slices: int, factor) -> np.ndarray:
    """Output indices that coincide with an input slice (t == 0)."""
    return np.array(
        [i for i, z in enumerate(output_positions(n_slices, factor)) if z.denominator == 1],
        dtype=np.int64,
    )


def restored_output_indices(n_slices: int, factor) -> np.ndarray:
    """Output indices that a method has to invent (not knots)."""
    return np.array(
        [i for i, z in enumerate(output_positions(n_slices, factor)) if z.denominator != 1],
        dtype=np.int64,
    )


def interval_indices(n_slices: int, factor) -> list[np.ndarray]:
    """Output indices grouped by the knot interval they fall in: one int64 array per
    interval, in z order. Output slice i (at z = i / F) belongs to interval
    ``k = floor(z)``; the last one (z = n - 1, a knot) to the last interval, so that every
    slice is listed exactly once. Integer arithmetic: planning a 100 000-slice output takes
    milliseconds (Fractions per slice took about a second)."""
    f = parse_factor(factor)
    p, q = f.numerator, f.denominator  # z_i = i / f = i * q / p
    idx = np.arange(output_length(n_slices, f), dtype=np.int64)
    k = np.minimum((idx * q) // p, n_slices - 2)
    cuts = np.flatnonzero(np.diff(k)) + 1
    return np.split(idx, cuts)


def intervals(n_slices: int, factor) -> list[tuple[int, list[tuple[int, Fraction]]]]:
    """:func:`interval_indices` with each interval's knot k and each slice's exact position:
    ``[(k, [(i, z), ...]), ...]`` in z order."""
    f = parse_factor(factor)
    out = []
    for group in interval_indices(n_slices, f):
        items = [(int(i), Fraction(int(i)) / f) for i in group]
        out.append((min(math.floor(items[0][1]), n_slices - 2), items))
    return out


def oversampling_note(voxel_size, factor, unit: str = "", *, what: str = "the stack",
                      auto: str = "--factor auto gives {:.4g}") -> str | None:
    """A warning when ``factor`` makes the output's z step clearly finer than the pixels
    (below 0.8 of the smaller y/x size: e.g. an isotropic stack restored x4, where the slices
    in between add no resolution); None when it does not or the voxel size is unknown.
    ``what`` names the data, ``auto`` how the front end gets the isotropic factor (formatted
    with it). The CLI's warning and the Reconstruct widget's both come from here."""
    if not voxel_size or len(voxel_size) < 3 or min(float(v) for v in voxel_size[-3:]) <= 0:
        return None
    z, y, x = (float(v) for v in voxel_size[-3:])
    new_z, pixel = z / float(factor), min(y, x)
    if new_z >= 0.8 * pixel:
        return None
    u = f" {unit}" if unit else ""
    advice = (f"{what} is already isotropic: there is nothing to restore along z"
              if z / pixel <= 1.05 else auto.format(z / pixel))
    return (f"×{float(factor):g} makes the z step {new_z:.3g}{u}, finer than {what}'s "
            f"{pixel:g}{u} pixels (the slices in between add no resolution); {advice}")


def auto_factor(voxel_size, fractional: bool = True) -> Fraction:
    """The factor that makes ``voxel_size`` (z, y, x) isotropic: z step / x pixel size.

    Methods that support fractional factors get the exact ratio (50 nm / 4 nm -> 12.5);
    the others get it rounded half up (-> 13). Raises ValueError when the voxel size is
    unknown or the stack is already (near) isotropic. The CLI's ``--factor auto`` and the
    Reconstruct widget's pre-filled factor both come from here.
    """
    if not voxel_size or not voxel_size[0] or not voxel_size[2]:
        raise ValueError("the voxel size is unknown; give the factor as a number (e.g. 4)")
    ratio = Fraction(float(voxel_size[0]) / float(voxel_size[2])).limit_denominator(
        MAX_DENOMINATOR)
    if ratio < Fraction(3, 2):
        raise ValueError(
            f"the stack is already near isotropic (z / xy = {float(ratio):.3g}); nothing to "
            "do, or give a factor explicitly"
        )
    return ratio if fractional else Fraction(math.floor(ratio + Fraction(1, 2)))
