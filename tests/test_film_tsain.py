"""Learned pair interpolators ``film`` and ``tsain``: shapes, training, checkpoints, tiling,
and the shipped weights on real data (sample2, never seen in training)."""
import pickle

import numpy as np
import pytest
import tifffile
import torch

from napari_zup.checkpoints import CheckpointError, default_checkpoint, save_checkpoint
from napari_zup.engine import reconstruct
from napari_zup.evaluation import evaluate_method
from napari_zup.methods import create_method
from napari_zup.methods._torch_common import modulated_deform_conv
from napari_zup.methods.film import Film, build_film
from napari_zup.methods.tsain import Tsain, build_tsain
from napari_zup.training import train
from napari_zup.training.interp import TupleSampler, interpolation_loss

from ._data import SAMPLE2, need

TINY = {
    "film": ({"c0": 4, "c1": 6, "flow_width": [0, 8, 8, 8], "dec_width": [6, 8, 8, 8]},
             build_film, Film),
    "tsain": ({"c": 8, "c_full": 4, "n_recon": 1}, build_tsain, Tsain),
}


@pytest.fixture(scope="module", autouse=True)
def _threads(one_torch_thread):
    """Every test of this module on one torch thread (conftest.one_torch_thread)."""


def _tiny_checkpoint(path, method, seed=0):
    arch, build, _ = TINY[method]
    torch.manual_seed(seed)
    model = build(arch)
    with torch.no_grad():  # non-zero heads, so that outputs depend on every weight
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    save_checkpoint(path, model.state_dict(), {"method": method, "arch": arch})
    return model


