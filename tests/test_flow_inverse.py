"""The backward flow of of-linear/of-cubic by inverting the forward one (issue #15 item 2):
the inverse is right on a known field, and on real FIB-SEM it restores as well as a second
Farnebäck call (the paper's method), which stays available."""
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from napari_zup import reconstruct
from napari_zup.evaluation import evaluate_method
from napari_zup.flow import PAPER_ITERATIONS, FarnebackParams, estimate_flow, invert_flow
from napari_zup.methods import create_method

from ._data import SAMPLE2, need


def smooth_field(h=96, w=128):
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    f = np.empty((h, w, 2), np.float32)
    f[..., 0] = 3.0 + 2.0 * np.sin(2 * np.pi * y / h)          # dx: 1 .. 5 px
    f[..., 1] = -1.5 + 1.0 * np.cos(2 * np.pi * x / w)         # dy: -2.5 .. -0.5 px
    return f


def sample(field, x, y):
    """Bilinear value of ``field`` at float positions (x, y)."""
    import cv2

    return cv2.remap(field, x.astype(np.float32), y.astype(np.float32), cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)


def round_trip_error(f, g):
    """|p + g(p) + f(p + g(p)) - p|: a point p of b came from q = p + g(p) in a, and the
    forward flow must bring q back to p."""
    h, w = f.shape[:2]
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    qx, qy = x + g[..., 0], y + g[..., 1]
    back = sample(f, qx, qy)
    return np.hypot(qx + back[..., 0] - x, qy + back[..., 1] - y)[8:-8, 8:-8]


def test_inverse_undoes_a_known_smooth_field():
    f = smooth_field()
    err = round_trip_error(f, invert_flow(f))
    assert err.max() < 0.05, err.max()
    # the field varies, so the plain negation -f is not its inverse
    assert round_trip_error(f, -f).max() > 10 * err.max()


def test_inverse_matches_a_backward_farneback_call_on_real_data():
    g = tifffile.imread(need(SAMPLE2))[100:108]
    a, b = g[0], g[4]  # 4 sections apart: motions of a few px
    fwd = estimate_flow(a, b)
    inv = invert_flow(fwd)
    bwd = estimate_flow(b, a)
    diff = np.hypot(*(inv - bwd).transpose(2, 0, 1))
    assert np.abs(fwd).max() > 1.0  # there is motion to invert
    assert np.median(diff) < 0.1 and np.percentile(diff, 99) < 0.5, (
        np.median(diff), np.percentile(diff, 99))


@pytest.mark.parametrize("m", ["of-linear", "of-cubic"])
def test_inverse_restores_real_fibsem_as_well_as_the_papers_two_calls(m):
    g = tifffile.imread(need(SAMPLE2))[:49, :160, :160]
    inv = evaluate_method(g, 4, m)[0]
    two = evaluate_method(g, 4, m, method_params={"backward": "farneback"})[0]
    paper = evaluate_method(g, 4, m, method_params={"backward": "farneback",
                                                    "iterations": PAPER_ITERATIONS})[0]
    linear = evaluate_method(g, 4, m.replace("of-", ""))[0]
    assert abs(inv.ssim - two.ssim) <= 0.002 and abs(inv.psnr - two.psnr) <= 0.05, (inv, two)
    assert inv.ssim >= paper.ssim - 0.002, (inv, paper)
    assert inv.ssim > linear.ssim + 0.01  # the flows still do their job


def test_the_paper_setting_stays_available_and_differs():
    assert FarnebackParams().iterations == 2 < PAPER_ITERATIONS
    paper = create_method("of-linear", backward="farneback", iterations=PAPER_ITERATIONS)
    assert paper.backward == "farneback" and paper.params.iterations == PAPER_ITERATIONS
    rng = np.random.default_rng(0)
    vol = (rng.random((3, 64, 64)) * 255).astype(np.uint8)
    p = {"winsize": 15, "levels": 2}
    fast = reconstruct(vol, "of-linear", 2, method_params=p)
    exact = reconstruct(vol, "of-linear", 2, method_params={**p, "backward": "farneback"})
    assert fast.shape == exact.shape and not np.array_equal(fast, exact)
    assert np.array_equal(fast[::2], exact[::2])  # knots untouched either way


def test_unknown_backward_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="inverse, farneback"):
        create_method("of-cubic", backward="mirror")


def _zup(*args):
    return subprocess.run([sys.executable, "-m", "napari_zup.cli", *map(str, args)],
                          capture_output=True, text=True)


def test_cli_backward_flow_option(tmp_path):
    vol = (np.random.default_rng(1).random((3, 48, 48)) * 255).astype(np.uint8)
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, vol, photometric="minisblack")
    outs = {}
    for how in ("inverse", "farneback"):
        out = tmp_path / f"{how}.tif"
        proc = _zup("reconstruct", src, out, "--method", "of-linear", "--factor", "2",
                    "--winsize", "15", "--levels", "2", "--backward-flow", how)
        assert proc.returncode == 0, proc.stderr
        outs[how] = tifffile.imread(out)
    assert not np.array_equal(outs["inverse"], outs["farneback"])
    bad = _zup("reconstruct", src, tmp_path / "x.tif", "--method", "of-linear", "--factor", "2",
               "--backward-flow", "mirror")
    assert bad.returncode == 2 and "inverse" in bad.stderr and not (tmp_path / "x.tif").exists()
    unused = _zup("reconstruct", src, tmp_path / "y.tif", "--method", "linear", "--factor", "2",
                  "--backward-flow", "farneback")
    assert unused.returncode == 2 and "backward" in unused.stderr, unused.stderr
    assert not (tmp_path / "y.tif").exists()
