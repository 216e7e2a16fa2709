"""Training of the learned pair interpolators (``film``, ``tsain``).

Supervised (default): tuples ``(G[z], G[z + F], t = k / F) -> G[z + k]`` cut from isotropic
stacks, every axis of the cube used as 'z' (an isotropic cube has three), factors F mixed
(2, 4, 8 by default) with ``k`` drawn among the available positions. Augmentations: flips,
rot90, z reversal (swap knots, t -> 1 - t), intensity jitter (gain, offset, gamma).

Self-supervised (``--self-supervised --data stack.tif``): only an anisotropic stack, no ground
truth. Tuples ``(A[z - 1], A[z + 1], t = 1/2) -> A[z]`` teach interpolation at twice the real
spacing; the model is then applied at the real spacing (assumption: what relates slices 2 steps
apart also relates slices 1 step apart, at a smaller scale; see docs/learned-interpolation.md).

Loss: L1 + Laplacian-pyramid L1 (5 levels; a stand-in for FILM's VGG perceptual/style terms,
whose weights cannot be downloaded here) + 0.1 x gradient L1 (edges).

This module is the pair family's part of the one training loop
(:mod:`napari_zup.training.session`): sampler, loss, validation tuples.

Example::

    zup train film --data sample1.tif --val sample2.tif --minutes 40 --out film.safetensors
    zup train film --data my_stack.tif --self-supervised --minutes 5 --out my_film.safetensors
"""
from __future__ import annotations

import math

import numpy as np

from .augment import degrade_tuple
from .session import Family, TrainingError, to_unit

METHODS = ("film", "tsain")


def _build(method: str, arch: dict | None):
    """(model, architecture) of a pair interpolator, from the method registry."""
    import sys

    from ..methods.base import method_class

    if method not in METHODS:
        raise ValueError(f"unknown learned method {method!r}; choose one of: "
                         f"{', '.join(METHODS)}")
    cls = method_class(method)
    arch = {**sys.modules[cls.__module__].DEFAULT_ARCH, **(arch or {})}
    return cls.build_model(arch), arch


# -- data -------------------------------------------------------------------------------------

#: probability that a 4-knot training tuple's outer knot (each side) is replaced by the inner
#: one, as the engine does at the volume ends (the shipped film's round; 0.2 was tried and
#: did not close the end intervals' gap: docs/benchmarks.md section 14.3)
END_CLAMP = 0.1


