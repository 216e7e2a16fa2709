"""flow.volume_flows: the one per-pair flow loop of zup flow and the Flow widget."""
import numpy as np
import pytest

from napari_zup.flow import FarnebackParams, estimate_flow, volume_flows

P = FarnebackParams(winsize=15)


class _CountingVolume:
    """A (z, y, x) array that counts slice reads."""

    def __init__(self, a):
        self.a, self.reads, self.shape, self.dtype = a, [], a.shape, a.dtype

    def __getitem__(self, k):
        self.reads.append(k)
        return self.a[k]


def _float_stack():
    rng = np.random.default_rng(0)
    a = np.zeros((4, 64, 64), np.float32)
    a[:, 20:40, 20:40] = 1.0
    for z in range(1, 4):
        a[z] = np.roll(a[0], 2 * z, axis=1)
    return a + rng.random(a.shape, np.float32) * 0.1 + np.arange(4)[:, None, None] * 0.3


def test_volume_flows_take_the_value_range_once_per_volume():
    a = _float_stack()
    vr = (float(a.min()), float(a.max()))
    got = list(volume_flows(a, [0, 2], P))
    assert [k for k, _ in got] == [0, 2]
    for k, flow in got:
        assert flow.shape == (64, 64, 2) and flow.dtype == np.float32
        np.testing.assert_array_equal(flow, estimate_flow(a[k], a[k + 1], P, vr))
    # a given range is used as it is, and not looked up from the data
    np.testing.assert_array_equal(next(iter(volume_flows(a, [1], P, (0.0, 10.0))))[1],
                                  estimate_flow(a[1], a[2], P, (0.0, 10.0)))


def test_volume_flows_read_a_shared_slice_once_and_refuse_nan_at_the_call():
    a = (_float_stack() * 60).astype(np.uint8)
    vol = _CountingVolume(a)
    flows = [k for k, _ in volume_flows(vol, range(3), P)]
    assert flows == [0, 1, 2] and vol.reads == [0, 1, 2, 3]
    bad = _float_stack()
    bad[2, 5, 5] = np.nan
    with pytest.raises(ValueError, match="1 NaN/inf voxels"):
        volume_flows(bad, [0], P)  # before any flow is computed
