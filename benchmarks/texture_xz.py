"""xz views of FlyEM sample2 restored at F = 4 and 8: ground truth, of-cubic, film (default,
the most faithful) and film with ``--texture 0.8``, side by side (what banding looks like and
what the texture mode does about it).

    .venv/bin/python benchmarks/texture_xz.py [--factor 4]

Computes a band of rows around the middle y only (film's 64 px halo plus the texture halo are
inside it), so it runs in about a minute on 2 CPU cores. Writes docs/texture_xz_sample2_x<F>.png
and prints each panel's texture ratio and PSNR over the band's middle row.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, ImageDraw

from napari_zup import reconstruct
from napari_zup.evaluation import high_frequency_energy

ROOT = Path(__file__).resolve().parents[1]
SAMPLE2 = ROOT.parent / "shared" / "data" / "fibsem_flyem_medulla_10nm_sample2_250.tif"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--factor", type=int, default=4)
    ap.add_argument("--band", type=int, default=176, help="rows computed around middle y")
    args = ap.parse_args()
    f = args.factor
    g = tifffile.imread(SAMPLE2)
    n = (len(g) - 1) // f * f + 1
    y0 = g.shape[1] // 2 - args.band // 2
    gt = g[:n, y0:y0 + args.band]
    knots = gt[::f]
    mid = args.band // 2
    panels = [("ground truth", gt)]
    panels.append(("of-cubic", reconstruct(knots, "of-cubic", f)))
    panels.append(("film", reconstruct(knots, "film", f, method_params={"device": "cpu"})))
    panels.append(("film --texture 0.8", reconstruct(knots, "film", f,
                                                     method_params={"device": "cpu",
                                                                    "texture": 0.8})))
    restored = [i for i in range(n) if i % f]
    khf = np.mean([high_frequency_energy(gt[k].astype(float) / 255) for k in range(0, n, f)])
    tiles = []
    for name, vol in panels:
        xz = vol[:, mid, :]
        hf = np.mean([high_frequency_energy(vol[i].astype(float) / 255) for i in restored])
        err = (xz[restored].astype(float) - gt[restored, mid].astype(float)) / 255
        psnr = 10 * np.log10(1 / np.mean(err ** 2)) if name != "ground truth" else float("inf")
        label = f"{name}  texture {hf / khf:.2f}" + ("" if name == "ground truth"
                                                      else f"  PSNR {psnr:.2f} dB")
        print(label)
        im = Image.fromarray(np.ascontiguousarray(xz)).resize((xz.shape[1] * 2, xz.shape[0] * 2),
                                                              Image.NEAREST)
        canvas = Image.new("L", (im.width, im.height + 22), 255)
        canvas.paste(im, (0, 22))
        ImageDraw.Draw(canvas).text((4, 4), label, fill=0)
        tiles.append(canvas)
    out = Image.new("L", (sum(t.width for t in tiles) + 8 * (len(tiles) - 1), tiles[0].height),
                    255)
    x = 0
    for t in tiles:
        out.paste(t, (x, 0))
        x += t.width + 8
    path = ROOT / "docs" / f"texture_xz_sample2_x{f}.png"
    out.save(path)
    print(f"wrote {path} (xz plane y = {y0 + mid}, z 0-{n - 1}, F = {f})")


if __name__ == "__main__":
    main()
