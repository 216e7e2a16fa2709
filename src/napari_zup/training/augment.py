"""Degradations users' stacks differ in (EVALUATION.md "Robustness"), for ``--augment``.

Applied to a training tuple of images in [0, 1] (pair interpolators: both knots and the
target; axial restorers: the lateral patch before it is degraded along rows), so that the
model learns on data that look like a user's: additive Gaussian noise and Poisson-like noise
(independent per image), contrast / brightness / gamma, Gaussian blur and lateral rescaling
(pixel size), the same for every image of the tuple. Thick sections (a knot the mean of
several sections) are made by the samplers, which see the volume. Each degradation is drawn
with probability ``p``; the stated ranges are in grey levels of 8-bit data.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

#: (name, what it does) in the order they are applied
DEGRADATIONS = (
    ("rescale", "lateral rescaling by 0.6-1.6 (pixel size), cropped/padded back"),
    ("blur", "Gaussian blur, sigma 0.5-1.5 px"),
    ("contrast", "gain 0.6-1.4, offset +-0.1, gamma 0.7-1.4"),
    ("poisson", "Poisson-like noise, 20-200 counts at full intensity"),
    ("gaussian", "additive Gaussian noise, sigma 2-12 grey levels"),
)


def _rescale(imgs: np.ndarray, s: float) -> np.ndarray:
    n, h, w = imgs.shape
    hh, ww = max(2, round(h * s)), max(2, round(w * s))
    out = np.empty_like(imgs)
    for i, im in enumerate(imgs):
        r = cv2.resize(im, (ww, hh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
        if hh < h or ww < w:
            r = cv2.copyMakeBorder(r, 0, max(h - hh, 0), 0, max(w - ww, 0), cv2.BORDER_REFLECT)
        y0, x0 = (r.shape[0] - h) // 2, (r.shape[1] - w) // 2
        out[i] = r[y0:y0 + h, x0:x0 + w]
    return out


def degrade_tuple(imgs: np.ndarray, rng: np.random.Generator, p: float = 0.3) -> np.ndarray:
    """A degraded copy of ``imgs`` (N, H, W) float32 in [0, 1]; the input is not changed."""
    x = np.ascontiguousarray(imgs, dtype=np.float32).copy()
    if rng.random() < p:
        x = _rescale(x, float(math.exp(rng.uniform(math.log(0.6), math.log(1.6)))))
    if rng.random() < p:
        sigma = float(rng.uniform(0.5, 1.5))
        x = np.stack([cv2.GaussianBlur(im, (0, 0), sigma) for im in x])
    if rng.random() < p:
        gain, off = rng.uniform(0.6, 1.4), rng.uniform(-0.1, 0.1)
        gamma = math.exp(rng.uniform(math.log(0.7), math.log(1.4)))
        x = np.clip(np.clip(x, 0, 1) ** gamma * gain + off, 0, 1)
    if rng.random() < p:
        peak = float(rng.uniform(20, 200))
        x = rng.poisson(np.clip(x, 0, 1) * peak).astype(np.float32) / peak
    if rng.random() < p:
        x = x + rng.normal(0, rng.uniform(2, 12) / 255.0, x.shape).astype(np.float32)
    return np.clip(x, 0, 1).astype(np.float32)