def _blobs(n=3, h=37, w=53, seed=0, noise=3.0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    cx, cy = rng.uniform(10, w - 10), rng.uniform(10, h - 10)
    return np.stack([(128 + 100 * np.exp(-((xx - cx - 3 * z) ** 2 + (yy - cy) ** 2) / 30)
                      + rng.normal(0, noise, (h, w))).clip(0, 255).astype(np.uint8)
                     for z in range(n)])


@pytest.mark.parametrize("method", ["film", "tsain"])
def test_render_shapes_any_t_odd_sizes(tmp_path, method):
    _tiny_checkpoint(tmp_path / "m.safetensors", method)
    m = create_method(method, checkpoint=tmp_path / "m.safetensors", device="cpu")
    assert m.info.kind == "pair" and m.z_context == 0 and m.copies_knots and m.halo() > 0
    block = _blobs(3, 37, 53)
    pos = [0.125, 0.5, 0.77, 1.0 / 3.0, 1.9]
    res = m.render(block, pos, value_range=(0, 255), want_flows=True)
    assert res.slices.shape == (5, 37, 53) and res.slices.dtype == np.uint8
    assert len(res.flows) == 5 and all(f.shape == (37, 53, 2) for f in res.flows)
    assert all(np.isfinite(f).all() for f in res.flows)
    # float input keeps its dtype; value_range maps it to [0, 1] and back
    fl = m.render(block.astype(np.float32) / 255.0, [0.5], value_range=(0.0, 1.0))
    assert fl.slices.dtype == np.float32
    np.testing.assert_allclose(fl.slices[0] * 255.0, res.slices[1], atol=1.01)
    # a fractional factor through the engine: knots copied, right length
    out = reconstruct(block, m, 2.5)
    assert out.shape == (6, 37, 53)
    np.testing.assert_array_equal(out[0], block[0])
    np.testing.assert_array_equal(out[5], block[2])


def test_deformable_conv_matches_conv_and_shifts():
    torch.manual_seed(0)
    x, w, b = torch.rand(2, 5, 9, 11), torch.rand(4, 5, 3, 3), torch.rand(4)
    ones = torch.ones(2, 9, 9, 11)
    ref = torch.nn.functional.conv2d(x, w, b, padding=1)
    got = modulated_deform_conv(x, torch.zeros(2, 18, 9, 11), ones, w, b)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    off = torch.zeros(2, 9, 2, 9, 11)
    off[:, :, 0] = 1.0  # every kernel point one pixel to the right
    shifted = torch.zeros_like(x)
    shifted[..., :-1] = x[..., 1:]
    got = modulated_deform_conv(x, off.view(2, 18, 9, 11), ones, w, b)
    ref = torch.nn.functional.conv2d(shifted, w, b, padding=1)
    torch.testing.assert_close(got[..., 1:-2], ref[..., 1:-2], atol=1e-5, rtol=1e-5)
    # modulation 0 leaves only the bias
    got = modulated_deform_conv(x, off.view(2, 18, 9, 11), ones * 0, w, b)
    torch.testing.assert_close(got, b.view(1, 4, 1, 1).expand_as(got))


@pytest.mark.parametrize("method", ["film", "tsain"])
def test_tiny_model_overfits_toy_tuple(method):
    arch, build, _ = TINY[method]
    torch.manual_seed(0)
    model = build(arch)
    v = _blobs(3, 32, 32, seed=1, noise=0.0).astype(np.float32) / 255.0
    a, target, b = (torch.from_numpy(s)[None, None] for s in v)
    t = torch.tensor([0.5])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(80):
        out, _ = model(a, b, t)
        loss = interpolation_loss(out, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.5 * losses[0], (losses[0], losses[-5:])


def test_sampler_tuples_are_consistent():
    cube = np.arange(12 * 20 * 20, dtype=np.uint8).reshape(12, 20, 20) % 251
    s = TupleSampler([cube], factors=(2, 4, 8), crop=16, augment=False, seed=3)
    a, b, t, y = s.sample(32)
    assert a.shape == (32, 1, 16, 16) and t.shape == (32,)
    fracs = {round(float(x) * 8) / 8 for x in t}
    assert fracs <= {k / 8 for k in range(1, 8)} and len(fracs) > 2
    with pytest.raises(ValueError, match="smaller than the crop"):
        TupleSampler([cube], crop=64)


def test_train_api_checkpoint_round_trip_and_resume(tmp_path):
    vol = _blobs(12, 40, 40, seed=2)
    out = tmp_path / "film.safetensors"
    logs = []
    s = train("film", vol, val=_blobs(12, 40, 40, seed=5), out=out, minutes=0, steps=3,
              batch=2, crop=32, arch=TINY["film"][0], eval_every=10**9, log=logs.append)
    assert out.is_file() and s.steps == 3 and np.isfinite(s.best_psnr)
    m = Film(checkpoint=out, device="cpu")
    assert m.metadata["training"]["steps"] == 3 and m.metadata["method"] == "film"
    # the loaded model equals the saved one: same output as a fresh load
    m2 = create_method("film", checkpoint=str(out))
    blk = _blobs(2, 24, 24)
    np.testing.assert_array_equal(m.render(blk, [0.4], value_range=(0, 255)).slices,
                                  m2.render(blk, [0.4], value_range=(0, 255)).slices)
    s2 = train("film", vol, val=_blobs(12, 40, 40, seed=5), out=out, minutes=0, steps=2,
               batch=2, crop=32, resume=True, eval_every=10**9, log=logs.append)
    assert s2.steps == 5 and any("resumed film at step 3" in line for line in logs)
    # self-supervised on one anisotropic stack (validation: its last slices)
    s3 = train("tsain", vol, out=tmp_path / "ts.safetensors", minutes=0, steps=2, batch=2,
               crop=32, self_supervised=True, arch=TINY["tsain"][0], eval_every=10**9,
               log=logs.append)
    assert s3.steps == 2 and Tsain(checkpoint=tmp_path / "ts.safetensors").metadata[
        "training"]["self_supervised"] is True
    with pytest.raises(ValueError, match="validation stack"):
        train("film", vol, out=out, steps=1)


def test_init_starts_from_a_checkpoints_weights(tmp_path):
    """--init: fine-tuning starts from the given weights and architecture (0 steps = the same
    weights); a checkpoint of another method, or --init with --resume, is refused."""
    from napari_zup.checkpoints import load_checkpoint

    vol = _blobs(12, 40, 40, seed=2)
    first = tmp_path / "first.safetensors"
    train("film", vol, val=_blobs(12, 40, 40, seed=5), out=first, minutes=0, steps=2,
          batch=2, crop=32, arch=TINY["film"][0], eval_every=10**9, log=lambda s: None)
    again = tmp_path / "again.safetensors"
    train("film", vol, val=_blobs(12, 40, 40, seed=5), out=again, minutes=0, steps=0,
          batch=2, crop=32, init=first, eval_every=10**9, seed=7, log=lambda s: None)
    (w0, m0), (w1, m1) = load_checkpoint(first), load_checkpoint(again)
    assert m1["arch"] == m0["arch"] and m1["training"]["init"] == "first.safetensors"
    assert w0.keys() == w1.keys()
    for k in w0:
        np.testing.assert_array_equal(w0[k].numpy(), w1[k].numpy())
    _tiny_checkpoint(tmp_path / "ts.safetensors", "tsain")
    with pytest.raises(CheckpointError, match="not 'film'"):
        train("film", vol, val=vol, out=tmp_path / "x.safetensors", steps=1,
              init=tmp_path / "ts.safetensors")
    with pytest.raises(ValueError, match="not both"):
        train("film", vol, val=vol, out=first, steps=1, init=first, resume=True)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_bad_checkpoints_refused(tmp_path):
    _tiny_checkpoint(tmp_path / "ts.safetensors", "tsain")
    with pytest.raises(CheckpointError, match="not 'film'"):
        Film(checkpoint=tmp_path / "ts.safetensors")
    data = (tmp_path / "ts.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        Tsain(checkpoint=tmp_path / "cut.safetensors")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "evil.pt", "wb") as fh:
        pickle.dump({"state_dict": Evil(), "metadata": {"method": "film"}}, fh)
    with pytest.raises(CheckpointError, match="run code|could not be read"):
        Film(checkpoint=tmp_path / "evil.pt")
    # right method, wrong architecture
    _tiny_checkpoint(tmp_path / "f.safetensors", "film")
    from napari_zup.checkpoints import load_checkpoint
    sd, meta = load_checkpoint(tmp_path / "f.safetensors")
    meta["arch"] = {**meta["arch"], "c0": 5}
    meta.pop("tensors_sha256")
    save_checkpoint(tmp_path / "g.safetensors", sd, meta)
    with pytest.raises(CheckpointError, match="does not fit"):
        Film(checkpoint=tmp_path / "g.safetensors")


@pytest.fixture(scope="module")
def sample2_crop():
    g = tifffile.imread(need(SAMPLE2))
    return np.ascontiguousarray(g[40:73, 60:188, 60:188])  # 33 x 128 x 128, real FIB-SEM


@pytest.mark.parametrize("method", ["film", "tsain"])
def test_tiled_equals_untiled(method, sample2_crop):
    if default_checkpoint(method) is None:
        pytest.fail(f"bundled {method} checkpoint missing")
    m = create_method(method, device="cpu")
    a = sample2_crop[:9:4]
    full = reconstruct(a, m, 4)
    tiled = reconstruct(a, m, 4, tile_size=48)
    diff = np.abs(full.astype(int) - tiled.astype(int))
    # halo 64 covers the effective receptive field: at most rounding-level differences
    assert diff.max() <= 2 and diff.mean() < 0.05, (diff.max(), diff.mean())


@pytest.mark.parametrize("method", ["film", "tsain"])
def test_shipped_checkpoint_beats_linear_on_real_crop(method, sample2_crop):
    path = default_checkpoint(method)
    assert path is not None and path.stat().st_size <= 20 * 1024 * 1024
    lin = evaluate_method(sample2_crop, 4, "linear")[0]
    got = evaluate_method(sample2_crop, 4, method, method_params={"device": "cpu"})[0]
    assert got.psnr > lin.psnr + 0.3, (got.psnr, lin.psnr)
    assert got.ssim > lin.ssim


@pytest.mark.gpu  # skipped without CUDA (conftest.py)
def test_gpu_matches_cpu(sample2_crop):
    a = sample2_crop[:5:4]
    cpu = reconstruct(a, "film", 4, method_params={"device": "cpu"})
    gpu = reconstruct(a, "film", 4, method_params={"device": "cuda"})
    assert np.abs(cpu.astype(int) - gpu.astype(int)).max() <= 2


def test_knot_texture_reaches_the_target_ratio_and_leaves_flat_slices_flat():
    from napari_zup.evaluation import high_frequency_energy
    from napari_zup.methods._torch_common import add_knot_texture, high_band

    g = tifffile.imread(need(SAMPLE2))[100:105, 50:178, 50:178].astype(np.float64)
    knot, truth = g[0], g[2]
    smooth = truth - high_band(truth)                      # a prediction without texture
    for ratio in (0.5, 0.8, 1.0):
        out = add_knot_texture(smooth, knot, ratio, (0, 255))
        got = high_frequency_energy(out) / high_frequency_energy(knot)
        assert abs(got - ratio) < 0.05, (ratio, got)   # clipping to 0-255 moves it a little
        assert out.min() >= 0 and out.max() <= 255
    np.testing.assert_array_equal(add_knot_texture(smooth, np.full_like(knot, 7.0), 0.8,
                                                   (0, 255)), smooth)
    # a prediction already as textured as asked is left as it is (no negative gain)
    np.testing.assert_allclose(add_knot_texture(truth, knot, 0.01, (0, 255)), truth)


@pytest.mark.parametrize("method", ["film", "tsain"])
def test_texture_option_restores_texture_on_real_data(method, sample2_crop):
    """texture=0.8: restored slices get ~0.8 of the knots' high-frequency energy (the
    texture ratio, docs/evaluation.md) instead of ~0.2; the default stays the faithful one."""
    plain = evaluate_method(sample2_crop, 4, method, method_params={"device": "cpu"})[0]
    tex = evaluate_method(sample2_crop, 4, method,
                          method_params={"device": "cpu", "texture": 0.8})[0]
    assert plain.texture < 0.5 and 0.65 < tex.texture < 1.0, (plain.texture, tex.texture)
    lin = evaluate_method(sample2_crop, 4, "linear")[0]
    assert tex.psnr > lin.psnr                            # texture from the knots, not noise
    with pytest.raises(ValueError, match="texture"):
        create_method(method, texture=5)


def test_texture_source_is_scaled_to_the_nearest_knots_energy():
    """A source other than the knot (film: its flow-aligned knots) is scaled so that the
    result has ``ratio`` x the *knot's* high-band energy, whatever the source's own level."""
    from napari_zup.evaluation import high_frequency_energy
    from napari_zup.methods._torch_common import add_knot_texture, high_band

    g = tifffile.imread(need(SAMPLE2))[100:105, 50:178, 50:178].astype(np.float64)
    knot, truth = g[0], g[2]
    smooth = truth - high_band(truth)
    faint = smooth + 0.3 * high_band(g[4])                 # a source with little texture
    out = add_knot_texture(smooth, faint, 0.8, (0, 255), knot)
    got = high_frequency_energy(out) / high_frequency_energy(knot)
    assert abs(got - 0.8) < 0.05, got


def test_film_texture_comes_from_its_flow_aligned_knots(sample2_crop, monkeypatch):
    """film's texture option takes the fine texture from both knots warped to the slice by
    its flows (the decoder reports them): truer than the unwarped nearest knot at the same
    texture ratio (docs/benchmarks.md 14.8)."""
    import napari_zup.methods._torch_common as tc

    aligned = evaluate_method(sample2_crop, 4, "film",
                              method_params={"device": "cpu", "texture": 0.8})[0]
    seen = []
    real = tc.add_knot_texture

    def unwarped(pred, source, ratio, value_range, knot=None):
        seen.append(source is not knot)
        return real(pred, knot, ratio, value_range)       # the nearest knot itself
    monkeypatch.setattr(tc, "add_knot_texture", unwarped)
    plain = evaluate_method(sample2_crop, 4, "film",
                            method_params={"device": "cpu", "texture": 0.8})[0]
    assert seen and all(seen)                              # film passed its aligned knots
    assert abs(aligned.texture - plain.texture) < 0.05
    assert aligned.psnr > plain.psnr and aligned.ssim > plain.ssim, (aligned, plain)


def test_texture_mode_tiled_equals_untiled_within_its_stated_tolerance():
    """--texture solves its gain per tile (docs/learned-interpolation.md): tiles differ from
    one untiled pass by a fraction of a grey level on average (stated: mean < 0.5, rare pixels
    up to ~20 grey levels at tile borders). Off, the output is tiled = untiled within 1."""
    g = tifffile.imread(need(SAMPLE2))[40:45]
    a = g[::4]
    m = create_method("film", device="cpu", texture=0.8)
    d = np.abs(reconstruct(a, m, 4).astype(int) - reconstruct(a, m, 4, tile_size=64).astype(int))
    assert d.mean() < 0.5 and np.percentile(d, 99) <= 8, (d.mean(), np.percentile(d, 99))
