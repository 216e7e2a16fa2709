"""film with four knots (z-1, z, z+1, z+2): started from a 2-knot checkpoint it computes the
same; the engine hands it the outer knots (clamped at the volume ends); the sampler cuts
4-knot tuples; a tiny 4-knot model overfits what a pair cannot see; tiled equals untiled."""
import numpy as np
import pytest
import torch

from napari_zup.checkpoints import default_checkpoint, load_checkpoint, save_checkpoint
from napari_zup.engine import reconstruct
from napari_zup.methods import create_method
from napari_zup.methods.film import build_film, expand_state, outer_flows
from napari_zup.training.interp import TupleSampler

TINY = {"c0": 4, "c1": 6, "flow_width": [0, 8, 8, 8], "dec_width": [6, 8, 8, 8]}


@pytest.fixture(scope="module", autouse=True)
def _threads(one_torch_thread):
    """One torch thread for the whole module (conftest.one_torch_thread)."""


def _random_two_knot(seed=0):
    """A 2-knot film of the bundled architecture with random weights (the zero-initialised
    head perturbed too, so that the output is more than the linear blend)."""
    torch.manual_seed(seed)
    arch = {k: v for k, v in load_checkpoint(default_checkpoint("film"))[1]["arch"].items()
            if k not in ("knots", "end_flags")}
    model = build_film({**arch, "knots": 2})
    with torch.no_grad():
        model.head.weight.normal_(0, 0.05)
    return model.eval(), arch


def _moving(n=6, h=48, w=56, seed=0):
    """A real-looking texture moving on a curved path (accelerating in x)."""
    rng = np.random.default_rng(seed)
    base = rng.normal(0, 1, (h + 40, w + 40))
    import cv2

    base = cv2.GaussianBlur(base, (0, 0), 2.0)
    base = (base - base.min()) / np.ptp(base) * 200 + 25
    out = []
    for z in range(n):
        dx = 0.6 * z * z  # 0, 0.6, 2.4, 5.4, ...: a curved trajectory
        m = np.float32([[1, 0, dx], [0, 1, 0]])
        out.append(cv2.warpAffine(base.astype(np.float32), m, base.shape[::-1],
                                  flags=cv2.INTER_LINEAR)[20:20 + h, 20:20 + w])
    return np.stack(out).clip(0, 255).astype(np.uint8)


def test_four_knot_model_from_a_two_knot_checkpoint_computes_the_same():
    m2, arch = _random_two_knot()
    sd = m2.state_dict()
    m4 = build_film({**arch, "knots": 4}).eval()
    m4.load_state_dict(expand_state(sd, m4))
    x = torch.rand(4, 1, 48, 56)
    with torch.no_grad():
        o2, f2 = m2(x[1:2], x[2:3], torch.tensor([0.3]))
        o4, f4 = m4(x[1:2], x[2:3], torch.tensor([0.3]), (x[:1], x[3:]))
        blend = 0.7 * x[1:2] + 0.3 * x[2:3]
    assert float((o2 - blend).abs().mean()) > 1e-3  # more than the blend: a real test
    assert float((o2 - o4).abs().max()) < 1e-5 and float((f2 - f4).abs().max()) < 1e-4
    with pytest.raises(ValueError, match="4 knots"):
        m4(x[1:2], x[2:3], torch.tensor([0.3]))  # a 4-knot model needs its outer knots
    with pytest.raises(ValueError, match="cannot start"):
        expand_state({**sd, "head.weight": torch.zeros(3, 1, 3, 3)}, m4)


def test_bundled_film_is_the_four_knot_model():
    sd, meta = load_checkpoint(default_checkpoint("film"))
    assert meta["arch"]["knots"] == 4 and meta["training"]["rounds"][-1]["knots"] == 4
    assert meta["arch"]["end_flags"] and meta["training"]["rounds"][-1]["end_flags"]
    m = create_method("film", device="cpu")
    assert m.knots == 4 and m.z_context == 1
    # the outer knots' and the end flags' decoder inputs were trained: not the zeros they
    # started from (channels: ..., warped outer images + features, then the two flags)
    w = m.model.dec_in[0][0].weight.detach()
    extra = 2 + 2 * m.model.cfeat[0]
    assert float(w[:, -extra - 2:-2].abs().max()) > 1e-3
    assert float(w[:, -2:].abs().max()) > 1e-3


