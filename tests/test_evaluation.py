"""The evaluation protocol's new parts (docs/evaluation.md): self-evaluation on an anisotropic
stack, the texture ratio, degraded copies for robustness figures, and `zup evaluate` with them.
Real data: the bundled FlyEM crop (CC-BY, always present) and the ssTEM stacks of ../shared."""
import json
import subprocess
import sys

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from napari_zup import reconstruct
from napari_zup._sample_data import sample_path
from napari_zup.evaluation import (SELF_EVAL_LABEL, degrade, evaluate_method,
                                   high_frequency_energy, parse_degradation, self_evaluate)
from napari_zup.io import read_volume

from ._data import ISBI, need


@pytest.fixture(scope="module")
def crop():
    """The bundled isotropic FIB-SEM crop (129 x 192 x 192 uint8, 10 nm)."""
    return np.asarray(read_volume(sample_path()).data)


@pytest.fixture(scope="module")
def aniso(crop):
    """A real anisotropic stack: every 4th slice of the crop (40 nm), 11 sections, 96^2."""
    return np.ascontiguousarray(crop[::4][:11, 40:136, 50:146])


def zup(*args):
    return subprocess.run([sys.executable, "-m", "napari_zup.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=600)


# -- self-evaluation ----------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["linear", "of-cubic"])
def test_self_evaluate_equals_the_manual_computation(aniso, method):
    score, recon, _ = self_evaluate(aniso, method, keep_output=True)
    b = aniso[::2]                                     # keep every second section
    r = reconstruct(b, method, 2)                      # restore the others at factor 2
    assert r.shape == (11, 96, 96)
    np.testing.assert_array_equal(recon, r)
    odd = range(1, 11, 2)                              # restored sections vs the real ones
    psnr = [peak_signal_noise_ratio(aniso[i] / 255.0, r[i] / 255.0, data_range=1.0) for i in odd]
    ssim = [structural_similarity(aniso[i] / 255.0, r[i] / 255.0, data_range=1.0) for i in odd]
    ie = [np.mean(np.abs(r[i] / 255.0 - aniso[i] / 255.0)) * 255 for i in odd]
    hf_restored = np.mean([high_frequency_energy(r[i] / 255.0) for i in odd])
    hf_knots = np.mean([high_frequency_energy(r[i] / 255.0) for i in range(0, 11, 2)])
    assert score.n_slices == 5 and score.per_slice["index"] == list(odd)
    assert score.psnr == pytest.approx(np.mean(psnr), abs=1e-9)
    assert score.ssim == pytest.approx(np.mean(ssim), abs=1e-9)
    assert score.ie == pytest.approx(np.mean(ie), abs=1e-9)
    assert score.texture == pytest.approx(hf_restored / hf_knots, rel=1e-9)
    # ... and it is the drop-and-restore protocol at F = 2 on the stack itself
    assert score.summary()["psnr"] == evaluate_method(aniso, 2, method)[0].psnr


@pytest.mark.parametrize("n", [2, 3, 4])
def test_self_evaluate_refuses_fewer_than_five_sections(aniso, n):
    with pytest.raises(ValueError, match=rf"at least 5 sections.*has {n}"):
        self_evaluate(aniso[:n], "linear")


def test_self_evaluate_accepts_five_sections(aniso):
    assert self_evaluate(aniso[:5], "linear")[0].n_slices == 2


# -- texture ratio ------------------------------------------------------------------------------

def test_high_frequency_energy_of_white_noise_is_its_variance():
    # unitary FFT: white noise has the same expected energy sigma^2 at every frequency
    x = np.random.default_rng(1).normal(0.0, 0.1, (256, 256))
    assert high_frequency_energy(x) == pytest.approx(0.01, rel=0.03)
    assert high_frequency_energy(np.full((64, 64), 0.7)) == pytest.approx(0.0, abs=1e-20)
    # a (periodic) smooth image has nothing above 0.5 Nyquist, a fine one everything there
    yy, xx = np.mgrid[:128, :128] * (2 * np.pi / 128)
    assert high_frequency_energy(np.sin(4 * xx) * np.cos(6 * yy)) < 1e-20
    fine = np.sin(50 * xx)  # 50 / 128 = 0.39 cycles/pixel > 0.25
    f = np.fft.fftfreq(128)
    n_high = np.count_nonzero(np.hypot(f[:, None], f[None, :]) > 0.25)
    # Parseval: all of its energy sum(x^2) lies in the n_high bins above 0.5 Nyquist
    assert high_frequency_energy(fine) == pytest.approx(np.sum(fine ** 2) / n_high, rel=1e-9)


def test_texture_ratio_is_one_for_knots_and_below_one_for_linear(crop):
    g = crop[:65, :128, :128]
    near = evaluate_method(g, 4, "nearest")[0]   # restored slices are copies of knots
    lin = evaluate_method(g, 4, "linear")[0]
    cub = evaluate_method(g, 4, "cubic")[0]
    assert near.texture == pytest.approx(1.0, abs=0.05)
    assert lin.texture < 0.8                     # averaging two sections smooths the noise
    assert lin.texture < cub.texture < near.texture
    assert "texture" in lin.summary()


# -- degradations -------------------------------------------------------------------------------

def test_degrade_noise_is_deterministic_and_has_the_stated_sigma(crop):
    g = crop[:20, :128, :128].copy()
    before = g.copy()
    a, b, c = degrade(g, "noise=8", seed=3), degrade(g, "noise=8", seed=3), degrade(g, "noise=8", 4)
    np.testing.assert_array_equal(g, before)     # the input is never changed
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.dtype == np.uint8 and a.shape == g.shape
    d = a.astype(float) - g
    assert np.std(d) == pytest.approx(8.0, rel=0.03) and abs(np.mean(d)) < 0.2


def test_degrade_gamma_contrast_matches_the_formula(crop):
    g = crop[:10, :64, :64]
    got = degrade(g, "gamma=0.7,contrast=0.6")
    x = 255.0 * (g / 255.0) ** 0.7                   # gamma first (spec order), then contrast
    want = np.clip(np.rint(x.mean() + 0.6 * (x - x.mean())), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(got, want)
    assert got.std() < 0.7 * g.std()


def test_degrade_thick_sections_and_brightness(crop):
    g = crop[:12, :32, :32]
    t = degrade(g, "thick=3")
    np.testing.assert_array_equal(t[5], np.rint(g[4:7].astype(float).mean(0)).astype(np.uint8))
    br = degrade(g, "brightness=-20")
    np.testing.assert_array_equal(br, np.clip(g.astype(int) - 20, 0, 255))
    f = degrade(g.astype(np.float32), "poisson=50", seed=0)
    assert f.dtype == np.float32 and not np.array_equal(f, g)


@pytest.mark.parametrize("spec", ["noise", "blur=2", "noise=-1", "gamma=0", "noise=abc"])
def test_degrade_refuses_bad_specs(spec):
    with pytest.raises(ValueError, match="degradation"):
        parse_degradation(spec)


# -- zup evaluate -------------------------------------------------------------------------------

def test_cli_self_evaluation_on_real_sstem(tmp_path):
    js = tmp_path / "self.json"
    proc = zup("evaluate", need(ISBI), "--self", "--methods", "linear,cubic", "--json", js)
    assert proc.returncode == 0, proc.stderr
    assert SELF_EVAL_LABEL in proc.stdout and "twice the real spacing" in proc.stdout
    scores = json.loads(js.read_text())
    assert scores["_protocol"]["protocol"] == "self-evaluation"
    assert scores["_protocol"]["label"] == SELF_EVAL_LABEL and scores["_protocol"]["factor"] == 2
    a = read_volume(ISBI).data
    ref = self_evaluate(np.asarray(a), "linear")[0]
    assert scores["linear"]["psnr"] == pytest.approx(ref.psnr, abs=1e-9)
    assert scores["linear"]["n_slices"] == 14 and 0 < scores["cubic"]["texture"] < 2


def test_cli_self_refuses_other_factors_and_short_stacks(tmp_path, aniso):
    import tifffile

    proc = zup("evaluate", ISBI, "--self", "--factor", "4")
    assert proc.returncode == 2 and "--self always evaluates at factor 2" in proc.stderr
    short = tmp_path / "short.tif"
    tifffile.imwrite(short, aniso[:4], photometric="minisblack")
    proc = zup("evaluate", short, "--self", "--json", tmp_path / "s.json")
    assert proc.returncode == 2 and "at least 5 sections" in proc.stderr
    assert not (tmp_path / "s.json").exists()
    proc = zup("evaluate", short)
    assert proc.returncode == 2 and "--factor" in proc.stderr and "--self" in proc.stderr


def test_cli_degrade_is_stated_in_table_and_json(tmp_path, crop):
    import tifffile

    src = tmp_path / "g.tif"
    tifffile.imwrite(src, crop[:33, :96, :96])
    js = tmp_path / "d.json"
    proc = zup("evaluate", src, "--factor", "4", "--methods", "linear", "--degrade",
               "gamma=0.7,contrast=0.6", "--seed", "5", "--json", js)
    assert proc.returncode == 0, proc.stderr
    assert "degraded copy: gamma=0.7,contrast=0.6 (seed 5)" in proc.stdout
    got = json.loads(js.read_text())
    assert got["_protocol"]["degradation"] == "gamma=0.7,contrast=0.6"
    assert got["_protocol"]["seed"] == 5
    want = evaluate_method(degrade(crop[:33, :96, :96], "gamma=0.7,contrast=0.6", 5), 4,
                           "linear")[0]
    assert got["linear"]["psnr"] == pytest.approx(want.psnr, abs=1e-9)
    bad = zup("evaluate", src, "--factor", "4", "--degrade", "blur=1")
    assert bad.returncode == 2 and "not understood" in bad.stderr


def test_cli_methods_all_is_every_registered_method():
    from napari_zup.cli import _eval_methods
    from napari_zup.methods.base import method_names

    assert _eval_methods("all") == method_names()
    assert _eval_methods("linear, cubic") == ["linear", "cubic"]


def test_one_intensity_scale_refuses_nan_everywhere():
    """Evaluation and training scale intensities with the engine's one value range: the same
    [0, 1] mapping, and NaN voxels refused with the same words."""
    from napari_zup.engine import volume_value_range
    from napari_zup.evaluation import evaluate_method, unit_scale
    from napari_zup.training.session import TrainingError, to_unit

    v = np.linspace(-3, 5, 6 * 8 * 8, dtype=np.float32).reshape(6, 8, 8)
    lo, hi = volume_value_range(v)
    assert unit_scale(v) == (lo, hi - lo)
    np.testing.assert_allclose(to_unit(v), (v - lo) / (hi - lo), atol=1e-6)
    assert unit_scale(np.zeros((3, 4, 4), np.uint8)) == (0.0, 255.0)
    bad = v.copy()
    bad[2, 3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        unit_scale(bad)
    with pytest.raises(ValueError, match="NaN"):
        evaluate_method(bad, 2, "linear")
    with pytest.raises(TrainingError, match="NaN"):
        to_unit(bad)
