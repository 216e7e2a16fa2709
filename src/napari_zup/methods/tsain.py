"""``tsain``: temporal spatial-adaptive interpolation with deformable refinement (seed
tsain-deformable.txt, Wang et al.), sized for CPUs and conditioned on ``t``.

Architecture (sizes in :data:`DEFAULT_ARCH`):

1. **Feature extraction**: a full-resolution stem, then a stride-2 convolution and residual
   blocks give the working features at 1/2 resolution, and a pyramid at 1/4 and 1/8.
2. **Temporal interpolation by deformable alignment (PCD-style pyramid)**: for each knot X, a
   modulated deformable convolution samples X's features at offsets predicted from
   ``[F_X, F_other, t_X]`` (``t_X`` = distance of the output slice from X), coarse to fine, the
   offsets of a coarser level upsampled into the next one (``Theta_0 = p([F_0, F_2])``,
   ``F_0->1 = DConv(F_0, Theta_0)``, eqs. 2-3); both knots share the weights. The two temporal
   features are fused by a convolution (eq. 4).
3. **Residual spatial-adaptive blocks** (eq. 7): ``x + Conv(Act(DConv(x, g(x))))``.
4. **Deformable refinement blocks with feedback** (eqs. 8-12): the knots' features are aligned
   again by deformable convolutions whose offsets are predicted from ``[F_X, F_1]`` (the current
   intermediate feature), and fused back into ``F_1``.
5. **Reconstruction**: residual blocks and a pixel-shuffle to full resolution; the head predicts
   a blend mask (around the linear weight 1 - t) and a residual on top of the two knot images
   backward-warped by their mean deformable offsets (the pixel loss thereby reaches the
   alignment offsets directly, which makes short CPU training converge faster).

Modulated deformable convolution is :func:`~napari_zup.methods._torch_common.modulated_deform_conv`
(grid_sample; no torchvision). The exposed flow is the mean temporal-alignment offset of knot 2
minus that of knot 0 (a displacement field first knot -> second knot, in pixels).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._torch_common import (LearnedPairMethod, ModulatedDeformConv, backward_warp,
                            bound_to_local_range, upsample_flow)
from .learned_registry import LEARNED_INFOS

DEFAULT_ARCH = {
    "c": 16,            # working channels (1/2 resolution and coarser)
    "c_full": 8,        # full-resolution stem channels
    "n_extract": 1,     # residual blocks in feature extraction (paper: 5)
    "n_rsab": 1,        # residual spatial-adaptive blocks
    "n_drb": 1,         # stacked deformable refinement blocks (paper: 3)
    "n_recon": 2,       # residual blocks in reconstruction (paper: 40)
    "max_offset": 16.0,  # offsets bounded by tanh, in pixels of the level they act on
}

K = 9  # 3x3 kernel points


def _conv(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, 3, stride, 1)


def _act():
    return nn.LeakyReLU(0.1, inplace=True)


class _ResBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.body = nn.Sequential(_conv(c, c), _act(), _conv(c, c))

    def forward(self, x):
        return x + self.body(x)


class _OffsetHead(nn.Module):
    """Predicts (offsets (B, 2K, H, W) in pixels, modulation (B, K, H, W)) from a stack."""

    def __init__(self, cin, c, max_offset):
        super().__init__()
        self.net = nn.Sequential(_conv(cin, c), _act(), _conv(c, c), _act(),
                                 _conv(c, 3 * K))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)
        self.max_offset = max_offset

    def forward(self, x, base_offset=None):
        o = self.net(x)
        off = self.max_offset * torch.tanh(o[:, : 2 * K] / self.max_offset)
        if base_offset is not None:
            off = off + base_offset
        mask = 2.0 * torch.sigmoid(o[:, 2 * K:])
        return off, mask


class _RSAB(nn.Module):
    def __init__(self, c, max_offset):
        super().__init__()
        self.offset = _OffsetHead(c, c, max_offset)
        self.dconv = ModulatedDeformConv(c, c)
        self.conv = _conv(c, c)
        self.act = _act()

    def forward(self, x):
        off, mask = self.offset(x)
        return x + self.conv(self.act(self.dconv(x, off, mask)))


class _DRB(nn.Module):
    """Deformable refinement block: align both knots' features to the current F1, feed back."""

    def __init__(self, c, max_offset):
        super().__init__()
        self.offset = _OffsetHead(2 * c + 1, c, max_offset)
        self.dconv = ModulatedDeformConv(c, c)
        self.fuse = nn.Sequential(_conv(3 * c, c), _act(), _conv(c, c))

    def forward(self, f0, f1, f2, t0, t2):
        o0, m0 = self.offset(torch.cat([f0, f1, t0], 1))
        o2, m2 = self.offset(torch.cat([f2, f1, t2], 1))
        a0 = self.dconv(f0, o0, m0)
        a2 = self.dconv(f2, o2, m2)
        return f1 + self.fuse(torch.cat([a0, f1, a2], 1))