def test_outer_flows_follow_a_constant_motion():
    v = torch.randn(1, 2, 5, 5)
    t = 0.3
    flows = torch.cat([-t * v, (1 - t) * v], 1)  # F_t->0, F_t->1 of a constant motion v
    fm, fp = outer_flows(flows)
    torch.testing.assert_close(fm, (-1 - t) * v)
    torch.testing.assert_close(fp, (2 - t) * v)


def test_engine_gives_the_outer_knots_and_clamps_them_at_the_ends():
    """Through the engine (z_context 1) every interval sees its outer knots; at the volume
    ends the missing one is the end knot: the same as rendering with it duplicated."""
    m = create_method("film", device="cpu")  # the bundled 4-knot model
    assert m.knots == 4 and m.z_context == 1
    vol = _moving(5)
    out = reconstruct(vol, m, 4)
    assert out.shape == (17, 48, 56)
    np.testing.assert_array_equal(out[::4], vol)
    # the first interval with knot -1 := knot 0, rendered by hand
    vr = (0.0, 255.0)
    dup = np.concatenate([vol[:1], vol[:3]])  # knots 0, 0, 1, 2: interval 1 of this block
    by_hand = m.render(dup, [1.25, 1.5, 1.75], value_range=vr).slices
    np.testing.assert_array_equal(out[1:4], by_hand)
    # its flows (Flow view, Vectors layer): one field per restored slice, and they see motion
    fl = m.render(vol[1:5], [1.5], value_range=vr, want_flows=True).flows[0]
    assert fl.shape == (48, 56, 2) and np.isfinite(fl).all() and np.abs(fl).mean() > 0.1
    # the outer knots matter (their trained weights): an interior interval differs from
    # the one rendered with its outer knots replaced by the inner ones
    inner = np.stack([vol[1], vol[1], vol[2], vol[2]])
    other = m.render(inner, [1.5], value_range=vr).slices[0]
    assert np.abs(other.astype(int) - out[6].astype(int)).mean() > 0.1
    # tiled equals untiled (halo 64 covers the receptive field)
    tiled = reconstruct(vol, m, 4, tile_size=24)
    diff = np.abs(out.astype(int) - tiled.astype(int))
    assert diff.max() <= 2 and diff.mean() < 0.05, (diff.max(), diff.mean())


def test_sampler_cuts_four_knot_tuples_in_order():
    """Values encode the section index, so each image of a tuple says where it came from."""
    z = np.arange(40, dtype=np.float32)
    cube = np.broadcast_to(z[:, None, None] / 40.0, (40, 40, 40)).copy()
    s = TupleSampler([cube], factors=(2, 4), crop=16, augment=False, seed=0, scaled=True,
                     knots=4, self_supervised=True)
    a, b, t, y, m, p = s.sample(64)
    ia, ib, iy, im, ip = (np.rint(x[:, 0, 0, 0] * 40).astype(int) for x in (a, b, y, m, p))
    f = ib - ia
    assert set(f) <= {2, 4} and (iy > ia).all() and (iy < ib).all()
    assert np.allclose(t, (iy - ia) / f)
    clamped_m, clamped_p = im == ia, ip == ib
    assert ((im == ia - f) | clamped_m).all() and ((ip == ib + f) | clamped_p).all()
    assert 0 < clamped_m.mean() < 0.3 and 0 < clamped_p.mean() < 0.3  # ~10 %: the ends


def test_sampler_clamps_the_outer_knots_of_a_short_stack():
    """5 sections at factor 2 leave no room for z - 2 and z + 4: the outer knots are the end
    knots (as in the engine), not a refusal (a 5-section hold-out must validate)."""
    z = np.arange(5, dtype=np.float32)
    cube = np.broadcast_to(z[:, None, None] / 5.0, (5, 24, 24)).copy()
    s = TupleSampler([cube], factors=(2,), crop=16, augment=False, seed=0, scaled=True,
                     knots=4, self_supervised=True)
    a, b, t, y, m, p = s.sample(32)
    ia, ib, im, ip = (np.rint(x[:, 0, 0, 0] * 5).astype(int) for x in (a, b, m, p))
    assert ((ib - ia) == 2).all() and (ia >= 0).all() and (ib <= 4).all()
    assert ((im == ia - 2) | (im == ia)).all() and ((ip == ib + 2) | (ip == ib)).all()
    assert (im >= 0).all() and (ip <= 4).all()
    assert (im[ia < 2] == ia[ia < 2]).all() and (ip[ib > 2] == ib[ib > 2]).all()


