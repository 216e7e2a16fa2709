"""A PNG montage of a reconstruction: xy, xz and yz views of the input (z stretched to the
same physical scale by nearest neighbour, i.e. what a viewer shows) above the output."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def _views(vol, z_stretch: float, z_xy: int):
    z, h, w = vol.shape
    xy = np.asarray(vol[min(z_xy, z - 1)])
    xz = np.asarray(vol[:, h // 2, :])
    yz = np.asarray(vol[:, :, w // 2])
    if z_stretch != 1:
        rows = np.minimum((np.arange(int(round((z - 1) * z_stretch)) + 1) / z_stretch + 0.5)
                          .astype(int), z - 1)
        xz, yz = xz[rows], yz[rows]
    return xy, xz, yz


#: Formats the montage can be saved in (matplotlib's, by file extension).
MONTAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".pdf", ".svg", ".tif", ".tiff")


def check_montage_path(path, overwrite: bool = False) -> Path:
    """Refuse a montage path before a long run rather than after it: unknown format, missing
    or unwritable folder, or an existing file without ``overwrite``."""
    p = Path(path)
    if p.suffix.lower() not in MONTAGE_SUFFIXES:
        raise ValueError(f"--montage {p.name!r}: use one of {', '.join(MONTAGE_SUFFIXES)}")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(f"--montage: folder {str(parent)!r} does not exist; create it "
                                "first")
    if not os.access(parent, os.W_OK):
        raise PermissionError(f"--montage: folder {str(parent)!r} is not writable")
    if p.exists() and not overwrite:
        raise FileExistsError(f"--montage {str(p)!r} already exists; use --overwrite to "
                              "replace it")
    return p


def save_montage(path, input_volume, output_volume, factor, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f = float(factor)
    # xy: a restored output slice half-way between two knots, and the input knot before it
    k = max(int(input_volume.shape[0]) // 2 - 1, 0)
    rows = [("input (nearest in z)", _views(input_volume, f, k)),
            ("reconstruction", _views(output_volume, 1.0, int(round((k + 0.5) * f))))]
    lo = float(np.percentile(rows[1][1][0], 0.5))
    hi = float(np.percentile(rows[1][1][0], 99.5))
    fig, axes = plt.subplots(2, 3, figsize=(15, 9.5), constrained_layout=True)
    for r, (label, views) in enumerate(rows):
        for c, (name, img) in enumerate(zip(("xy (knot z)" if r == 0 else "xy (half-way to next knot)",
                                             "xz (middle y)",
                                             "yz (middle x)"), views)):
            ax = axes[r, c]
            ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
            ax.set_title(f"{label}: {name}", fontsize=10)
            ax.set_xticks([])
            ax.set_yticks([])
    if title:
        fig.suptitle(title)
    p = Path(path)
    from .io import atomic_output

    try:
        with atomic_output(p) as tmp:  # no half-written image under the real name
            fig.savefig(tmp, dpi=110, format=p.suffix.lstrip(".").lower().replace("jpg", "jpeg"))
    finally:
        plt.close(fig)
