"""Torch helpers shared by the learned pair interpolators (``film``, ``tsain``).

- :func:`backward_warp`: sample an image at ``p + flow(p)`` with ``grid_sample`` (the one warp).
- :func:`pad_to_multiple` / :func:`crop_to`: any input size in, same size out.
- :func:`modulated_deform_conv`: DCNv2 written with ``grid_sample`` (torchvision is not a
  dependency), one code path on every device.
- :class:`LearnedPairMethod`: a :class:`~napari_zup.methods.base.Method` that loads a checkpoint
  once, runs on the chosen device, maps intensities by ``value_range`` to [0, 1] and back, and
  returns slices and flows.

Every model used through :class:`LearnedPairMethod` has the interface::

    feats = model.encode(img)                       # img (B, 1, H, W) in [0, 1], H, W % multiple
    out, flow = model.decode(feats_a, feats_b, a, b, t)   # t (B,) in (0, 1)

``out`` (B, 1, H, W) in [0, 1] and ``flow`` (B, 2, H, W): (dx, dy) in pixels from the first knot
to the second one at the output slice's location.
"""
from __future__ import annotations

import math
from abc import abstractmethod
from typing import ClassVar, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoints import load_model
from ..devices import select_device
from ..intensity import IntensityMap
from .base import Method, RenderResult, to_dtype

_GRIDS: dict = {}


def pixel_grid(h: int, w: int, device, dtype=torch.float32) -> torch.Tensor:
    """(1, 2, H, W) pixel coordinates (x, y), cached per size and device."""
    key = (h, w, str(device), dtype)
    g = _GRIDS.get(key)
    if g is None:
        ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=dtype),
                                torch.arange(w, device=device, dtype=dtype), indexing="ij")
        g = torch.stack([xs, ys])[None]
        if len(_GRIDS) > 64:
            _GRIDS.clear()
        _GRIDS[key] = g
    return g


def _normalise(coords: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, 2, H', W') pixel coords -> (B, H', W', 2) grid_sample coordinates (align_corners)."""
    x = coords[:, 0] * (2.0 / max(w - 1, 1)) - 1.0
    y = coords[:, 1] * (2.0 / max(h - 1, 1)) - 1.0
    return torch.stack([x, y], dim=-1)


def backward_warp(img: torch.Tensor, flow: torch.Tensor, padding_mode: str = "border"):
    """``out(p) = img(p + flow(p))``, bilinear; ``flow`` (B, 2, H, W) as (dx, dy) pixels."""
    b, _, h, w = img.shape
    coords = pixel_grid(h, w, img.device, flow.dtype) + flow
    return F.grid_sample(img, _normalise(coords, h, w).to(img.dtype), mode="bilinear",
                         padding_mode=padding_mode, align_corners=True)


def upsample_flow(flow: torch.Tensor, size) -> torch.Tensor:
    """Bilinear upsampling of a flow field to ``size`` (H, W), rescaling its vectors."""
    h0, w0 = flow.shape[-2:]
    up = F.interpolate(flow, size=size, mode="bilinear", align_corners=False)
    sx, sy = size[1] / w0, size[0] / h0
    return torch.cat([up[:, :1] * sx, up[:, 1:] * sy], 1)


def pad_to_multiple(x: torch.Tensor, multiple: int, min_size: int = 0):
    """Pad the last two dims at the bottom/right to a multiple (reflect where possible,
    otherwise replicate); returns ``(padded, (H, W))``."""
    h, w = x.shape[-2:]
    hh = max(math.ceil(h / multiple) * multiple, min_size)
    ww = max(math.ceil(w / multiple) * multiple, min_size)
    ph, pw = hh - h, ww - w
    if ph or pw:
        mode = "reflect" if (ph < h and pw < w) else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, (h, w)


def crop_to(x: torch.Tensor, size) -> torch.Tensor:
    return x[..., : size[0], : size[1]]


def bound_to_local_range(out: torch.Tensor, refs: Sequence[torch.Tensor], radius=2):
    """Clamp ``out`` to the range of ``refs`` (the images it is interpolated from) within a
    ``(2 * radius + 1)``-pixel window around each pixel; ``radius`` an int or ``(ry, rx)``.

    This anchors a learned output to its inputs: a model's residual (biases, zero-padded
    borders) cannot invent intensities that none of its inputs has nearby, so a flat input
    stays exactly flat (at any grey level, any dtype), while on real data the window is wide
    enough that sharpening and aligned structure pass unchanged.
    """
    ry, rx = (radius, radius) if isinstance(radius, int) else radius
    k, p = (2 * ry + 1, 2 * rx + 1), (ry, rx)
    hi = lo = None
    for r in refs:
        h = F.max_pool2d(r, k, 1, p)
        l = -F.max_pool2d(-r, k, 1, p)
        hi = h if hi is None else torch.maximum(hi, h)
        lo = l if lo is None else torch.minimum(lo, l)
    return torch.minimum(torch.maximum(out, lo.to(out.dtype)), hi.to(out.dtype))


# -- modulated deformable convolution (DCNv2) via grid_sample ---------------------------------

def modulated_deform_conv(x, offset, mask, weight, bias=None, dilation: int = 1):
    """Modulated deformable convolution, stride 1, 'same' size.

    ``x`` (B, C, H, W); ``weight`` (Cout, C, k, k); ``offset`` (B, 2*k*k, H, W) as (dx, dy) per
    kernel point (row-major over the kernel); ``mask`` (B, k*k, H, W) modulation. Every kernel
    point is sampled with one bilinear ``grid_sample`` call (zeros outside), modulated, and the
    samples are combined with a 1x1 convolution: ``y(p) = sum_k w_k m_k x(p + p_k + dp_k)``.
    """
    b, c, h, w = x.shape
    cout, _, kh, kw = weight.shape
    k = kh * kw
    ky, kx = torch.meshgrid(torch.arange(kh, device=x.device, dtype=offset.dtype) - (kh - 1) / 2,
                            torch.arange(kw, device=x.device, dtype=offset.dtype) - (kw - 1) / 2,
                            indexing="ij")
    kpts = torch.stack([kx.reshape(-1), ky.reshape(-1)], 1) * dilation  # (k, 2) as (x, y)
    base = pixel_grid(h, w, x.device, offset.dtype)  # (1, 2, H, W)
    off = offset.view(b, k, 2, h, w)
    coords = base[:, None] + kpts[None, :, :, None, None] + off  # (B, k, 2, H, W)
    coords = coords.permute(0, 2, 1, 3, 4).reshape(b, 2, k * h, w)
    grid = _normalise(coords, h, w).to(x.dtype)  # (B, k*H, W, 2)
    samples = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    # (B, C, k*H, W) is laid out as (B, C*k, H*W) with c major, kernel point minor: exactly the
    # order of weight.reshape(Cout, C*k), so the sum over (c, k) is one batched matmul.
    samples = samples.view(b, c, k, h * w) * mask.view(b, 1, k, h * w)
    y = torch.matmul(weight.reshape(cout, c * k).to(samples.dtype), samples.view(b, c * k, h * w))
    if bias is not None:
        y = y + bias.view(1, cout, 1).to(y.dtype)
    return y.view(b, cout, h, w)


class ModulatedDeformConv(nn.Module):
    """A 3x3 modulated deformable convolution whose offsets and masks are given by the caller."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, dilation: int = 1):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cout, cin, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(cout))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.kernel, self.dilation = kernel, dilation

    def forward(self, x, offset, mask):
        return modulated_deform_conv(x, offset, mask, self.weight, self.bias, self.dilation)


