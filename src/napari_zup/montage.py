"""A PNG montage of a reconstruction: xy, xz and yz views of the input (z stretched to the
same physical scale by nearest neighbour, i.e. what a viewer shows) above the output."""
from __future__ import annotations

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
    fig.savefig(path, dpi=110)
    plt.close(fig)
