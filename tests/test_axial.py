"""Axial restorers (niiv, a2i): grid, pair generation, fusion, training, shipped checkpoints."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_zup import grid  # noqa: E402
from napari_zup.checkpoints import default_checkpoint, load_checkpoint, save_checkpoint  # noqa: E402
from napari_zup.engine import reconstruct  # noqa: E402
from napari_zup.methods._axial_common import (  # noqa: E402
    PairSampler, degrade_rows, fuse, query_grid, xz_planes, yz_planes)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if not DATA.is_dir():
    DATA = Path("/work/shared/data")
SAMPLE2 = DATA / "fibsem_flyem_medulla_10nm_sample2_250.tif"


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _tiny_checkpoint(tmp_path, method):
    torch.manual_seed(0)
    if method == "niiv":
        from napari_zup.methods.niiv import Niiv
        arch = {"channels": 8, "blocks": 1, "hidden": 16, "layers": 2}
        model = Niiv.build_model(arch)
    else:
        from napari_zup.methods.a2i import A2I
        arch = {"channels": 8, "depths": [1, 1, 1], "heads": [1, 1, 2], "window": 4}
        model = A2I.build_model(arch)
    path = tmp_path / f"{method}.safetensors"
    save_checkpoint(path, model.state_dict(), {"method": method, "arch": arch,
                                               "training": {"degradation": "decimate"}})
    return path


@pytest.mark.parametrize("method", ["niiv", "a2i"])
def test_arbitrary_scale_grid(tmp_path, method):
    ckpt = _tiny_checkpoint(tmp_path, method)
    rng = np.random.default_rng(1)
    vol = rng.integers(0, 255, (9, 20, 24), dtype=np.uint8)
    out = reconstruct(vol, method, 2.7, method_params={"checkpoint": ckpt, "device": "cpu"})
    assert out.shape == (grid.output_length(9, 2.7), 20, 24) == (22, 20, 24)
    assert out.dtype == np.uint8
    assert np.array_equal(out[0], vol[0])  # the only knot on the 2.7 grid
    # integer factor: knots are copied where they fall
    out4 = reconstruct(vol, method, 4, method_params={"checkpoint": ckpt, "device": "cpu"})
    assert out4.shape == (33, 20, 24)
    assert np.array_equal(out4[::4], vol)


def test_query_grid_spacing_at_factor_2():
    """At F = 2 the restored slices (k + 1/2) are never neighbours: the spacing is still 1/2,
    not the gap of 1 between them (that mistake fed niiv a wrong cell size)."""
    pos = [k + 0.5 for k in range(10)]
    g, idx, d = query_grid(pos, 11)
    assert d == pytest.approx(0.5)
    np.testing.assert_allclose(g[idx], pos)
    np.testing.assert_allclose(g, np.arange(21) / 2)
    assert query_grid([3.25], 8)[2] == pytest.approx(0.25)  # a single position


def test_query_grid_contains_positions():
    f = 2.7
    pos = [i / f - 3 for i in range(9, 40) if (i / f) % 1]
    g, idx, d = query_grid(pos, 14)
    assert d == pytest.approx(1 / f)
    np.testing.assert_allclose(g[idx], pos, atol=1e-9)
    assert g[0] >= 0 and g[-1] <= 13


def test_tiny_niiv_overfits_toy_plane():
    from napari_zup.methods.niiv import NiivNet

    torch.manual_seed(0)
    yy, xx = np.mgrid[0:33, 0:32]
    hr = (0.5 + 0.4 * np.sin(xx / 3.0 + yy / 2.0) * np.cos(yy / 5.0)).astype(np.float32)
    hr_t = torch.from_numpy(hr)[None, None]
    lr_np, pos = degrade_rows(hr[None, None], 4)
    lr = torch.from_numpy(np.ascontiguousarray(lr_np))
    pos_t = torch.as_tensor(pos, dtype=torch.float32)
    model = NiivNet(channels=16, blocks=2, hidden=32, layers=2)
    with torch.no_grad():
        before = float((model(lr, pos_t, 0.25) - hr_t).abs().mean())
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(250):
        loss = (model(lr, pos_t, 0.25) - hr_t).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = loss.item()
    assert before > 0.05  # starts as linear interpolation, which is poor on this pattern
    assert after < 0.3 * before


def test_decimation_pairs_are_exact_rows():
    rng = np.random.default_rng(0)
    vol = rng.random((3, 64, 64)).astype(np.float32)
    s = PairSampler(vol, [3], rows=5, width=16, degradation="decimate", seed=2)
    lr, hr, pos, f = s.sample(4)
    assert f == 3 and hr.shape == (4, 1, 13, 16) and lr.shape == (4, 1, 5, 16)
    np.testing.assert_array_equal(lr, hr[:, :, ::3])
    np.testing.assert_allclose(pos, np.arange(13) / 3)
    # every hr patch is a real (possibly transposed / flipped) piece of one slice
    p = hr[0, 0]
    found = False
    for k in range(3):
        for sl in (vol[k], vol[k].T):
            for cand in (p, p[::-1], p[:, ::-1], p[::-1, ::-1]):
                hits = np.argwhere(np.isclose(sl, cand[0, 0]))
                for y, x in hits:
                    if y + 13 <= sl.shape[0] and x + 16 <= sl.shape[1] and \
                            np.array_equal(sl[y:y + 13, x:x + 16], cand):
                        found = True
    assert found


def test_pooling_pairs_are_means():
    hr = np.arange(2 * 8 * 5, dtype=np.float32).reshape(2, 8, 5)
    lr, pos = degrade_rows(hr, 4, "pool")
    assert lr.shape == (2, 2, 5)
    np.testing.assert_allclose(lr[:, 0], hr[:, 0:4].mean(axis=1))
    np.testing.assert_allclose(lr[:, 1], hr[:, 4:8].mean(axis=1))
    # section k's centre is at lr coordinate k
    np.testing.assert_allclose(pos[[1, 2]].mean(), 0.0)
    np.testing.assert_allclose(pos[[5, 6]].mean(), 1.0)
    with pytest.raises(ValueError, match="degradation"):
        degrade_rows(hr, 4, "blur")


def test_noise_options_change_only_inputs():
    vol = np.full((2, 40, 40), 0.5, np.float32)
    s = PairSampler(vol, [4], rows=4, width=16, noise_std=0.05, seed=0)
    lr, hr, _, _ = s.sample(8)
    assert np.all(hr == 0.5)
    assert 0.03 < lr.std() < 0.07


def test_xz_yz_fusion_shapes_and_values():
    rng = np.random.default_rng(0)
    block = rng.random((5, 6, 7)).astype(np.float32)
    xz, yz = xz_planes(block), yz_planes(block)
    assert xz.shape == (6, 5, 7) and yz.shape == (7, 5, 6)
    assert np.array_equal(xz[2], block[:, 2, :]) and np.array_equal(yz[3], block[:, :, 3])
    # "restoring" knots 1 and 3 in both orientations must give back those slices
    rows = [1, 3]
    for fusion in ("mean", "geometric", "xz", "yz"):
        out = fuse(xz[:, rows], yz[:, rows], fusion)
        assert out.shape == (2, 6, 7)
        np.testing.assert_allclose(out, block[rows], rtol=1e-6)
    a, b = np.full((6, 2, 7), 4.0), np.full((7, 2, 6), 1.0)
    np.testing.assert_allclose(fuse(a, b, "mean"), 2.5)
    np.testing.assert_allclose(fuse(a, b, "geometric"), 2.0)
    with pytest.raises(ValueError, match="fusion"):
        fuse(a, b, "max")


def test_training_stops_and_resumes(tmp_path):
    from napari_zup.training import train

    rng = np.random.default_rng(0)
    vol = (rng.random((4, 48, 48)) * 255).astype(np.uint8)
    out = tmp_path / "n.safetensors"
    stop = threading.Event()
    seen = []

    def cb(step, loss, preview):
        seen.append((step, loss, preview))
        if step >= 20:
            stop.set()

    arch = {"channels": 8, "blocks": 1, "hidden": 16, "layers": 2}
    r1 = train("niiv", vol, factors=4, out=out, minutes=5, arch=arch, batch=2, rows=5,
               crop=16, eval_every=10, callback=cb, stop_event=stop, device="cpu")
    assert r1.stopped and r1.steps == 20
    assert out.is_file()
    assert any(p is not None and p.shape == (13, 48) for _, _, p in seen)
    _, meta = load_checkpoint(out, method="niiv")
    assert meta["arch"] == {**meta["arch"], **arch}
    r2 = train("niiv", vol, factors=4, out=out, resume=True, steps=7, minutes=5, batch=2,
               rows=5, crop=16, eval_every=5, device="cpu")
    assert not r2.stopped and r2.steps == 27
    state, meta = load_checkpoint(out, method="niiv")
    assert meta["training"]["factors"] == [4]
    assert meta["training"]["steps"] >= 20  # the first run's best is kept or bettered
    assert r2.best_psnr >= r1.best_psnr - 1e-9  # validation PSNR: higher is better


def test_train_cli_reports_bad_input(tmp_path, capsys):
    from napari_zup.training.cli import main

    rc = main("niiv", ["--data", str(tmp_path / "missing.tif"), "--factor", "4",
                       "--out", str(tmp_path / "x.safetensors")])
    assert rc == 2
    assert "missing.tif" in capsys.readouterr().err


def _psnr_restored(recon, g, f):
    idx = grid.restored_output_indices((len(g) - 1) // f + 1, f)
    d = (recon[idx].astype(np.float64) - g[idx].astype(np.float64)) / 255.0
    return 10 * np.log10(1.0 / np.mean(d ** 2))


@pytest.mark.parametrize("method", ["niiv", "a2i"])
@pytest.mark.parametrize("factor", [2, 4])
def test_shipped_checkpoint_beats_linear_on_real_crop(method, factor):
    ckpt = default_checkpoint(method)
    if ckpt is None:
        pytest.skip(f"no shipped {method} checkpoint")
    if not SAMPLE2.is_file():
        pytest.skip("real data not available")
    import tifffile

    _, meta = load_checkpoint(ckpt, method=method)
    assert "sample1" in meta["training"]["data"]  # trained on the other cube
    g = tifffile.imread(SAMPLE2)[:65, 60:124, 100:164]
    a = g[::factor]
    r_lin = reconstruct(a, "linear", factor)
    r = reconstruct(a, method, factor, method_params={"device": "cpu"})
    assert r.shape == g.shape
    assert np.array_equal(r[::factor], a)
    assert _psnr_restored(r, g, factor) > _psnr_restored(r_lin, g, factor)
    # no brightness shift on the restored slices (F = 2 once rendered at the wrong spacing
    # and came out ~4 grey levels darker than the ground truth)
    restored = np.arange(len(g)) % factor != 0
    bias = r[restored].astype(float).mean() - g[restored].astype(float).mean()
    assert abs(bias) < 0.5


def test_factor_outside_the_checkpoints_training_range_is_flagged(tmp_path):
    """A learned method used beyond the factors its checkpoint was trained for gets a
    warning naming the range (CLI stderr and the Reconstruct widget show it)."""
    import subprocess
    import sys

    import tifffile

    from napari_zup.checkpoints import factor_warning, read_metadata

    lo, hi = read_metadata(default_checkpoint("niiv"))["factor_range"]
    assert factor_warning("niiv", hi) is None and factor_warning("niiv", lo) is None
    note = factor_warning("niiv", 12)
    assert note and f"×{lo:g} to ×{hi:g}" in note and "×12" in note
    assert factor_warning("linear", 12) is None  # no checkpoint, no warning
    ckpt = _tiny_checkpoint(tmp_path, "a2i")  # records no range: nothing to say
    assert factor_warning("a2i", 12, ckpt) is None
    state, meta = load_checkpoint(ckpt, "a2i")
    save_checkpoint(ckpt, state, {**meta, "factor_range": [4, 4]})
    assert "×4;" in factor_warning("a2i", 6, ckpt) and factor_warning("a2i", 4, ckpt) is None
    vol = np.random.default_rng(0).integers(0, 255, (4, 24, 24), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "in.tif", vol, photometric="minisblack")
    proc = subprocess.run([sys.executable, "-m", "napari_zup.cli", "reconstruct",
                           tmp_path / "in.tif", tmp_path / "out.tif", "--method", "a2i",
                           "--factor", "6", "--checkpoint", ckpt],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "warning: the a2i checkpoint" in proc.stderr


def test_factor_range_check_reads_only_the_header_without_torch(tmp_path):
    """factor_warning (auto, the widgets, the CLI) must not import torch or hash tensors: it
    runs before anything else and in napari's GUI thread."""
    import subprocess
    import sys

    code = ("import sys; from napari_zup.checkpoints import factor_warning, peek_metadata, "
            "default_checkpoint; assert factor_warning('film', 12) is not None; "
            "assert peek_metadata(default_checkpoint('niiv'))['factor_range'] == [2, 8]; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    from napari_zup.checkpoints import CheckpointError, peek_metadata

    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        peek_metadata(bad)
