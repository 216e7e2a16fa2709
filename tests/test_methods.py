"""Classical and optical-flow methods on synthetic stacks (math) and on real data (quality)."""
import numpy as np
import pytest

from napari_zup import reconstruct
from napari_zup.flow import FarnebackParams, estimate_flow, warp
from napari_zup.methods import create_method, method_names
from napari_zup.methods.classical import blend, catmull_rom_weights

CLASSIC = ["nearest", "linear", "cubic", "of-linear", "of-cubic"]
SMALL_OF = {"winsize": 15, "levels": 2}


def params(m):
    return SMALL_OF if m.startswith("of-") else {}


def ramp_stack(dtype=np.uint8, n=6):
    z = np.arange(n, dtype=np.float64)[:, None, None] * 20 + 10
    return np.broadcast_to(z, (n, 24, 20)).astype(dtype)


def test_registry_lists_the_classical_and_flow_methods():
    assert set(CLASSIC) <= set(method_names())


@pytest.mark.parametrize("m", CLASSIC)
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_knots_are_copied_and_dtype_kept(m, dtype):
    rng = np.random.default_rng(1)
    vol = (rng.random((5, 33, 31)) * 200).astype(dtype)
    out = reconstruct(vol, m, 3, method_params=params(m))
    assert out.dtype == vol.dtype
    assert out.shape == (13, 33, 31)
    np.testing.assert_array_equal(out[::3], vol)


@pytest.mark.parametrize("m", ["linear", "cubic", "of-linear", "of-cubic"])
def test_linear_ramp_along_z_is_reproduced(m):
    # intensity linear in z, constant in y/x: every method (flow ~ 0) must give the ramp
    vol = ramp_stack(np.float32)
    out = reconstruct(vol, m, 4, method_params=params(m))
    expected = (np.arange(out.shape[0]) / 4 * 20 + 10)[:, None, None]
    interior = slice(4, -4) if "cubic" in m else slice(None)  # clamped ends bend the ramp
    np.testing.assert_allclose(out[interior], np.broadcast_to(expected, out.shape)[interior],
                               atol=1e-3)


def test_nearest_picks_nearest_slice():
    vol = ramp_stack(np.uint8, 3)
    out = reconstruct(vol, "nearest", 4)
    assert [int(s[0, 0]) for s in out] == [10, 10, 10, 30, 30, 30, 30, 50, 50]


def test_catmull_rom_weights_partition_unity_and_interpolate():
    for t in np.linspace(0, 1, 11):
        w = catmull_rom_weights(t)
        assert sum(w) == pytest.approx(1.0)
    assert catmull_rom_weights(0.0) == pytest.approx((0, 1, 0, 0))
    assert catmull_rom_weights(0.5) == pytest.approx((-0.0625, 0.5625, 0.5625, -0.0625))


def test_blend_rounds_and_saturates_like_numpy():
    rng = np.random.default_rng(0)
    ims = [rng.integers(0, 256, (50, 60), dtype=np.uint8) for _ in range(4)]
    w = catmull_rom_weights(0.3)
    ref = np.clip(np.rint(sum(wi * im.astype(np.float64) for wi, im in zip(w, ims))), 0, 255)
    got = blend(ims, w, np.uint8)
    assert np.abs(got.astype(int) - ref).max() <= 1  # float32 accumulation


def shifted_pair(shift=4):
    rng = np.random.default_rng(3)
    base = rng.random((96, 96)).astype(np.float32)
    import cv2

    base = cv2.GaussianBlur(base, (0, 0), 2.0)
    base = ((base - base.min()) / (base.max() - base.min()) * 255).astype(np.uint8)
    return base, np.roll(base, shift, axis=1)


def test_farneback_finds_a_known_shift_on_uint8_and_float():
    a, b = shifted_pair(4)
    p = FarnebackParams(winsize=21, levels=3)
    fl = estimate_flow(a, b, p)
    assert np.median(fl[20:-20, 20:-20, 0]) == pytest.approx(4, abs=0.5)
    assert np.median(np.abs(fl[20:-20, 20:-20, 1])) < 0.5
    # float input in [0, 1] is rescaled to 0..255 (raw [0,1] floats give ~zero flow)
    fl2 = estimate_flow(a / 255.0, b / 255.0, p, value_range=(0.0, 1.0))
    assert np.median(fl2[20:-20, 20:-20, 0]) == pytest.approx(4, abs=0.5)


def test_warp_moves_image_along_flow():
    a, b = shifted_pair(4)
    flow = np.zeros(a.shape + (2,), np.float32)
    flow[..., 0] = 4
    moved = warp(a.astype(np.float32), flow, -1.0)  # out(x) = a(x - 4): a shifted right by 4
    np.testing.assert_allclose(moved[:, 8:-8], b[:, 8:-8].astype(np.float32), atol=1e-3)


@pytest.mark.parametrize("m", ["of-linear", "of-cubic"])
def test_flow_methods_restore_moving_structure_better_than_blending(m):
    # a pattern moving 2 px per slice in x: flow-compensated slices are sharp, blends are not
    rng = np.random.default_rng(5)
    import cv2

    base = cv2.GaussianBlur(rng.random((80, 120)).astype(np.float32), (0, 0), 1.5)
    base = ((base - base.min()) / np.ptp(base) * 255)
    truth = np.stack([np.roll(base, 2 * z, axis=1) for z in range(13)]).astype(np.uint8)
    sparse = truth[::4]
    p = {"winsize": 21, "levels": 3}
    err_of = np.abs(reconstruct(sparse, m, 4, method_params=p).astype(float) - truth)[:, 10:-10, 20:-20].mean()
    base_m = m.replace("of-", "")
    err_cl = np.abs(reconstruct(sparse, base_m, 4).astype(float) - truth)[:, 10:-10, 20:-20].mean()
    assert err_of < 0.5 * err_cl


def test_flows_are_returned_per_slice_when_asked():
    a, b = shifted_pair(3)
    vol = np.stack([a, b, np.roll(b, 3, axis=1)])
    from napari_zup import iter_reconstruct

    items = list(iter_reconstruct(vol, "of-linear", 2, method_params={"winsize": 21},
                                  want_flows=True))
    assert [i for i, *_ in items] == [0, 1, 2, 3, 4]
    z, sl, fl = items[1]
    assert fl.shape == a.shape + (2,)
    assert np.median(fl[20:-20, 20:-20, 0]) == pytest.approx(3, abs=0.5)


def test_unknown_method_and_bad_params_say_what_is_accepted():
    with pytest.raises(ValueError, match="unknown method 'bogus'.*linear"):
        create_method("bogus")
    with pytest.raises(ValueError, match="poly_n"):
        create_method("of-linear", poly_n=9)
    with pytest.raises(ValueError, match="bad parameters"):
        create_method("linear", winsize=3)
