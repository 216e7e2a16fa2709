"""Self-supervised training of the axial restorers (niiv, a2i) on the user's own stack.

The xy slices of an anisotropic stack are full resolution; degraded along y or x by the
stack's factor (keep every F-th row = thin sections, or average F rows = thick sections)
they look like its xz/yz planes. The model learns to undo that degradation and is then
applied to the real axial planes. Nothing but the stack itself is needed.

    zup train niiv --data stack.tif --factor 4 --minutes 10 --out my.safetensors

This module is the axial family's part of the one training loop
(:mod:`napari_zup.training.session`): sampler, loss, validation patches, preview.
"""
from __future__ import annotations

import math

import numpy as np

from ..methods._axial_common import DEGRADATIONS, PairSampler
from .augment import degrade_tuple
from .session import Family, Stack, TrainingError

METHODS = ("niiv", "a2i")


def _method_class(method: str):
    """(class, default architecture) of an axial restorer, from the method registry."""
    import sys

    from ..methods.base import method_class

    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    cls = method_class(method)
    return cls, sys.modules[cls.__module__].DEFAULT_ARCH


def projected_distribution_loss(pred, target):
    """Projected distribution loss (Delbracio et al. 2020, a2i eq. 5): 1D Wasserstein-1
    distance between the sorted values of each image and of its x/y gradients. (The
    original projects VGG features; no pretrained network is shipped here.)"""
    import torch

    def proj(x):
        return [x, x[..., 1:, :] - x[..., :-1, :], x[..., :, 1:] - x[..., :, :-1]]

    loss = 0.0
    for p, t in zip(proj(pred), proj(target)):
        ps = torch.sort(p.flatten(1), dim=1).values
        ts = torch.sort(t.flatten(1), dim=1).values
        loss = loss + (ps - ts).abs().mean()
    return loss


def preview_plane(model, volume01: np.ndarray, factor: float, width: int = 160, device="cpu"):
    """The middle xz plane of the stack (first ``width`` columns) restored at ``factor``:
    what the widget shows while training. Returns (P, width) float in [0, 1]."""
    import torch

    z, h, w = volume01.shape
    plane = volume01[:, h // 2, : min(width, w)]
    n_out = int(math.floor((z - 1) * factor)) + 1
    pos = np.arange(n_out) / factor
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        x = torch.from_numpy(np.ascontiguousarray(plane)[None, None]).to(device)
        out = model(x, torch.as_tensor(pos, dtype=torch.float32, device=device), 1.0 / factor)
    model.train(was_training)
    return np.clip(out[0, 0].float().cpu().numpy(), 0, 1)


class AxialFamily(Family):
    """niiv, a2i: lateral patches of the stack degraded along rows -> the patch."""

    kind = "axial"
    methods = METHODS
    options = frozenset({"factors", "crop", "degradation", "rows"})

    def defaults(self, method):
        return dict(_method_class(method)[0].train_defaults)  # the method's own

    def build(self, method, arch):
        cls, default_arch = _method_class(method)
        a = {**default_arch, **(arch or {})}
        return cls.build_model(a), a

    def _factors(self, cfg, stack=None):
        if cfg.factors:
            fs = cfg.factors if isinstance(cfg.factors, (list, tuple)) else [cfg.factors]
        elif stack is not None and stack.voxel_size and stack.voxel_size[2]:
            fs = [round(stack.voxel_size[0] / stack.voxel_size[2])]
        else:
            raise TrainingError(f"{cfg.method} learns the stack's z/xy anisotropy: give --factor "
                                "F (z step / xy pixel size), the voxel size is not recorded")
        if any(int(f) != f or f < 2 for f in fs):
            raise TrainingError(f"training factors must be integers >= 2, got {list(fs)}")
        return [int(f) for f in fs]

    def split(self, stacks, cfg):
        """The last 15 % of the first stack's sections are held out; further stacks train."""
        s0 = stacks[0]
        n = len(s0.data)
        if n < 2:
            raise TrainingError(f"{s0.name} has {n} section; training needs at least 2 (one is "
                                "held out for validation)")
        k = max(1, round(0.15 * n))
        self._factors(cfg, s0)  # refused before anything is sampled
        train = [Stack(s0.data[:n - k], s0.name, s0.voxel_size)] + list(stacks[1:])
        val = [Stack(s0.data[n - k:], s0.name, s0.voxel_size)]
        return train, val, f"sections {n - k}-{n - 1} of {s0.name}"

    def _sampler(self, stacks, cfg, seed, degrade):
        d = self.defaults(cfg.method)
        fs = self._factors(cfg, stacks[0])
        if cfg.degradation not in DEGRADATIONS:
            raise TrainingError(f"--degradation must be one of {', '.join(DEGRADATIONS)}, got "
                                f"{cfg.degradation!r}")
        try:
            ss = [PairSampler(s.data, fs, cfg.rows or d["rows"], cfg.crop or d["crop"],
                              cfg.degradation, seed=seed + i) for i, s in enumerate(stacks)]
        except ValueError as exc:
            raise TrainingError(str(exc)) from None
        for s in ss:
            if degrade:
                s.degrade = degrade_tuple
        return ss[0] if len(ss) == 1 else MultiSampler(ss, seed)

    def sampler(self, stacks, cfg):
        return self._sampler(stacks, cfg, cfg.seed, cfg.augment)

    def validation(self, stacks, cfg):
        """Fixed patches of the held-out sections; with ``--augment`` the same number again
        with the degradations (fixed seed), so that keep-best judges what was trained for."""
        b = cfg.batch or self.defaults(cfg.method)["batch"]
        out = []
        for degrade in ((False, True) if cfg.augment else (False,)):
            vs = self._sampler(stacks, cfg, cfg.seed + 12345, degrade)
            out += [vs.sample(b, f) for f in vs.factors
                    for _ in range(max(1, 4 // len(vs.factors)))]
        return out

    def predict(self, model, batch, device):
        import torch

        lr, hr, pos, f = batch
        out = model(torch.from_numpy(lr).to(device),
                    torch.from_numpy(pos).to(device), 1.0 / f)
        return out, torch.from_numpy(hr).to(device)

    def loss(self, method, pred, target):
        loss = (pred - target).abs().mean()
        w = _method_class(method)[0].pdl_weight
        if w:
            loss = loss + w * projected_distribution_loss(pred, target)
        return loss

    def preview(self, model, stack, cfg, device):
        fs = self._factors(cfg, stack)
        return preview_plane(model, stack.data, float(fs[0]), device=device)

    def metadata(self, cfg, sampler):
        fs = list(sampler.factors)
        return {"factor_range": [min(fs), max(fs)],
                "training": {"factors": fs, "degradation": cfg.degradation,
                             "patch": [sampler.hr_rows(max(fs)), sampler.width],
                             "loss": _loss_name(cfg.method)}}


class MultiSampler:
    """Several stacks (e.g. cubes of different lateral size): each batch from one of them,
    drawn in proportion to its number of voxels."""

    def __init__(self, samplers, seed=0):
        self.samplers = samplers
        self.factors = samplers[0].factors
        self.width = samplers[0].width
        self.hr_rows = samplers[0].hr_rows
        w = np.array([s.volume.size for s in samplers], float)
        self.p = w / w.sum()
        self.rng = np.random.default_rng(seed)

    def sample(self, batch, factor=None):
        s = self.samplers[int(self.rng.choice(len(self.samplers), p=self.p))]
        return s.sample(batch, factor)


def _loss_name(method: str) -> str:
    w = _method_class(method)[0].pdl_weight
    return f"L1 + {w:g} PDL" if w else "L1"


AXIAL = AxialFamily()
