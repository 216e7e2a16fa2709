"""The fast inference paths of the axial restorers equal a straightforward reference.

niiv's factorised decoder and a2i's fused attention are checked against the computation
written out the plain way (the paper's formulation) with the same weights, on a real crop
(the shipped checkpoints, the ssTEM VNC stack) and on small random models at several
factors. Tolerance: max |difference| <= 1e-4 on [0, 1] intensities (float32 rounding; under
0.03 grey levels of uint8). No timings here: benchmarks/bench_learned.py measures speed.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_zup.engine import reconstruct  # noqa: E402
from napari_zup.methods._axial_common import query_grid, xz_planes, yz_planes  # noqa: E402
from napari_zup.methods.base import create_method  # noqa: E402

from ._data import VNC, need  # noqa: E402

TOL = 1e-4


def niiv_reference(model, lr, positions, cell):
    """niiv as written in the paper: every output pixel decoded by the MLP from its
    concatenated features (latent at the neighbouring rows, offset + encoding, cell, value)."""
    b, _, n, w = lr.shape
    latent = model.head(lr - 0.5)
    latent = latent + model.body(latent)
    pos = positions.to(lr.dtype)
    k0 = torch.clamp(torch.floor(pos), 0, max(n - 2, 0)).long()
    k1 = torch.clamp(k0 + 1, max=n - 1)
    t = (pos - k0.to(pos.dtype)).view(1, 1, -1, 1)
    value = (1 - t) * lr[:, :, k0] + t * lr[:, :, k1]
    shape = (b, 1, len(pos), w)

    def decode(lat, rel):
        feats = [lat, rel]
        for k in range(model.bands):
            feats += [torch.sin(math.pi * 2 ** k * rel), torch.cos(math.pi * 2 ** k * rel)]
        feats += [torch.full_like(rel, float(cell)), value - 0.5]
        return model.mlp(torch.cat(feats, 1))

    if model.sampling == "bilinear":
        out = decode((1 - t) * latent[:, :, k0] + t * latent[:, :, k1], t.expand(shape))
    else:
        tc = t.clamp(0, 1)
        out = (1 - tc) * decode(latent[:, :, k0], t.expand(shape)) \
            + tc * decode(latent[:, :, k1], (t - 1).expand(shape))
    return value + out


def _crop(n=6, size=96):
    import tifffile
    vol = tifffile.imread(need(VNC))
    return vol[:n, 300:300 + size, 400:400 + size].astype(np.float32) / 255


def _positions(n, factor):
    return torch.tensor([k + j / factor for k in range(n - 1) for j in range(1, factor)],
                        dtype=torch.float32)


@pytest.mark.parametrize("orientation", ["xz", "yz"])
def test_niiv_shipped_fast_equals_reference_on_real_crop(orientation):
    m = create_method("niiv", device="cpu")
    x = _crop()
    planes = torch.from_numpy((xz_planes if orientation == "xz" else yz_planes)(x)[:, None])
    pos = _positions(x.shape[0], 4)
    with torch.inference_mode():
        fast = m.model(planes, pos, 0.25)
        ref = niiv_reference(m.model, planes, pos, 0.25)
    assert fast.shape == ref.shape == (planes.shape[0], 1, len(pos), planes.shape[-1])
    err = float((fast - ref).abs().max())
    assert err <= TOL, err
    # the model does restore something: not just the linear interpolation
    assert float((ref[:, 0] - planes[:, 0, :1].expand(-1, len(pos), -1)).abs().mean()) > 1e-3


@pytest.mark.parametrize("sampling", ["ensemble", "bilinear"])
@pytest.mark.parametrize("factor", [2, 3, 2.7, 8])
def test_niiv_fast_equals_reference_any_factor(sampling, factor):
    from napari_zup.methods.niiv import NiivNet
    torch.manual_seed(3)
    model = NiivNet(channels=8, blocks=1, hidden=16, layers=3, bands=2, sampling=sampling)
    for p in model.mlp.parameters():  # the last layer starts at zero: give it weights
        torch.nn.init.normal_(p, std=0.3)
    model.eval()
    x = torch.rand(3, 1, 7, 40)
    # query_grid's positions, including ones outside [0, n-1] are clamped as the reference
    grid, _, d = query_grid([k / factor for k in range(1, int(6 * factor))], 7)
    pos = torch.tensor(np.append(grid, [-0.2, 6.3]), dtype=torch.float32)
    with torch.inference_mode():
        fast, ref = model(x, pos, d), niiv_reference(model, x, pos, d)
    assert float((fast - ref).abs().max()) <= TOL


def _assert_same_gradients(model, reference, x, pos):
    """The fast forward and the written-out reference give the same parameter gradients."""
    grads = []
    for fn in (model, lambda *a: reference(model, *a)):
        model.zero_grad()
        fn(x, pos, 1 / 3).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-5, rtol=1e-4)


def test_niiv_fast_forward_trains():
    """The factorised decoder is used in training too: gradients equal the reference's."""
    from napari_zup.methods.niiv import NiivNet
    torch.manual_seed(4)
    model = NiivNet(channels=8, blocks=1, hidden=16, layers=2, sampling="ensemble")
    for p in model.mlp.parameters():
        torch.nn.init.normal_(p, std=0.3)
    _assert_same_gradients(model, niiv_reference, torch.rand(2, 1, 5, 24), _positions(5, 3))