def test_tiny_four_knot_model_overfits_what_a_pair_cannot_see():
    """Two toy sequences with the same inner pair but different outer knots (bright vs dark)
    and middles that differ by the outer knots (brighter vs darker). A pair model sees the
    same input twice: its summed L1 cannot fall below |y_A - y_B| = 0.2 (triangle
    inequality). A tiny 4-knot model overfits both, well under that floor."""
    pair = _moving(2, 32, 32).astype(np.float32) / 255.0
    a, b = (torch.from_numpy(x)[None, None] for x in pair)
    mid = 0.5 * (a + b)
    seqs = [(torch.full_like(a, 0.8), torch.full_like(a, 0.8), mid + 0.1),
            (torch.full_like(a, 0.2), torch.full_like(a, 0.2), mid - 0.1)]
    floor = float((seqs[0][2] - seqs[1][2]).abs().mean())
    assert abs(floor - 0.2) < 1e-4
    losses = {}
    for knots in (2, 4):
        torch.manual_seed(0)
        model = build_film({**TINY, "knots": knots})
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(150):
            loss = 0
            for m, p, y in seqs:
                t = torch.tensor([0.5])
                out, _ = model(a, b, t, (m, p)) if knots == 4 else model(a, b, t)
                loss = loss + (out - y).abs().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        losses[knots] = float(loss.detach())
    assert losses[2] >= floor - 1e-3, losses   # the pair model is held at the floor
    assert losses[4] < 0.4 * floor, losses      # the 4-knot one is not


