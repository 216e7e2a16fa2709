"""a2i: axial-to-isotropic restoration with a U-shaped vision transformer
(a2i-3dem-vit.txt).

The axial plane (z rows, x or y columns) is first interpolated along z to the output rows
(Catmull-Rom cubic, outer rows clamped), then restored by a hierarchical U-shaped
encoder-decoder whose blocks are window multi-head self-attention (W-MSA, with a learned
relative position bias) followed by the gated locally-enhanced feed-forward network (GLEN:
two parallel linear paths, a depth-wise 3x3 convolution, and their element-wise product).
The low-level features are added back before the output projection, and the network predicts
a residual over the interpolated plane. Trained with L1 + 0.01 x projected distribution loss
(eq. 5) on lateral patches degraded along one axis (``zup train a2i``).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._axial_common import AxialMethod, query_grid
from .learned_registry import LEARNED_INFOS

DEFAULT_ARCH = {"channels": 12, "depths": [1, 1, 1], "heads": [1, 2, 3], "window": 8,
                "ffn_ratio": 2.0}


def cubic_rows(lr: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Catmull-Rom interpolation of ``lr`` (B, C, n, W) along rows at ``positions`` (P,)
    (outer rows clamped, as the classical ``cubic`` method)."""
    n = lr.shape[2]
    pos = positions.to(lr.dtype)
    k = torch.clamp(torch.floor(pos), 0, max(n - 2, 0)).long()
    t = (pos - k.to(pos.dtype)).view(1, 1, -1, 1)
    t2, t3 = t * t, t * t * t
    w = (0.5 * (-t3 + 2 * t2 - t), 0.5 * (3 * t3 - 5 * t2 + 2),
         0.5 * (-3 * t3 + 4 * t2 + t), 0.5 * (t3 - t2))
    out = 0
    for d, wd in zip((-1, 0, 1, 2), w):
        out = out + wd * lr[:, :, torch.clamp(k + d, 0, n - 1)]
    return out