def _manual_window_attention(self, x):
    """W-MSA written out: softmax(q k^T * scale + relative position bias) v per window."""
    b, h, w, c = x.shape
    m = self.window
    x = x.contiguous().view(b, h // m, m, w // m, m, c).permute(0, 1, 3, 2, 4, 5)
    x = x.reshape(-1, m * m, c)
    qkv = self.qkv(x).view(x.shape[0], m * m, 3, self.heads, c // self.heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    attn = (q * self.scale) @ k.transpose(-2, -1)
    attn = attn + self.bias_table[self.bias_index].permute(2, 0, 1)[None]
    y = (attn.softmax(-1) @ v).transpose(1, 2).reshape(-1, m * m, c)
    y = self.proj(y)
    return y.view(b, h // m, w // m, m, m, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


def a2i_reference(model, lr, positions, cell):
    from unittest import mock

    from napari_zup.methods.a2i import WindowAttention
    with mock.patch.object(WindowAttention, "forward", _manual_window_attention):
        return model(lr, positions, cell)


@pytest.mark.parametrize("orientation", ["xz", "yz"])
def test_a2i_shipped_fast_equals_reference_on_real_crop(orientation):
    m = create_method("a2i", device="cpu")
    x = _crop(n=5, size=72)
    planes = torch.from_numpy((xz_planes if orientation == "xz" else yz_planes)(x)[:, None])
    grid, _, d = query_grid(_positions(x.shape[0], 4).tolist(), x.shape[0])
    pos = torch.tensor(grid, dtype=torch.float32)
    with torch.inference_mode():
        fast = m.model(planes, pos, d)
        ref = a2i_reference(m.model, planes, pos, d)
    assert fast.shape == ref.shape == (planes.shape[0], 1, len(pos), planes.shape[-1])
    err = float((fast - ref).abs().max())
    assert err <= TOL, err
    # the transformer changes the cubic interpolation (so the comparison covers it)
    from napari_zup.methods.a2i import cubic_rows
    assert float((ref - cubic_rows(planes, pos)).abs().mean()) > 1e-3


def test_a2i_fast_attention_trains():
    """Gradients through the fused attention (incl. the position-bias table) equal the
    written-out attention's."""
    from napari_zup.methods.a2i import A2INet
    torch.manual_seed(5)
    model = A2INet(channels=8, depths=(1, 1, 1), heads=(1, 2, 2), window=4)
    torch.nn.init.normal_(model.proj.weight, std=0.1)
    _assert_same_gradients(model, a2i_reference, torch.rand(2, 1, 5, 20), _positions(5, 3))


@pytest.mark.parametrize("method", ["niiv", "a2i"])
@pytest.mark.parametrize("factor", [2, 3.5, 5])
def test_fast_paths_through_the_engine_any_factor(method, factor):
    """Whole reconstructions (shipped model, both orientations fused) match the references
    at integer and fractional factors, and knots stay copied."""
    from unittest import mock

    vol = (_crop(n=5, size=48) * 255).astype(np.uint8)
    m = create_method(method, device="cpu")
    fast = reconstruct(vol, m, factor)
    if method == "niiv":
        from napari_zup.methods.niiv import NiivNet
        patch = mock.patch.object(NiivNet, "forward", niiv_reference)
    else:
        from napari_zup.methods.a2i import WindowAttention
        patch = mock.patch.object(WindowAttention, "forward", _manual_window_attention)
    with patch:
        ref = reconstruct(vol, m, factor)
    assert fast.shape == ref.shape
    assert int(np.abs(fast.astype(int) - ref.astype(int)).max()) <= 1  # uint8 rounding
    if float(factor).is_integer():
        assert np.array_equal(fast[::int(factor)], vol)


# -- CPU batch size (issue #15 item 1) -------------------------------------------------

@pytest.mark.parametrize("method", ["niiv", "a2i"])
def test_cpu_batch_of_planes_does_not_change_the_output(method):
    vol = (_crop(n=5, size=64) * 255).astype(np.uint8)
    m = create_method(method, device="cpu")
    m.cpu_batch_planes = 2
    small = m.render(vol, [0.5, 1.25, 3.75], value_range=(0, 255)).slices
    m.cpu_batch_planes = 64
    whole = m.render(vol, [0.5, 1.25, 3.75], value_range=(0, 255)).slices
    assert np.array_equal(small, whole)


@pytest.mark.parametrize("method", ["niiv", "a2i"])
def test_both_orientations_in_parallel_equal_one_after_the_other(method, monkeypatch):
    """On the CPU a2i restores the xz and yz planes in two threads (torch's threads split
    between them, restored afterwards); the output is the sequential one's. (niiv does not
    by default: forced here to test the path.)"""
    from napari_zup.methods import _axial_common as ac

    splits = []
    real = ac.split_torch_threads

    def spy(parts):
        splits.append(parts)
        return real(parts)

    monkeypatch.setattr(ac, "split_torch_threads", spy)
    vol = (_crop(n=5, size=64) * 255).astype(np.uint8)
    m = create_method(method, device="cpu")
    assert m.cpu_parallel_orientations == (method == "a2i")
    m.cpu_parallel_orientations = True
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        parallel = m.render(vol, [0.5, 2.25], value_range=(0, 255)).slices
        assert splits == [2] and torch.get_num_threads() == 2 and ac._threads_users == 0
        torch.set_num_threads(1)  # one thread: the sequential path
        sequential = m.render(vol, [0.5, 2.25], value_range=(0, 255)).slices
        assert splits == [2]
    finally:
        torch.set_num_threads(before)
    assert np.array_equal(parallel, sequential)