# -- the Method wrapper -----------------------------------------------------------------------

#: Extra tile context of the texture option (its FFT band split is per tile).
TEXTURE_HALO = 16


def high_band(image: np.ndarray, cutoff: float = 0.5) -> np.ndarray:
    """The part of ``image`` above ``cutoff`` x Nyquist (the band of the texture ratio,
    docs/evaluation.md), by FFT."""
    spec = np.fft.rfft2(image)
    fy = np.fft.fftfreq(image.shape[0])[:, None]
    fx = np.fft.rfftfreq(image.shape[1])[None, :]
    spec[np.sqrt(fy ** 2 + fx ** 2) <= cutoff * 0.5] = 0
    return np.fft.irfft2(spec, s=image.shape)


def add_knot_texture(pred: np.ndarray, source: np.ndarray, ratio: float, value_range,
                     knot: np.ndarray | None = None):
    """``pred`` (float, data units) with the high band of ``source`` added, scaled so that the
    result's high-band energy is ``ratio`` x that of ``knot`` (default: ``source``), the
    nearest knot (the texture ratio of docs/evaluation.md). ``source`` is real section
    texture, not noise: the nearest knot, or better (film) both knots warped to the slice by
    the model's flows and blended by its weights, whose fine structure lies where the slice's
    does (docs/benchmarks.md 14.8: +0.03 to +0.14 dB over the unwarped knot) — at a PSNR cost
    measured there. A flat source adds nothing."""
    p = np.asarray(pred, np.float64)
    kh = high_band(np.asarray(source, np.float64))
    ph = high_band(p)
    a2, b, c = float((kh * kh).sum()), float(2 * (ph * kh).sum()), float((ph * ph).sum())
    if a2 <= 0:
        return pred
    ref = a2 if knot is None else float((high_band(np.asarray(knot, np.float64)) ** 2).sum())
    c -= ratio * ref           # |ph + g kh|^2 = ratio |knot_h|^2, the larger root g >= 0
    disc = b * b - 4 * a2 * c
    g = max(0.0, (-b + math.sqrt(max(disc, 0.0))) / (2 * a2))
    return np.clip(p + g * kh, value_range[0], value_range[1])


