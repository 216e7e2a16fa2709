"""``film``: FILM-style learned slice interpolation (seed z-upscaling-film.txt, after Reda et
al.'s FILM), sized for CPUs.

Architecture (all sizes in :data:`DEFAULT_ARCH`):

1. **Scale-agnostic feature pyramid.** The slice is downsampled into an image pyramid; the same
   two-stage extractor (weights shared across scales) runs on every pyramid level, and the
   feature at level ``l`` concatenates stage 0 of image level ``l`` with stage 1 of image level
   ``l - 1`` (as in FILM, coarse levels see the same filters as fine ones).
2. **Bidirectional flow from the unknown slice to both knots**, coarse to fine: at each level
   the two knots' features are backward-warped by the current flows ``F_t->0`` and ``F_t->1``
   (upsampled from the coarser level) and a small CNN that also sees ``t`` predicts residual
   updates of both flows. The finest flows are upsampled to full resolution.
3. **Backward warping** of images and features of both knots with those flows.
4. **U-Net fusion decoder** from the coarsest level to full resolution (the pyramid is its
   encoder), conditioned on ``t``; it predicts a blend mask (around the linear weight 1 - t) and
   a residual: ``out = m * warp(I0) + (1 - m) * warp(I1) + r``.

Conditioning on ``t`` (a constant input plane) gives any position in (0, 1), so any factor,
also fractional, comes out of one pass per output slice. The knots' pyramids are computed once
per knot pair and reused for every slice between them.

**Four knots** (``arch["knots"] = 4``): the outer knots ``z - 1`` and ``z + 2`` are seen too,
as ``of-cubic`` sees them, so that a membrane that curves or a structure that appears between
the knots is modelled by more than one straight motion. Their features are warped with the
flows a constant motion would give them (``F_t->-1 = 2 F_t->0 - F_t->1``,
``F_t->2 = 2 F_t->1 - F_t->0``) and fed to every flow estimator and decoder level, where a
deviation from that motion shows as a misalignment the network can correct. At the volume
ends the missing outer knot is the end knot itself (clamped, as of-cubic). The extra input
channels come last and start at zero (:func:`expand_state`), so a 4-knot model made from a
2-knot checkpoint computes exactly what the 2-knot one did until it is trained.

**End flags** (``arch["end_flags"]``, 4 knots): two more constant planes, one per side, that
are 1 where the outer knot is missing (the volume end: the engine clamps it, so it equals the
inner knot exactly; a training tuple clamped the same way). Without them the model has to
infer "no outer knot" from two identical images warped by different flows. Also last and
zero at the start: a 4-knot checkpoint with flags added computes what it did before.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._torch_common import (LearnedPairMethod, backward_warp, bound_to_local_range,
                            upsample_flow)
from .learned_registry import LEARNED_INFOS

DEFAULT_ARCH = {
    "levels": 4,          # full, 1/2, 1/4, 1/8
    "c0": 12,             # stage-0 feature channels (every level)
    "c1": 20,             # stage-1 feature channels (levels >= 1)
    "flow_width": [0, 32, 40, 48],   # hidden width of the flow estimator per level (0: none)
    "dec_width": [16, 24, 32, 48],   # fusion decoder width per level
    "dec_blocks": [0, 0, 0, 0],      # residual blocks after the decoder's input per level
    "knots": 2,           # 2: the pair only; 4: also the outer knots z - 1 and z + 2
    "end_flags": False,   # (4 knots) also two planes saying which outer knot is missing
}


def _conv(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, 3, stride, 1)


def _act():
    return nn.LeakyReLU(0.2, inplace=True)


def outer_flows(flows):
    """Flows from the output slice to the outer knots under constant motion:
    ``(F_t->-1, F_t->2) = (2 F_t->0 - F_t->1, 2 F_t->1 - F_t->0)``."""
    f0, f1 = flows[:, :2], flows[:, 2:]
    return 2 * f0 - f1, 2 * f1 - f0


class _Residual(nn.Module):
    """``x + conv(act(conv(x)))``; the last convolution starts at zero, so a block added to a
    trained model leaves its output as it was until it is trained (:func:`expand_state`)."""

    def __init__(self, width):
        super().__init__()
        self.net = nn.Sequential(_conv(width, width), _act(), _conv(width, width))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x):
        return x + self.net(x)


class _FlowEstimator(nn.Module):
    def __init__(self, cfeat, width, outer=False, flags=False):
        super().__init__()
        # the outer knots' warped features come last (then the end flags): a 2-knot
        # checkpoint fills the first channels and the rest start at zero (expand_state)
        self.net = nn.Sequential(
            _conv(2 * cfeat + 5 + (2 * cfeat if outer else 0) + (2 if flags else 0), width),
            _act(),
            _conv(width, width), _act(), _conv(width, width // 2), _act(),
            _conv(width // 2, 4))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, fa, fb, flows, tmap, outer=None, flags=None):
        parts = [backward_warp(fa, flows[:, :2]), backward_warp(fb, flows[:, 2:]), flows, tmap]
        if outer is not None:
            fm, fp = outer
            om, op = outer_flows(flows)
            parts += [backward_warp(fm, om), backward_warp(fp, op)]
        if flags is not None:
            parts.append(flags.expand(-1, -1, *fa.shape[-2:]))
        return flows + self.net(torch.cat(parts, 1))


class FilmNet(nn.Module):
    """FILM-style interpolator; ``encode`` once per knot, ``decode`` per output position."""

    def __init__(self, levels=4, c0=12, c1=20, flow_width=(0, 32, 40, 48),
                 dec_width=(16, 24, 32, 48), knots=2, end_flags=False,
                 dec_blocks=(0, 0, 0, 0)):
        super().__init__()
        if knots not in (2, 4):
            raise ValueError(f"film: knots must be 2 or 4, got {knots!r}")
        if end_flags and knots != 4:
            raise ValueError("film: end_flags needs knots = 4 (they say which outer knot is "
                             "missing)")
        self.levels, self.knots, self.end_flags = levels, knots, bool(end_flags)
        outer = knots == 4
        self.e0 = nn.Sequential(_conv(1, c0), _act(), _conv(c0, c0), _act())
        self.e1 = nn.Sequential(_conv(c0, c1, 2), _act(), _conv(c1, c1), _act())
        self.cfeat = [c0] + [c0 + c1] * (levels - 1)
        self.flow = nn.ModuleList(
            [_FlowEstimator(self.cfeat[l], flow_width[l], outer, self.end_flags)
             if flow_width[l]
             else nn.Identity() for l in range(levels)])
        self.flow_levels = [l for l in range(levels) if flow_width[l]]
        # decoder: stack_l = warped imgs (2) + warped feats (2 cfeat) + flows (4) + t (1)
        self.dec_in = nn.ModuleList()
        self.dec_up = nn.ModuleList()
        for l in range(levels):
            stack = 2 + 2 * self.cfeat[l] + 5
            prev = dec_width[l + 1] if l + 1 < levels else 0
            extra = 2 + 2 * self.cfeat[l] if outer else 0  # warped outer images + features
            extra += 2 if self.end_flags else 0  # then the end flags
            self.dec_in.append(nn.Sequential(_conv(stack + prev + extra, dec_width[l]), _act(),
                                             _conv(dec_width[l], dec_width[l]), _act()))
            self.dec_up.append(nn.Identity() if l + 1 >= levels else nn.Sequential(
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                _conv(dec_width[l + 1], dec_width[l + 1]), _act()))
        # more depth per decoder level (empty by default: no parameters)
        self.dec_res = nn.ModuleList(
            [nn.Sequential(*[_Residual(dec_width[l]) for _ in range(int(dec_blocks[l]))])
             for l in range(levels)])
        self.head = nn.Conv2d(dec_width[0], 2, 3, 1, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def encode(self, img):
        imgs = [img]
        for _ in range(1, self.levels):
            imgs.append(F.avg_pool2d(imgs[-1], 2))
        f0 = [self.e0(im) for im in imgs]
        feats = [f0[0]]
        for l in range(1, self.levels):
            feats.append(torch.cat([f0[l], self.e1(f0[l - 1])], 1))
        return imgs, feats

    #: decode(..., aligned=[]) reports the flow-aligned knots (LearnedPairMethod's texture)
    reports_aligned = True

    def decode(self, enc_a, enc_b, a, b, t, outer=None, aligned=None):
        """``outer`` (4 knots): the encodings ``(enc_m, enc_p)`` of knots z - 1 and z + 2.
        ``aligned``: a list that receives the knots warped to the output slice and blended by
        the model's own weight (the texture option's source: real texture, in place)."""
        if (outer is None) != (self.knots == 2):
            raise ValueError(f"this film model uses {self.knots} knots: pass the outer knots' "
                             "encodings exactly when it has 4")
        n = t.shape[0]

        def expand(enc):
            imgs, feats = enc
            if feats[0].shape[0] == n:
                return imgs, feats
            # one knot pair, several positions
            return ([x.expand(n, -1, -1, -1) for x in imgs],
                    [f.expand(n, -1, -1, -1) for f in feats])

        imgs_a, fa = expand(enc_a)
        imgs_b, fb = expand(enc_b)
        if outer is not None:
            (imgs_m, fm), (imgs_p, fp) = expand(outer[0]), expand(outer[1])
        t4 = t.view(-1, 1, 1, 1).to(fa[0].dtype)
        flags = None
        if self.end_flags:  # an outer knot identical to its inner one is a clamped, missing one
            def same(x, y):
                return ((x - y).abs().flatten(1).amax(1) == 0).to(x.dtype).view(-1, 1, 1, 1)
            flags = torch.cat([same(imgs_m[0], imgs_a[0]), same(imgs_p[0], imgs_b[0])], 1)
        top = self.levels - 1
        flows_per_level = [None] * self.levels
        flows = torch.zeros((n, 4) + fa[top].shape[-2:], device=t.device, dtype=fa[0].dtype)
        for l in range(top, -1, -1):
            if flows.shape[-2:] != fa[l].shape[-2:]:
                flows = torch.cat([upsample_flow(flows[:, :2], fa[l].shape[-2:]),
                                   upsample_flow(flows[:, 2:], fa[l].shape[-2:])], 1)
            if l in self.flow_levels:
                tmap = t4.expand(-1, 1, *fa[l].shape[-2:])
                flows = self.flow[l](fa[l], fb[l], flows, tmap,
                                     None if outer is None else (fm[l], fp[l]), flags)
            flows_per_level[l] = flows
        x = None
        for l in range(top, -1, -1):
            fl = flows_per_level[l]
            tmap = t4.expand(-1, 1, *fa[l].shape[-2:])
            wia = backward_warp(imgs_a[l], fl[:, :2])
            wib = backward_warp(imgs_b[l], fl[:, 2:])
            wfa = backward_warp(fa[l], fl[:, :2])
            wfb = backward_warp(fb[l], fl[:, 2:])
            parts = [wia, wib, wfa, wfb, fl, tmap]
            if x is not None:
                parts.append(self.dec_up[l](x))
            if outer is not None:
                om, op = outer_flows(fl)
                parts += [backward_warp(imgs_m[l], om), backward_warp(imgs_p[l], op),
                          backward_warp(fm[l], om), backward_warp(fp[l], op)]
            if flags is not None:
                parts.append(flags.expand(-1, -1, *fa[l].shape[-2:]))
            x = self.dec_res[l](self.dec_in[l](torch.cat(parts, 1)))
            if l == 0:
                wa0, wb0 = wia, wib
        head = self.head(x)
        tc = t4.clamp(1e-3, 1 - 1e-3)
        m = torch.sigmoid(torch.log((1 - tc) / tc) + head[:, :1])
        blend = m * wa0 + (1 - m) * wb0
        out = bound_to_local_range(blend + head[:, 1:2], (wa0, wb0))  # flat stays flat
        if aligned is not None:
            aligned.append(blend)
        fl0 = flows_per_level[0]
        # displacement first knot -> second knot seen at the output slice's location
        return out, fl0[:, 2:] - fl0[:, :2]

    def forward(self, a, b, t, outer=None):
        """``outer``: images ``(m, p)`` of knots z - 1 and z + 2 (4-knot models only)."""
        enc_outer = None if outer is None else (self.encode(outer[0]), self.encode(outer[1]))
        return self.decode(self.encode(a), self.encode(b), a, b, t, enc_outer)


def build_film(arch: dict) -> FilmNet:
    arch = {**DEFAULT_ARCH, **arch}
    return FilmNet(arch["levels"], arch["c0"], arch["c1"], tuple(arch["flow_width"]),
                   tuple(arch["dec_width"]), int(arch["knots"]), bool(arch["end_flags"]),
                   tuple(arch["dec_blocks"]))


def expand_state(state: dict, model: nn.Module) -> dict:
    """``state`` (e.g. a 2-knot checkpoint) as a state dict for ``model`` (e.g. 4 knots):
    tensors of equal shape are copied; a convolution with more input channels gets the old
    weights in its first channels and zeros in the new ones (which is where the outer knots'
    inputs are), so the model computes what the old one did; residual decoder blocks the old
    model lacks keep their fresh start (their last convolution is zero: no change either).
    Other mismatches are refused."""
    out = {}
    for k, new in model.state_dict().items():
        old = state.get(k)
        if old is None and k.startswith("dec_res."):
            out[k] = new.clone()
            continue
        if old is None:
            raise ValueError(f"the starting checkpoint has no {k!r}: another architecture")
        if old.shape == new.shape:
            out[k] = old.clone()
        elif old.ndim == 4 and old.shape[0] == new.shape[0] and old.shape[2:] == new.shape[2:] \
                and old.shape[1] < new.shape[1]:
            w = torch.zeros_like(new)
            w[:, :old.shape[1]] = old
            out[k] = w
        else:
            raise ValueError(f"{k!r}: shape {tuple(old.shape)} cannot start "
                             f"{tuple(new.shape)}")
    return out


class Film(LearnedPairMethod):
    """FILM-style pyramid-flow interpolator; ``checkpoint=None`` uses the bundled weights."""

    info = LEARNED_INFOS["film"]  # one copy, torch-free: methods/learned_registry.py
    method_name = "film"
    pad_multiple = 8
    receptive_halo = 64

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # a residual decoder block adds two 3 x 3 convolutions at its level's scale (2^l px)
        self.receptive_halo = type(self).receptive_halo + sum(
            2 * len(blocks) * 2 ** level for level, blocks in enumerate(self.model.dec_res))

    @classmethod
    def build_model(cls, arch):
        return build_film(arch)
