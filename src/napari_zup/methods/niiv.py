"""niiv: a neural field for axial super-resolution at any continuous z-scale
(niiv-neural-implicit.txt).

An EDSR-style encoder *without upsampling* turns a low-resolution axial plane (z rows, x or y
columns) into a latent grid of the same size. Every output pixel ``(z, x)`` is decoded by a
small MLP from: the latent code at the neighbouring rows, the offset of ``z`` from that row
with a 2-band positional encoding, the output row spacing ("cell", LIIF), and the input value
linearly interpolated at ``z``. Because the decoder takes a continuous coordinate, the same
model renders factor 2, 2.7 or 8 (the engine passes arbitrary float positions).

Latent sampling: ``"ensemble"`` (LIIF local ensemble along z: decode with each of the two
neighbouring latent rows and blend by the opposite distance; the shipped checkpoint) or
``"bilinear"`` (one decode of the linearly interpolated latent, as the paper's Fig. 2; the
default for new trainings: same quality at equal training time, faster).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from ._axial_common import AxialMethod
from .learned_registry import LEARNED_INFOS

# New trainings use "bilinear": as good as "ensemble" at equal training time and ~1.4x faster
# to decode (docs/axial-sr.md); the shipped checkpoint records its own ("ensemble").
DEFAULT_ARCH = {"channels": 24, "blocks": 3, "hidden": 32, "layers": 3, "bands": 2,
                "sampling": "bilinear"}


class _ResBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(c, c, 3, padding=1))

    def forward(self, x):
        return x + 0.5 * self.body(x)


class NiivNet(nn.Module):
    """Encoder (EDSR without upsampling) + coordinate MLP decoder."""

    def __init__(self, channels=32, blocks=4, hidden=64, layers=3, bands=2, sampling="ensemble"):
        super().__init__()
        if sampling not in ("ensemble", "bilinear"):
            raise ValueError(f"sampling must be 'ensemble' or 'bilinear', got {sampling!r}")
        self.sampling = sampling
        self.bands = bands
        self.head = nn.Conv2d(1, channels, 3, padding=1)
        self.body = nn.Sequential(*[_ResBlock(channels) for _ in range(blocks)],
                                  nn.Conv2d(channels, channels, 3, padding=1))
        n_in = channels + 1 + 2 * bands + 1 + 1  # latent, rel, PE(rel), cell, value
        mlp = []
        for i in range(layers):
            mlp += [nn.Conv2d(n_in if i == 0 else hidden, hidden, 1), nn.ReLU(inplace=True)]
        mlp.append(nn.Conv2d(hidden, 1, 1))
        self.mlp = nn.Sequential(*mlp)
        nn.init.zeros_(mlp[-1].weight)  # start as plain linear interpolation
        nn.init.zeros_(mlp[-1].bias)
        #: y/x pixels that influence an output pixel (3x3 convs)
        self.receptive_halo = 2 * blocks + 2 + 2

    def encode(self, lr):
        # channels-last: the 3x3 convolutions on these wide, short planes run ~3x faster
        h = self.head((lr - 0.5).contiguous(memory_format=torch.channels_last))
        return h + self.body(h)

    def _rows_term(self, w_rel, bias, rel):
        """First MLP layer's contribution of a row's offset ``rel`` (P,) and its positional
        encoding (the same for every column): (P, hidden)."""
        feats = [rel]
        for k in range(self.bands):
            feats += [torch.sin(math.pi * 2 ** k * rel), torch.cos(math.pi * 2 ** k * rel)]
        return F.linear(torch.stack(feats, 1), w_rel, bias)

    def forward(self, lr, positions, cell):
        """(B, 1, n, W) -> (B, 1, P, W). Equal (to float rounding) to decoding every output
        pixel with the MLP from its concatenated features (latent, offset and its encoding,
        cell, value; tests/test_learned_speed.py writes that out) but factorised: the first
        MLP layer is linear, so its latent part is applied once per *input* row and then
        gathered (F x fewer rows), the row-offset part once per output row, and the MLP
        runs channels-last as matmuls."""
        b, _, n, w = lr.shape
        latent = self.encode(lr)
        convs = [m for m in self.mlp if isinstance(m, nn.Conv2d)]
        c, nb = latent.shape[1], 1 + 2 * self.bands
        w1 = convs[0].weight[:, :, 0, 0]
        w_lat, w_rel = w1[:, :c], w1[:, c:c + nb]
        bias = convs[0].bias + w1[:, c + nb] * float(cell)
        w_val = w1[:, c + nb + 1]
        g = F.linear(latent.permute(0, 2, 3, 1), w_lat)  # (B, n, W, hidden)
        pos = positions.to(lr.dtype)
        k0 = torch.clamp(torch.floor(pos), 0, max(n - 2, 0)).long()
        k1 = torch.clamp(k0 + 1, max=n - 1)
        t = pos - k0.to(pos.dtype)
        t4 = t.view(1, -1, 1, 1)
        value = (1 - t4[..., 0]) * lr[:, 0, k0] + t4[..., 0] * lr[:, 0, k1]  # (B, P, W)
        val = (value - 0.5).unsqueeze(-1)

        def first(gathered, rel):
            h = gathered.add_(self._rows_term(w_rel, bias, rel).view(1, -1, 1, w1.shape[0]))
            return h.addcmul_(val, w_val).relu_()

        def hidden(h):
            for conv in convs[1:-1]:
                h = F.linear(h, conv.weight[:, :, 0, 0], conv.bias).relu_()
            return h

        if self.sampling == "bilinear":
            h = hidden(first(torch.lerp(g[:, k0], g[:, k1], t4), t))
        else:  # the last layer is affine and the blend weights sum to 1: blend before it
            t_ = t4.clamp(0, 1)
            h = torch.lerp(hidden(first(g[:, k0], t)), hidden(first(g[:, k1], t - 1)), t_)
        out = F.linear(h, convs[-1].weight[:, :, 0, 0], convs[-1].bias)[..., 0]
        return (value + out).unsqueeze(1)


class Niiv(AxialMethod):
    info = LEARNED_INFOS["niiv"]  # one copy, torch-free: methods/learned_registry.py
    #: training defaults (zup train niiv): patch shapes of the shipped checkpoint
    train_defaults = {"lr": 2e-4, "lr_init": 1e-4, "batch": 16, "crop": 48, "rows": 12}
    #: weight of the projected distribution loss added to L1 in training (0: L1 only)
    pdl_weight = 0.0

    @classmethod
    def build_model(cls, arch: dict):
        a = dict(DEFAULT_ARCH)
        a.update(arch or {})
        return NiivNet(**a)