class TupleSampler:
    """Random training tuples ``(a, b, t, target)`` as float32 arrays (B, 1, c, c); with
    ``knots=4`` ``(a, b, t, target, m, p)``, ``m``/``p`` the outer knots one interval before
    ``a`` and after ``b`` (each replaced by its inner neighbour with probability END_CLAMP, as
    at the volume ends, where the engine clamps them; a stack too short for them, e.g. a few
    held-out sections, gives tuples clamped the same way at its ends).

    ``stacks``: arrays (scaled to [0, 1] here, or already when ``scaled``); ``augment``:
    geometry and intensity jitter; ``degrade``: the ``--augment`` degradations."""

    def __init__(self, stacks, factors=(2, 4, 8), crop=96, self_supervised=False,
                 augment=True, seed=0, degrade=False, scaled=False, knots=2):
        self.rng = np.random.default_rng(seed)
        self.crop, self.augment, self.degrade = crop, augment, degrade
        self.knots = knots
        self.self_supervised = self_supervised
        self.views = []  # contiguous (z, y, x) views; each axis of isotropic cubes as z
        for s in stacks:
            u = s if scaled else to_unit(s)
            if self_supervised:
                self.views.append(u)
            else:
                for axes in ((0, 1, 2), (1, 0, 2), (2, 0, 1)):
                    self.views.append(np.ascontiguousarray(u.transpose(axes)))
        # an axis whose cross-sections are smaller than the crop is not used as 'z'
        small = [v.shape[1:] for v in self.views if min(v.shape[1:]) < crop]
        self.views = [v for v in self.views if min(v.shape[1:]) >= crop]
        if not self.views:
            raise TrainingError(f"slices {small[0]} are smaller than the crop {crop}; "
                                f"use --crop {min(small[0])} or less")
        # self-supervised: only the stack's own z axis, (z-1, z+1) -> z by default
        factors = factors or ((2,) if self_supervised else (2, 4, 8))
        self.factors = [f for f in factors if any(len(v) > f for v in self.views)]
        if not self.factors:
            raise TrainingError("the stacks are too short for the requested factors")

    def sample(self, batch):
        c = self.crop
        four = self.knots == 4
        imgs = np.empty((5 if four else 3, batch, 1, c, c), np.float32)
        t = np.empty(batch, np.float32)
        rng = self.rng
        for i in range(batch):
            f = int(rng.choice(self.factors))
            v = self.views[rng.integers(len(self.views))]
            while len(v) <= f:
                v = self.views[rng.integers(len(self.views))]
            if four and len(v) > 3 * f:  # room for the outer knots
                z = int(rng.integers(f, len(v) - 2 * f))
            else:  # a pair model, or a stack too short for z - f and z + 2f: clamped
                z = int(rng.integers(0, len(v) - f))
            k = int(rng.integers(1, f))
            y0 = int(rng.integers(0, v.shape[1] - c + 1))
            x0 = int(rng.integers(0, v.shape[2] - c + 1))
            # order: a, b, target (, m, p): the knots' sections
            zs = [z, z + f, z + k] + ([z - f if z >= f else z,
                                       z + 2 * f if z + 2 * f < len(v) else z + f]
                                      if four else [])
            if four:  # an end of the volume: the outer knot is the end knot (clamped)
                if rng.random() < END_CLAMP:
                    zs[3] = z
                if rng.random() < END_CLAMP:
                    zs[4] = z + f
            trip = np.stack([v[zz, y0:y0 + c, x0:x0 + c] for zz in zs])
            if self.degrade and f >= 2 and rng.random() < 0.2:
                # thick sections: each knot the mean of the sections around it (the target
                # stays one thin section: what a thin-section reconstruction should show)
                h = max(1, f // 2)
                for j, zk in enumerate(zs):
                    if j == 2:
                        continue
                    lo_, hi_ = max(zk - h + 1, 0), min(zk + h, len(v))
                    trip[j] = v[lo_:hi_, y0:y0 + c, x0:x0 + c].mean(0)
            tt = k / f
            if self.augment:
                if rng.random() < 0.5:
                    trip = trip[:, :, ::-1]
                if rng.random() < 0.5:
                    trip = trip[:, ::-1]
                trip = np.rot90(trip, int(rng.integers(4)), axes=(1, 2))
                if rng.random() < 0.5:  # z reversal
                    trip = trip[[1, 0, 2, 4, 3] if four else [1, 0, 2]]
                    tt = 1.0 - tt
                gain = rng.uniform(0.8, 1.2)
                gamma = math.exp(rng.uniform(-0.25, 0.25))
                off = rng.uniform(-0.08, 0.08)
                trip = np.clip(np.clip(trip, 0, 1) ** gamma * gain + off, 0, 1)
            if self.degrade:  # what users' data differ in (EVALUATION.md "Robustness")
                trip = degrade_tuple(trip, rng)
            imgs[:, i, 0] = trip
            t[i] = tt
        return (imgs[0], imgs[1], t, imgs[2]) + ((imgs[3], imgs[4]) if four else ())


def validation_set(stack, factors=None, per_factor=16, crop=128, seed=1234,
                   self_supervised=False, scaled=False, knots=2):
    """A fixed set of validation tuples (no augmentation) from ``stack``."""
    s = TupleSampler([stack], factors, crop, self_supervised, augment=False, seed=seed,
                     scaled=scaled, knots=knots)
    out = []
    for f in s.factors:
        s.factors = [f]
        out.append(s.sample(per_factor))
    return out


# -- loss -------------------------------------------------------------------------------------

def _laplacian_l1(x, y, levels=5):
    import torch.nn.functional as F
    loss = 0.0
    for l in range(levels):
        if min(x.shape[-2:]) < 4:
            break
        xd, yd = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
        xu = F.interpolate(xd, size=x.shape[-2:], mode="bilinear", align_corners=False)
        yu = F.interpolate(yd, size=y.shape[-2:], mode="bilinear", align_corners=False)
        loss = loss + (2 ** l) * ((x - xu) - (y - yu)).abs().mean()
        x, y = xd, yd
    return loss + (x - y).abs().mean() * (2 ** levels)


def interpolation_loss(out, target):
    """L1 + Laplacian-pyramid L1 + 0.1 gradient L1 (see module docstring)."""
    l1 = (out - target).abs().mean()
    gx = ((out[..., :, 1:] - out[..., :, :-1]) - (target[..., :, 1:] - target[..., :, :-1]))
    gy = ((out[..., 1:, :] - out[..., :-1, :]) - (target[..., 1:, :] - target[..., :-1, :]))
    grad = gx.abs().mean() + gy.abs().mean()
    return l1 + 0.1 * _laplacian_l1(out, target) + 0.1 * grad


def preview_plane(model, volume01, factor: int, device="cpu", width=160, rows=32):
    """The middle xz plane (first ``width`` columns) restored at ``factor`` by ``model`` from a
    strip of ``rows`` rows around it: (P, width) in [0, 1]; what the Train widget shows."""
    import torch

    from ..methods._torch_common import crop_to, pad_to_multiple

    z, h, w = volume01.shape
    four = getattr(model, "knots", 2) == 4
    y0 = max(0, h // 2 - rows // 2)
    strip = torch.from_numpy(np.ascontiguousarray(volume01[:, y0:y0 + rows, :min(width, w)]))
    strip, size = pad_to_multiple(strip[:, None].to(device), 8, 16)
    ts = torch.arange(1, factor, device=device, dtype=torch.float32) / factor
    out = [None] * ((z - 1) * factor + 1)
    was = model.training
    model.eval()
    with torch.no_grad():
        enc = [model.encode(strip[k:k + 1]) for k in range(z)]
        for k in range(z - 1):
            outer = (enc[max(k - 1, 0)], enc[min(k + 2, z - 1)]) if four else None
            res, _ = model.decode(enc[k], enc[k + 1], strip[k:k + 1], strip[k + 1:k + 2], ts,
                                  *([outer] if four else []))  # tsain: a pair only
            out[k * factor] = strip[k, 0]
            for j in range(factor - 1):
                out[k * factor + j + 1] = res[j, 0]
        out[-1] = strip[-1, 0]
    model.train(was)
    plane = torch.stack([crop_to(o, size)[h // 2 - y0] for o in out])
    return np.clip(plane.float().cpu().numpy(), 0, 1)


# -- the pair family in the one training loop -------------------------------------------------

class PairFamily(Family):
    """film, tsain: ``(a, b, t) -> slice at t`` from tuples of a stack's sections."""

    kind = "pair"
    methods = METHODS
    options = frozenset({"val", "factors", "crop"})

    def defaults(self, method):
        return {"lr": 1e-3, "lr_init": 2e-4, "batch": 8, "crop": 96}

    def build(self, method, arch):
        return _build(method, arch)

    def split(self, stacks, cfg):
        if not cfg.self_supervised:
            raise TrainingError("supervised training needs a validation stack (--val PATH); it "
                                "must not overlap the training data (or use --self-supervised "
                                "on your anisotropic stack)")
        s0 = stacks[0]
        n = len(s0.data)
        cut = min(int(n * 0.85), n - 3)
        if cut < 4:
            raise TrainingError(f"self-supervised training needs at least 8 sections, "
                                f"{s0.name} has {n}")
        from .session import Stack

        train = [Stack(s0.data[:cut - 1], s0.name, s0.voxel_size)] + list(stacks[1:])
        val = [Stack(s0.data[cut:], s0.name, s0.voxel_size)]
        return train, val, (f"sections {cut}-{n - 1} of {s0.name} (section {cut - 1} left out "
                            "as a gap)")

    def _factors(self, cfg):
        return tuple(cfg.factors) if cfg.factors else None

    @staticmethod
    def _knots(cfg):
        return int((cfg.arch or {}).get("knots", 2))

    def sampler(self, stacks, cfg):
        crop = cfg.crop or 96
        return TupleSampler([s.data for s in stacks], self._factors(cfg), crop,
                            cfg.self_supervised, augment=True, seed=cfg.seed, degrade=cfg.augment,
                            scaled=True, knots=self._knots(cfg))

    def validation(self, stacks, cfg):
        v = stacks[0].data
        if min(v.shape[1:]) < 16:
            raise TrainingError(f"validation sections of {v.shape[1]}x{v.shape[2]} pixels are "
                                "too small (need 16x16 or more)")
        vset = validation_set(v, self._factors(cfg), 8, min(128, *v.shape[1:]),
                              self_supervised=cfg.self_supervised, scaled=True,
                              knots=self._knots(cfg))
        if cfg.augment:  # the same tuples degraded too: keep-best judges what was trained for
            rng = np.random.default_rng(4321)
            deg = []
            for batch in vset:
                imgs = [x for j, x in enumerate(batch) if j != 2]  # every image but t
                tup = np.stack([x[:, 0] for x in imgs], 1)  # (B, images, c, c)
                tup = np.stack([degrade_tuple(x, rng) for x in tup])
                parts = [tup[:, j:j + 1] for j in range(tup.shape[1])]
                deg.append(tuple(parts[:2]) + (batch[2],) + tuple(parts[2:]))
            vset = vset + deg
        return vset

    def predict(self, model, batch, device):
        import torch

        a, b, t, y, *outer = (torch.from_numpy(np.ascontiguousarray(x)).to(device)
                              for x in batch)
        pred, _ = model(a, b, t, tuple(outer)) if outer else model(a, b, t)  # tsain: pairs
        return pred, y

    def start_state(self, state, model):
        from ..methods.film import FilmNet, expand_state

        return expand_state(state, model) if isinstance(model, FilmNet) else state

    def loss(self, method, pred, target):
        return interpolation_loss(pred, target)

    def preview(self, model, stack, cfg, device):
        f = cfg.preview_factor
        if not f and stack.voxel_size and stack.voxel_size[2]:
            f = round(stack.voxel_size[0] / stack.voxel_size[2])
        return preview_plane(model, stack.data, max(int(f or 2), 2), device)

    def metadata(self, cfg, sampler):
        return {"factor_range": [1, 2] if cfg.self_supervised else [1, 8],
                "training": {"factors": list(sampler.factors), "knots": sampler.knots,
                             "end_clamp": END_CLAMP if sampler.knots == 4 else None,
                             "loss": "L1 + 0.1 LapPyr-L1 + 0.1 grad-L1"}}


PAIR = PairFamily()