def test_train_cli_knots_option(tmp_path, capsys):
    """``zup train film --knots 4`` trains a 4-knot model (the bundled film is one); the
    option is refused for other methods."""
    import tifffile

    from napari_zup.training.cli import main

    vol = _moving(14, 40, 40)
    for name in ("a", "b"):
        tifffile.imwrite(tmp_path / f"{name}.tif", vol, imagej=True)
    out = tmp_path / "k4.safetensors"
    rc = main("film", ["--data", str(tmp_path / "a.tif"), "--val", str(tmp_path / "b.tif"),
                       "--knots", "4", "--steps", "2", "--eval-every", "1", "--batch", "2",
                       "--crop", "32", "--factor", "2", "--device", "cpu", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    _, meta = load_checkpoint(out, "film")
    assert meta["arch"]["knots"] == 4 and meta["training"]["knots"] == 4
    assert create_method("film", checkpoint=out, device="cpu").z_context == 1
    with pytest.raises(SystemExit):
        main("tsain", ["--data", str(tmp_path / "a.tif"), "--knots", "4", "--steps", "1"])
    assert "--knots applies to film only" in capsys.readouterr().err


def test_end_flags_start_as_the_model_they_extend_and_see_a_clamped_knot():
    """``end_flags``: two planes saying which outer knot is missing (clamped = identical to
    the inner one); added to a 4-knot model they start at zero (same output), and once they
    have weights the output changes only where a knot is clamped."""
    m2, arch = _random_two_knot()
    m4 = build_film({**arch, "knots": 4}).eval()
    m4.load_state_dict(expand_state(m2.state_dict(), m4))
    with torch.no_grad():
        m4.dec_in[0][0].weight.normal_(0, 0.05)  # outer inputs with weights too
    mf = build_film({**arch, "knots": 4, "end_flags": True}).eval()
    mf.load_state_dict(expand_state(m4.state_dict(), mf))
    x = torch.rand(4, 1, 48, 56)
    t = torch.tensor([0.3])
    with torch.no_grad():
        inner = (x[:1], x[3:])
        clamped = (x[1:2], x[3:])  # knot z - 1 missing: the end knot itself
        for outer in (inner, clamped):
            o4, _ = m4(x[1:2], x[2:3], t, outer)
            of, _ = mf(x[1:2], x[2:3], t, outer)
            assert float((o4 - of).abs().max()) < 1e-5
        w = mf.dec_in[0][0].weight
        w[:, -2:] = 0.5  # the flag channels (last) now matter
        o_in = mf(x[1:2], x[2:3], t, inner)[0]
        o_cl = mf(x[1:2], x[2:3], t, clamped)[0]
        assert float((o_in - m4(x[1:2], x[2:3], t, inner)[0]).abs().max()) < 1e-5
        assert float((o_cl - m4(x[1:2], x[2:3], t, clamped)[0]).abs().max()) > 1e-3
    with pytest.raises(ValueError, match="end_flags needs knots = 4"):
        build_film({**arch, "knots": 2, "end_flags": True})


def test_train_cli_end_flags_option():
    """``zup train film --end-flags`` asks for the flags in the architecture (merged into the
    starting checkpoint's); other methods refuse it."""
    from napari_zup.training.cli import config_from_args

    cfg = config_from_args("film", ["--data", "a.tif", "--val", "b.tif", "--end-flags"])
    assert cfg.arch == {"end_flags": True}
    cfg = config_from_args("film", ["--data", "a.tif", "--knots", "4", "--end-flags"])
    assert cfg.arch == {"knots": 4, "end_flags": True}
    assert config_from_args("film", ["--data", "a.tif"]).arch is None
    with pytest.raises(SystemExit):
        config_from_args("tsain", ["--data", "a.tif", "--end-flags"])
    cfg = config_from_args("film", ["--data", "a.tif", "--dec-blocks", "2,2,1,0"])
    assert cfg.arch == {"dec_blocks": [2, 2, 1, 0]}
    for bad in ("2,2", "a,b,c,d", "1,1,1,-1"):
        with pytest.raises(SystemExit):
            config_from_args("film", ["--data", "a.tif", "--dec-blocks", bad])
    with pytest.raises(SystemExit):
        config_from_args("tsain", ["--data", "a.tif", "--dec-blocks", "1,1,1,1"])


def test_decoder_blocks_start_as_the_model_they_extend_and_then_learn():
    """``dec_blocks``: residual blocks after each decoder level's input; added to a trained
    model (``expand_state``) they start as the identity (same output), their parameters get
    gradients (a zero last convolution alone would not stop them learning), and once they have
    weights the output changes."""
    m2, arch = _random_two_knot()
    m4 = build_film({**arch, "knots": 4, "end_flags": True}).eval()
    m4.load_state_dict(expand_state(m2.state_dict(), m4))
    mb = build_film({**arch, "knots": 4, "end_flags": True, "dec_blocks": [1, 2, 0, 1]}).eval()
    mb.load_state_dict(expand_state(m4.state_dict(), mb))
    assert (sum(p.numel() for p in mb.parameters())
            > sum(p.numel() for p in m4.parameters()))
    x = torch.rand(4, 1, 48, 56)
    t = torch.tensor([0.3])
    with torch.no_grad():
        assert float((m4(x[1:2], x[2:3], t, (x[:1], x[3:]))[0]
                      - mb(x[1:2], x[2:3], t, (x[:1], x[3:]))[0]).abs().max()) < 1e-6
    out, _ = mb(x[1:2], x[2:3], t, (x[:1], x[3:]))
    (out - x[2:3]).abs().mean().backward()
    last = mb.dec_res[1][1].net[-1].weight
    assert last.grad is not None and float(last.grad.abs().sum()) > 0
    with torch.no_grad():
        last.normal_(0, 0.05)
        changed = mb(x[1:2], x[2:3], t, (x[:1], x[3:]))[0]
        assert float((changed - m4(x[1:2], x[2:3], t, (x[:1], x[3:]))[0]).abs().max()) > 1e-4
    with pytest.raises(ValueError, match="has no"):  # other missing weights are still refused
        expand_state({k: v for k, v in m4.state_dict().items() if k != "head.bias"}, mb)


def test_decoder_blocks_widen_the_tile_halo(tmp_path):
    """A film checkpoint with residual decoder blocks gets a larger tile halo (each block two
    3 x 3 convolutions at its level's scale), so tiles still see their receptive field; the
    bundled film keeps its 64 px."""
    sd, meta = load_checkpoint(default_checkpoint("film"))
    arch = {**meta["arch"], "dec_blocks": [1, 0, 2, 0]}
    model = build_film(arch)
    path = save_checkpoint(tmp_path / "deep.safetensors",
                           expand_state(sd, model), {**meta, "arch": arch})
    assert create_method("film", checkpoint=path).halo() == 64 + 2 * 1 + 2 * 2 * 4
    assert create_method("film").halo() == 64
