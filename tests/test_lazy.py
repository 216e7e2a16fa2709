"""Lazy (on-demand) output equals the eager one and reads only what a slice needs."""
import numpy as np
import pytest
import tifffile

from napari_zup import reconstruct
from napari_zup._sample_data import sample_path
from napari_zup.lazy import lazy_reconstruct


@pytest.fixture(scope="module")
def stack():
    return tifffile.imread(str(sample_path()))[::4, :128, :160].copy()  # 33 real knots


class CountingVolume:
    """A read-only volume that records every region read (stands in for a huge store)."""

    def __init__(self, data):
        self.data, self.shape, self.dtype, self.reads = data, data.shape, data.dtype, []

    def __getitem__(self, key):
        self.reads.append(key)
        return self.data[key]


@pytest.mark.parametrize("method, params", [("linear", None), ("cubic", None),
                                            ("of-linear", {"winsize": 21, "levels": 2})])
def test_lazy_equals_eager(stack, method, params):
    eager = reconstruct(stack, method, 4, method_params=params, tile_size=64)
    lazy = reconstruct(stack, method, 4, method_params=params, tile_size=64, lazy=True)
    assert lazy.shape == eager.shape and lazy.dtype == eager.dtype
    np.testing.assert_array_equal(lazy[41].compute(), eager[41])  # one restored slice
    np.testing.assert_array_equal(lazy[:, 70].compute(), eager[:, 70])  # one xz plane
    np.testing.assert_array_equal(lazy.compute(), eager)


def test_learned_lazy_equals_eager(stack):
    small = stack[:5, :64, :64]
    eager = reconstruct(small, "film", 2, method_params={"device": "cpu"})
    lazy = lazy_reconstruct(small, "film", 2, method_params={"device": "cpu"})
    np.testing.assert_allclose(lazy.compute().astype(float), eager, atol=1)


def test_one_slice_reads_only_its_knots_and_tile(stack):
    vol = CountingVolume(stack)
    lazy = lazy_reconstruct(vol, "cubic", 4, tile_size=64)
    assert vol.reads == []  # building the array reads nothing (uint8: no value-range pass)
    lazy[4 * 10 + 2, :64, :64].compute()  # output slice 42: between knots 10 and 11
    zs = {(k[0].start, k[0].stop) for k in vol.reads}
    assert zs == {(9, 13)}  # the interval's two knots and cubic's one knot each side
    ys = {(k[1].start, k[1].stop) for k in vol.reads}
    assert ys == {(0, 64)} and len(vol.reads) == 1


def test_on_demand_volume_never_blocks_and_fills_in(stack):
    import threading
    import time

    from napari_zup.lazy import OnDemandVolume

    eager = reconstruct(stack, "of-linear", 4, method_params={"winsize": 21, "levels": 2},
                        tile_size=64)
    arrived = threading.Event()
    view = OnDemandVolume(lazy_reconstruct(stack, "of-linear", 4, tile_size=64,
                                           method_params={"winsize": 21, "levels": 2}),
                          on_ready=arrived.set, placeholder=0)
    try:
        first = view[57]  # nothing computed yet: the placeholder, without waiting for it
        assert first.shape == eager[57].shape and not first.any()
        deadline = time.time() + 120
        while not view.ready(57) and time.time() < deadline:
            arrived.wait(1)
            arrived.clear()
        assert view.ready(57)
        np.testing.assert_array_equal(view[57], eager[57])
        np.testing.assert_array_equal(view[57, 10:70, 30:100], eager[57, 10:70, 30:100])
        assert not view.ready(3)  # other slabs were not computed
        xz = view[:, 40]  # an xz plane: placeholder where not yet computed
        assert xz.shape == (eager.shape[0], eager.shape[2])
        np.testing.assert_array_equal(xz[56:60], eager[56:60, 40])
    finally:
        view.close()


def test_a_volume_larger_than_ram_reads_only_the_chunks_a_slice_needs(stack):
    """A Zarr volume larger than this machine's memory (unwritten chunks read as 0: the
    store holds only what the test wrote) opened as napari-zup's reader opens OME-Zarr
    (dask.array.from_zarr): building the lazy output reads nothing, and one output slice reads
    only the chunks of its two knots (linear) or of its two knots and their halo tiles
    (of-linear), never the volume."""
    import math

    import dask.array as da
    import psutil
    import zarr

    class CountingStore(zarr.storage.WrapperStore):
        def __init__(self, store):
            super().__init__(store)
            self.keys = []

        async def get(self, key, prototype, byte_range=None):
            self.keys.append(key)
            return await self._store.get(key, prototype, byte_range)

    edge, chunk = 4096, 1024
    depth = math.ceil(1.2 * psutil.virtual_memory().total / edge**2)  # > RAM in bytes
    store = CountingStore(zarr.storage.MemoryStore())
    arr = zarr.create_array(store, shape=(depth, edge, edge), chunks=(1, chunk, chunk),
                            dtype="uint8", fill_value=0, compressors=None)
    assert arr.nbytes > psutil.virtual_memory().total
    k = depth // 2
    knots = np.tile(stack[10:12], (1, 8, 7))[:, :chunk, :chunk]  # real sections
    arr[k:k + 2, :chunk, :chunk] = knots
    store.keys.clear()

    lazy = lazy_reconstruct(da.from_zarr(arr), "linear", 4)
    assert lazy.shape == (4 * (depth - 1) + 1, edge, edge)
    assert store.keys == []  # nothing read to build it
    out = lazy[4 * k + 1, :chunk, :chunk].compute()
    read = {tuple(int(i) for i in key.split("/")[1:]) for key in store.keys
            if key.startswith("c/")}
    assert read == {(k, 0, 0), (k + 1, 0, 0)}
    np.testing.assert_array_equal(out, reconstruct(knots, "linear", 4)[1])

    store.keys.clear()
    lazy = lazy_reconstruct(da.from_zarr(arr), "of-linear", 4,
                            method_params={"winsize": 21, "levels": 2})
    out = lazy[4 * k + 2, :chunk, :chunk].compute()
    read = {tuple(int(i) for i in key.split("/")[1:]) for key in store.keys
            if key.startswith("c/")}
    assert {z for z, _, _ in read} == {k, k + 1}  # its two knots only
    assert len(read) <= 2 * 4  # their chunk and the neighbours the halo reaches
    assert out.any()