class WindowAttention(nn.Module):
    """Multi-head self-attention inside non-overlapping M x M windows (W-MSA)."""

    def __init__(self, dim, heads, window):
        super().__init__()
        self.heads, self.window = heads, window
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        nn.init.trunc_normal_(self.bias_table, std=0.02)
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window),
                                            indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + window - 1
        self.register_buffer("bias_index", rel[..., 0] * (2 * window - 1) + rel[..., 1],
                             persistent=False)

    def forward(self, x):  # x: (B, H, W, C), H and W multiples of window
        b, h, w, c = x.shape
        m = self.window
        x = x.view(b, h // m, m, w // m, m, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, m * m, c)
        qkv = self.qkv(x).view(x.shape[0], m * m, 3, self.heads, c // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        bias = self.bias_table[self.bias_index].permute(2, 0, 1)[None].to(q.dtype)
        # softmax(q k^T * scale + bias) v, fused (~5x faster on CPU than written out)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        y = self.proj(y.transpose(1, 2).reshape(-1, m * m, c))
        return y.view(b, h // m, w // m, m, m, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


class GLEN(nn.Module):
    """Gated locally-enhanced feed-forward: linear -> depth-wise 3x3 -> GELU(a) * b -> linear."""

    def __init__(self, dim, ratio):
        super().__init__()
        hid = int(dim * ratio)
        self.fc1 = nn.Linear(dim, 2 * hid)
        self.dw = nn.Conv2d(2 * hid, 2 * hid, 3, padding=1, groups=2 * hid)
        self.fc2 = nn.Linear(hid, dim)

    def forward(self, x):  # (B, H, W, C)
        y = self.fc1(x).permute(0, 3, 1, 2)
        a, g = self.dw(y).permute(0, 2, 3, 1).chunk(2, dim=-1)
        return self.fc2(F.gelu(a) * g)


class ViTBlock(nn.Module):
    def __init__(self, dim, heads, window, ratio):
        super().__init__()
        self.n1, self.n2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads, window)
        self.ffn = GLEN(dim, ratio)

    def forward(self, x):  # (B, C, H, W)
        x = x.permute(0, 2, 3, 1)
        x = x + self.attn(self.n1(x))
        x = x + self.ffn(self.n2(x))
        return x.permute(0, 3, 1, 2)


def _stage(dim, depth, heads, window, ratio):
    return nn.Sequential(*[ViTBlock(dim, heads, window, ratio) for _ in range(depth)])


class A2INet(nn.Module):
    """Two-level U-shaped W-MSA/GLEN transformer on the cubic-interpolated axial plane."""

    def __init__(self, channels=16, depths=(1, 1, 2), heads=(1, 2, 4), window=8, ffn_ratio=2.0):
        super().__init__()
        c, m = channels, window
        self.window = window
        # input: the interpolated plane, each row's distance to the knot below it (fraction
        # of a section) and the output row spacing; without them a translation-equivariant
        # network cannot tell measured rows from interpolated ones.
        self.head = nn.Conv2d(3, c, 3, padding=1)
        self.enc1 = _stage(c, depths[0], heads[0], m, ffn_ratio)
        self.down1 = nn.Conv2d(c, 2 * c, 4, stride=2, padding=1)
        self.enc2 = _stage(2 * c, depths[1], heads[1], m, ffn_ratio)
        self.down2 = nn.Conv2d(2 * c, 4 * c, 4, stride=2, padding=1)
        self.bottleneck = _stage(4 * c, depths[2], heads[2], m, ffn_ratio)
        self.up2 = nn.ConvTranspose2d(4 * c, 2 * c, 2, stride=2)
        self.fuse2 = nn.Conv2d(4 * c, 2 * c, 1)
        self.dec2 = _stage(2 * c, depths[1], heads[1], m, ffn_ratio)
        self.up1 = nn.ConvTranspose2d(2 * c, c, 2, stride=2)
        self.fuse1 = nn.Conv2d(2 * c, c, 1)
        self.dec1 = _stage(c, depths[0], heads[0], m, ffn_ratio)
        self.proj = nn.Conv2d(c, 1, 3, padding=1)
        nn.init.zeros_(self.proj.weight)  # start as plain cubic interpolation
        nn.init.zeros_(self.proj.bias)
        #: windows of 4M pixels at the bottleneck: context a tile needs on each side
        self.receptive_halo = 4 * window

    def restore(self, x, frac, cell):
        """Restore an interpolated plane batch ``x`` (B, 1, H, W) in [0, 1]; ``frac`` (H,)
        is each row's fractional position between knots, ``cell`` the row spacing."""
        h, w = x.shape[-2:]
        mult = 4 * self.window
        ph, pw = (-h) % mult, (-w) % mult
        inp = torch.cat([x - 0.5, frac.view(1, 1, -1, 1).expand_as(x),
                         torch.full_like(x, float(cell))], 1)
        xp = F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x
        inp = F.pad(inp, (0, pw, 0, ph), mode="replicate") if ph or pw else inp
        # channels-last throughout: the blocks work on (B, H, W, C) views without copies
        # and the convolutions run ~3x faster on CPU
        inp = inp.contiguous(memory_format=torch.channels_last)
        f0 = self.head(inp)
        s1 = self.enc1(f0)
        s2 = self.enc2(self.down1(s1))
        b = self.bottleneck(self.down2(s2))
        d2 = self.dec2(self.fuse2(torch.cat([self.up2(b), s2], 1)))
        d1 = self.dec1(self.fuse1(torch.cat([self.up1(d2), s1], 1)))
        return (xp + self.proj(d1 + f0))[..., :h, :w]

    def forward(self, lr, positions, cell=1.0):
        pos = positions.to(lr.dtype)
        frac = pos - torch.floor(pos)
        return self.restore(cubic_rows(lr, positions), frac, cell)


class A2I(AxialMethod):
    info = LEARNED_INFOS["a2i"]  # one copy, torch-free: methods/learned_registry.py
    #: training defaults (zup train a2i): short, wide patches for the U-Net
    train_defaults = {"lr": 4e-4, "lr_init": 1e-4, "batch": 8, "crop": 64, "rows": 8}
    #: weight of the projected distribution loss added to L1 (a2i-3dem-vit.txt)
    pdl_weight = 0.01
    batch_planes = 16
    #: on the CPU 2 planes per pass: x1.36 over 16 (the activations stay in cache), the
    #: same output (docs/benchmarks.md section 16)
    cpu_batch_planes = 2
    cpu_parallel_orientations = True

    @classmethod
    def build_model(cls, arch: dict):
        a = dict(DEFAULT_ARCH)
        a.update(arch or {})
        return A2INet(**a)

    def restore_planes(self, planes, positions, cell):
        # The transformer works on a regular image: render the whole uniform grid of output
        # rows over the block, then keep the requested rows.
        grid, idx, _ = query_grid(positions, planes.shape[1])
        return super().restore_planes(planes, grid, cell)[:, idx]
