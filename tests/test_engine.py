"""The streaming tiled engine: z order, tiling, cancellation, validation."""
import threading

import dask.array as da
import numpy as np
import pytest
import tifffile

from napari_zup import iter_reconstruct, reconstruct
from napari_zup.engine import ReconstructionCancelled, check_fits_in_memory, make_plan

from ._data import SAMPLE2, need


@pytest.fixture(scope="module")
def real_crop():
    g = tifffile.imread(need(SAMPLE2))
    return g[:33:4, :160, :176].copy()  # 9 knots of real FIB-SEM (40 nm z step), odd tiles


@pytest.mark.parametrize("method,params,tol", [
    ("nearest", {}, 0), ("linear", {}, 0), ("cubic", {}, 0),
    ("of-linear", {"winsize": 21, "levels": 2}, 0.05),
    ("of-cubic", {"winsize": 21, "levels": 2}, 0.05),
])
def test_tiled_equals_untiled(real_crop, method, params, tol):
    """Pointwise methods: identical. Flow methods (stated tolerance): mean |diff| <= 0.05 grey
    levels, 99.9% of voxels within 2, none off by more than 8 (Farnebäck's pyramid reaches
    far; the halo from FarnebackParams.halo keeps tiles within rounding of untiled)."""
    full = reconstruct(real_crop, method, 4, method_params=params)
    tiled = reconstruct(real_crop, method, 4, method_params=params, tile_size=64)
    diff = np.abs(full.astype(float) - tiled)
    assert diff.mean() <= tol
    if tol:
        assert np.percentile(diff, 99.9) <= 2
        assert diff.max() <= 8
        assert full.std() > 10  # real structure, not a flat image


def test_dask_input_follows_chunks_and_matches_numpy(real_crop):
    d = da.from_array(real_crop, chunks=(1, 80, 88))
    plan = make_plan(d, "linear", 4)
    assert plan.tile == (80, 88)
    np.testing.assert_array_equal(reconstruct(d, "linear", 4), reconstruct(real_crop, "linear", 4))


def test_slices_stream_in_z_order_before_the_run_ends(real_crop):
    it = iter_reconstruct(real_crop, "of-linear", 4, method_params={"winsize": 15})
    first = next(it)
    assert first[0] == 0
    rest = [i for i, _ in it]
    assert rest == list(range(1, 33))


def test_cancel_stops_promptly_and_raises(real_crop):
    cancel = threading.Event()
    got = []
    with pytest.raises(ReconstructionCancelled):
        for i, _ in iter_reconstruct(real_crop, "of-cubic", 4, cancel=cancel, tile_size=64,
                                     method_params={"winsize": 15}, workers=1):
            got.append(i)
            if i == 5:
                cancel.set()
    assert got[-1] <= 8  # stopped within the slab in flight
    assert len(got) < 33


def test_closing_the_iterator_stops_the_pool(real_crop):
    it = iter_reconstruct(real_crop, "linear", 4)
    next(it)
    it.close()  # must not hang or raise
    assert threading.active_count() < 20


def test_fractional_factor_grid(real_crop):
    out = reconstruct(real_crop, "of-linear", 2.5, method_params={"winsize": 15})
    assert out.shape[0] == int((len(real_crop) - 1) * 2.5) + 1
    np.testing.assert_array_equal(out[::5], real_crop[::2])


@pytest.mark.parametrize("shape,match", [
    ((20, 30), "2D image"),
    ((4, 20, 30, 3), "RGB"),
    ((2, 4, 20, 30), "4 dimensions"),
    ((1, 20, 30), "at least 2 slices"),
])
def test_bad_shapes_are_refused(shape, match):
    with pytest.raises(ValueError, match=match):
        reconstruct(np.zeros(shape, np.uint8), "linear", 2)


def test_nan_voxels_are_refused():
    vol = np.ones((3, 8, 8), np.float32)
    vol[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="1 NaN/inf voxels"):
        reconstruct(vol, "linear", 2)


def test_input_is_never_modified(real_crop):
    before = real_crop.copy()
    reconstruct(real_crop, "of-cubic", 3, method_params={"winsize": 15})
    np.testing.assert_array_equal(before, real_crop)


def test_output_too_large_for_memory_points_to_zarr():
    with pytest.raises(MemoryError, match="Zarr"):
        check_fits_in_memory(10 ** 15)
    big = da.zeros((1000, 100_000, 100_000), dtype=np.uint8, chunks=(1, 1000, 1000))
    with pytest.raises(MemoryError, match="would need"):
        reconstruct(big, "linear", 4)