class TsainNet(nn.Module):
    def __init__(self, c=24, c_full=12, n_extract=1, n_rsab=2, n_drb=2, n_recon=2,
                 max_offset=16.0):
        super().__init__()
        self.stem = nn.Sequential(_conv(1, c_full), _act())
        self.down1 = nn.Sequential(_conv(c_full, c, 2), _act(),
                                   *[_ResBlock(c) for _ in range(n_extract)])
        self.down2 = nn.Sequential(_conv(c, c, 2), _act(), _conv(c, c), _act())
        self.down3 = nn.Sequential(_conv(c, c, 2), _act(), _conv(c, c), _act())
        # PCD temporal alignment, levels 3 (1/8) -> 1 (1/2); input [F_X, F_other, t_X, up offs]
        self.pcd_offset = nn.ModuleList(
            [_OffsetHead(2 * c + 1 + (2 * K if lvl < 3 else 0), c, max_offset)
             for lvl in (1, 2, 3)])
        self.pcd_dconv = nn.ModuleList([ModulatedDeformConv(c, c) for _ in range(3)])
        self.pcd_fuse = nn.ModuleList([_conv(2 * c, c) for _ in range(2)])
        self.blend = nn.Sequential(_conv(2 * c + 1, c), _act())
        self.rsab = nn.ModuleList([_RSAB(c, max_offset) for _ in range(n_rsab)])
        self.drb = nn.ModuleList([_DRB(c, max_offset) for _ in range(n_drb)])
        self.recon = nn.Sequential(*[_ResBlock(c) for _ in range(n_recon)],
                                   _conv(c, 4 * c_full), nn.PixelShuffle(2), _act())
        self.out = nn.Sequential(_conv(c_full * 3 + 2, c_full), _act(), _conv(c_full, 2))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def encode(self, img):
        f0 = self.stem(img)
        f1 = self.down1(f0)
        f2 = self.down2(f1)
        f3 = self.down3(f2)
        return img, [f0, f1, f2, f3]

    def _align(self, fx, fo, tx):
        """PCD: align knot X's pyramid to the output slice; returns (feature, level-1 offsets)."""
        off = feat = None
        for lvl in (3, 2, 1):
            tmap = tx.expand(-1, 1, *fx[lvl].shape[-2:])
            parts = [fx[lvl], fo[lvl], tmap]
            if off is not None:
                up = F.interpolate(off, size=fx[lvl].shape[-2:], mode="bilinear",
                                   align_corners=False) * 2.0
                parts.append(up)
            off, mask = self.pcd_offset[lvl - 1](torch.cat(parts, 1),
                                                 None if lvl == 3 else up)
            aligned = self.pcd_dconv[lvl - 1](fx[lvl], off, mask)
            if feat is not None:
                featu = F.interpolate(feat, size=aligned.shape[-2:], mode="bilinear",
                                      align_corners=False)
                aligned = self.pcd_fuse[lvl - 1](torch.cat([aligned, featu], 1))
            feat = F.leaky_relu(aligned, 0.1)
        return feat, off

    def decode(self, enc_a, enc_b, a, b, t):
        _, fa = enc_a
        _, fb = enc_b
        n = t.shape[0]
        if fa[0].shape[0] != n:
            fa = [f.expand(n, -1, -1, -1) for f in fa]
            fb = [f.expand(n, -1, -1, -1) for f in fb]
            a, b = a.expand(n, -1, -1, -1), b.expand(n, -1, -1, -1)
        t4 = t.view(-1, 1, 1, 1).to(fa[0].dtype)
        ta, tb = t4, 1.0 - t4
        xa, off_a = self._align(fa, fb, ta)
        xb, off_b = self._align(fb, fa, tb)
        h1 = fa[1].shape[-2:]
        f1 = self.blend(torch.cat([xa, xb, t4.expand(-1, 1, *h1)], 1))
        for blk in self.rsab:
            f1 = blk(f1)
        for blk in self.drb:
            f1 = blk(fa[1], f1, fb[1], ta.expand(-1, 1, *h1), tb.expand(-1, 1, *h1))
        up = self.recon(f1)
        # mean deformable offset over the kernel points = displacement output slice -> knot
        # (dx, dy); the knots warped by it give an aligned blend that the head corrects.
        ma = upsample_flow(off_a.view(n, K, 2, *h1).mean(1), a.shape[-2:])
        mb = upsample_flow(off_b.view(n, K, 2, *h1).mean(1), a.shape[-2:])
        wa, wb = backward_warp(a, ma), backward_warp(b, mb)
        head = self.out(torch.cat([up, fa[0], fb[0], wa, wb], 1))
        tc = t4.clamp(1e-3, 1 - 1e-3)
        m = torch.sigmoid(torch.log((1 - tc) / tc) + head[:, :1])
        out = m * wa + (1 - m) * wb + head[:, 1:2]
        out = bound_to_local_range(out, (wa, wb))  # anchored: flat stays flat
        flow = mb - ma
        return out, flow

    def forward(self, a, b, t):
        return self.decode(self.encode(a), self.encode(b), a, b, t)


def build_tsain(arch: dict) -> TsainNet:
    arch = {**DEFAULT_ARCH, **arch}
    return TsainNet(arch["c"], arch["c_full"], arch["n_extract"], arch["n_rsab"],
                    arch["n_drb"], arch["n_recon"], arch["max_offset"])


class Tsain(LearnedPairMethod):
    """TSAIN-style deformable interpolator; ``checkpoint=None`` uses the bundled weights."""

    info = LEARNED_INFOS["tsain"]  # one copy, torch-free: methods/learned_registry.py
    method_name = "tsain"
    pad_multiple = 8
    receptive_halo = 64

    @classmethod
    def build_model(cls, arch):
        return build_tsain(arch)
