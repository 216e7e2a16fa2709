"""Intensity normalisation of the learned methods (napari_zup.intensity): a stack's
percentiles mapped to the training data's, one map per volume, the same in every driver."""
import numpy as np
import pytest
import tifffile

from napari_zup.checkpoints import default_checkpoint, peek_metadata
from napari_zup.engine import reconstruct
from napari_zup.intensity import (PERCENTILES, IntensityMap, input_range_for, matching_range,
                                  reference_of, sample_values)
from napari_zup.methods.base import create_method


@pytest.fixture(scope="module", autouse=True)
def _threads(one_torch_thread):
    """One torch thread for the whole module (conftest.one_torch_thread)."""


@pytest.fixture(scope="module")
def crop():
    """A real FlyEM crop (the bundled sample, CC-BY): 9 x 64 x 64, uint8."""
    from importlib import resources

    path = resources.files("napari_zup") / "data" / "flyem_medulla_sample1_crop_10nm.tif"
    return np.ascontiguousarray(tifffile.imread(str(path))[:9, 40:104, 40:104])


def _low_contrast(vol, c=0.5):
    """Contrast ``c`` about the mean, as EVALUATION.md's "contrast" degradation."""
    m = float(vol.mean())
    return np.clip(np.rint(c * (vol.astype(np.float64) - m) + m), 0, 255).astype(np.uint8)


def test_matching_range_puts_the_percentiles_on_the_reference():
    rng = np.random.default_rng(0)
    values = rng.normal(100, 20, 20000)
    lo, hi = matching_range(values, (0.25, 0.75))
    p = (np.percentile(values, PERCENTILES) - lo) / (hi - lo)
    assert p == pytest.approx([0.25, 0.75], abs=1e-9)
    assert matching_range(np.full(100, 7.0), (0.25, 0.75)) is None  # constant: no map
    # more contrast than the training data: never squeezed, only centred
    wide = rng.normal(128, 60, 20000)
    lo, hi = matching_range(wide, (0.25, 0.75), value_span=255.0)
    assert hi - lo == pytest.approx(255.0)
    p = (np.percentile(wide, PERCENTILES) - lo) / (hi - lo)
    assert p.mean() == pytest.approx(0.5) and p[1] - p[0] > 0.5
    # continuous where the gain reaches 1
    a = matching_range(values, (0.25, 0.75), value_span=np.ptp(np.percentile(values,
                                                                              PERCENTILES)) * 2)
    b = matching_range(values, (0.25, 0.75), value_span=np.ptp(np.percentile(values,
                                                                              PERCENTILES)) * 2.0001)
    assert a == pytest.approx(b, abs=1e-2)


def test_sample_is_bounded_and_reads_only_the_slices_it_samples():
    import dask.array as da

    reads = []
    vol = da.from_array(np.arange(40 * 300 * 300, dtype=np.float32).reshape(40, 300, 300),
                        chunks=(1, 300, 300))
    vol = vol.map_blocks(lambda b, block_info=None: reads.append(block_info[0]["chunk-location"])
                         or b, dtype=np.float32)
    values = sample_values(vol, max_slices=5, max_side=100)
    assert values.size == 5 * 100 * 100
    assert sorted({r[0] for r in reads}) == [0, 10, 20, 29, 39]


def test_every_bundled_checkpoint_has_a_reference():
    for m in ("film", "tsain", "niiv", "a2i"):
        ref = reference_of(peek_metadata(default_checkpoint(m)))
        assert ref is not None and 0 < ref[0] < ref[1] < 1, m
    assert reference_of({}) is None and reference_of({"intensity": {"values": [0.5, 0.5]}}) is None


@pytest.mark.parametrize("method", ["film", "niiv"])
def test_learned_output_follows_a_contrast_change_of_the_input(crop, method):
    """Normalised, a stack at half contrast gives (nearly) the half-contrast result of the
    original: the model sees the same input both times. Without the map it sees a stack unlike
    its training data, and its result differs more (the failure this fixes)."""
    low = _low_contrast(crop)
    base = reconstruct(crop, method, 4, method_params={"device": "cpu"})
    expect = _low_contrast(base).astype(np.float64)
    mask = np.ones(len(base), bool)
    mask[::4] = False  # restored slices only
    err = {}
    for norm in (True, False):
        out = reconstruct(low, method, 4, method_params={"device": "cpu", "normalize": norm})
        err[norm] = float(np.abs(out[mask].astype(np.float64) - expect[mask]).mean())
    assert err[True] < 0.25, err  # grey levels (measured 0.07-0.10; rounding twice)
    assert err[True] < 0.75 * err[False], err


def test_map_is_fitted_once_per_volume_so_tiles_agree(crop):
    """Tiles of one volume share the map: tiled equals untiled as without normalisation."""
    low = _low_contrast(crop, 0.6)
    a = reconstruct(low, "film", 4, method_params={"device": "cpu"})
    b = reconstruct(low, "film", 4, method_params={"device": "cpu"}, tile_size=32)
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 0.5


def test_given_input_range_wins_and_bad_one_is_refused(crop):
    m = create_method("niiv", device="cpu", input_range=[10, 200])
    m.prepare(crop)
    assert m.normalization.input_range == (10.0, 200.0)
    assert "given" in m.notes()[0]
    m2 = create_method("niiv", device="cpu")
    m2.prepare(crop)
    assert m2.normalization.input_range == pytest.approx(
        input_range_for(crop, m2.metadata))
    assert "--param normalize=false" in m2.notes()[0]
    with pytest.raises(ValueError, match="input_range"):
        IntensityMap({}, input_range=[5, 5])


def test_cluster_client_fits_the_map_once_for_all_workers(crop):
    """The cluster runner's workers get the client's map as ``input_range``."""
    from napari_zup.distributed.client import _fit_input_range
    from napari_zup.methods.base import get_info

    params = {}
    _fit_input_range(get_info("film"), params, crop)
    assert params["input_range"] == pytest.approx(
        list(input_range_for(crop, peek_metadata(default_checkpoint("film")))))
    off = {"normalize": False}
    _fit_input_range(get_info("film"), off, crop)
    assert "input_range" not in off
    lin = {}
    _fit_input_range(get_info("linear"), lin, crop)
    assert lin == {}


def test_training_records_and_applies_the_reference(tmp_path):
    """From scratch the reference is the training stacks' own; fine-tuning keeps the starting
    checkpoint's, and the stacks are mapped to it as inference maps them."""
    from napari_zup.checkpoints import load_checkpoint
    from napari_zup.intensity import normalise_unit_stack
    from napari_zup.training.session import Stack, _normalise_stacks

    rng = np.random.default_rng(1)
    a = Stack(rng.uniform(0.4, 0.6, (6, 32, 32)).astype(np.float32), "a")
    meta, (na,), _ = _normalise_stacks([a], None, None)
    assert meta["values"] == pytest.approx(np.percentile(sample_values(a.data), PERCENTILES),
                                           abs=1e-4)
    assert np.allclose(na.data, a.data, atol=1e-3)  # one stack: its own range, unchanged
    _, bundled = load_checkpoint(default_checkpoint("film"))
    meta2, (nb,), _ = _normalise_stacks([a], None, bundled)
    assert meta2["values"] == bundled["intensity"]["values"]
    ref = reference_of(bundled)
    assert np.array_equal(nb.data, normalise_unit_stack(a.data, ref))
    assert np.percentile(sample_values(nb.data), PERCENTILES) == pytest.approx(ref, abs=0.01)
    assert a.data.min() >= 0.4  # the caller's stack is not changed