class LearnedPairMethod(Method):
    """Pair interpolator backed by a torch model loaded from a checkpoint.

    Subclasses set ``info``, ``method_name``, ``build_model(arch) -> nn.Module`` and
    ``pad_multiple``/``receptive_halo``.
    """

    z_context: ClassVar[int] = 0
    copies_knots: ClassVar[bool] = True
    method_name: ClassVar[str] = ""
    pad_multiple: ClassVar[int] = 8
    receptive_halo: ClassVar[int] = 64

    @classmethod
    @abstractmethod
    def build_model(cls, arch: dict) -> nn.Module:
        """The torch module for architecture ``arch`` (the checkpoint's metadata)."""

    def __init__(self, checkpoint=None, device: str = "auto", texture: float = 0.0,
                 normalize: bool = True, input_range=None):
        texture = float(texture)
        if not 0.0 <= texture <= 2.0:
            raise ValueError(f"texture is a target texture ratio in 0-2 (0 = off, e.g. 0.8), "
                             f"got {texture}")
        #: target texture ratio (0 = off, the most faithful output): see add_knot_texture
        self.texture = texture
        self.device = select_device(device)
        model, self.metadata, self.checkpoint = load_model(self.method_name, self.build_model,
                                                           checkpoint)
        self.model = model.to(self.device)
        self.normalization = IntensityMap(self.metadata, normalize, input_range)
        #: a 4-knot model also sees knots z - 1 and z + 2 (clamped at the volume ends)
        self.knots = int(getattr(self.model, "knots", 2))
        self.z_context = 1 if self.knots == 4 else 0
        self.aligned_texture = bool(getattr(self.model, "reports_aligned", False))

    def prepare(self, volume) -> None:
        self.normalization.fit(volume)

    def notes(self) -> list[str]:
        return self.normalization.notes()

    def halo(self) -> int:
        return self.receptive_halo + (TEXTURE_HALO if self.texture else 0)

    @torch.no_grad()
    def render(self, block, positions: Sequence[float], *, value_range, want_flows=False):
        n = len(block)
        lo, hi = self.normalization.range(value_range)
        span = (hi - lo) or 1.0
        out = np.empty((len(positions),) + block.shape[1:], block.dtype)
        flows = [None] * len(positions) if want_flows else None
        by_interval: dict[int, list[tuple[int, float]]] = {}
        for j, p in enumerate(positions):
            k = min(max(int(math.floor(p)), 0), n - 2)
            by_interval.setdefault(k, []).append((j, float(p) - k))
        dev = self.device
        cache: dict[int, tuple] = {}  # knot index -> (padded image, encoding), once per call
        size = None

        def to_data(x):  # a model output (1, 1, H', W') -> the slice in data units
            return crop_to(x, size)[0, 0].float().cpu().numpy() * span + lo

        def knot(i):
            nonlocal size
            i = min(max(i, 0), n - 1)  # clamped at the block's (= the volume's) ends
            if i not in cache:
                img = torch.from_numpy((block[i].astype(np.float32) - lo) / span)
                img, size = pad_to_multiple(img[None, None].to(dev), self.pad_multiple,
                                            self.pad_multiple * 2)
                cache[i] = (img, self.model.encode(img))
            return cache[i]

        for k, items in sorted(by_interval.items()):
            (a, fa), (b, fb) = knot(k), knot(k + 1)
            outer = None if self.knots == 2 else (knot(k - 1)[1], knot(k + 2)[1])
            for i in [i for i in cache if i < k - 1]:  # intervals come in order
                del cache[i]
            for j, t in items:
                if t <= 0.0:
                    res, fl = a, torch.zeros_like(a).repeat(1, 2, 1, 1)
                elif t >= 1.0:
                    res, fl = b, torch.zeros_like(a).repeat(1, 2, 1, 1)
                else:
                    # film reports its flow-aligned knots (the texture source) on request
                    aligned = [] if self.texture and self.aligned_texture else None
                    kw = {} if aligned is None else {"aligned": aligned}
                    tt = torch.full((1,), t, device=dev)
                    res, fl = (self.model.decode(fa, fb, a, b, tt, **kw) if outer is None
                               else self.model.decode(fa, fb, a, b, tt, outer, **kw))
                img = to_data(res)
                if self.texture and 0.0 < t < 1.0:
                    near = block[k] if t <= 0.5 else block[k + 1]
                    source = to_data(aligned[0]) if aligned else near  # film: aligned knots
                    img = add_knot_texture(img, source, self.texture, value_range, near)
                out[j] = to_dtype(img, block.dtype)
                if want_flows:
                    flows[j] = np.ascontiguousarray(
                        crop_to(fl, size)[0].float().cpu().numpy().transpose(1, 2, 0))
        return RenderResult(out, flows)

    def close(self) -> None:
        self.model = None
