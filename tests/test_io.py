"""Reading and writing with voxel sizes; atomic writes; bad files."""
import os

import numpy as np
import pytest
import tifffile

from napari_zup.io import VolumeReadError, read_volume, write_volume

from ._data import ISBI, VNC, need


def test_reads_imagej_voxel_size_of_real_sstem_stacks():
    v = read_volume(need(ISBI))
    assert v.data.shape == (30, 512, 512)
    assert v.voxel_size == pytest.approx((50.0, 4.0, 4.0))
    assert round(v.anisotropy) == 12
    v2 = read_volume(need(VNC), lazy=True)
    assert hasattr(v2.data, "dask")
    assert v2.voxel_size == pytest.approx((50.0, 4.6, 4.6), rel=1e-3)
    np.testing.assert_array_equal(np.asarray(v2.data[3, :5, :5]),
                                  tifffile.imread(VNC, key=3)[:5, :5])


@pytest.mark.parametrize("ext", ["tif", "zarr"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_round_trip_keeps_data_and_voxel_size(tmp_path, ext, dtype):
    a = (np.random.default_rng(0).random((7, 20, 30)) * 1000).astype(dtype)
    p = write_volume(tmp_path / f"x.{ext}", a, (12.5, 4.0, 4.0), metadata={"method": "t"})
    v = read_volume(p)
    np.testing.assert_array_equal(np.asarray(v.data), a)
    assert v.voxel_size == pytest.approx((12.5, 4.0, 4.0))
    assert os.listdir(tmp_path) == [f"x.{ext}"]  # no temporary left behind


def test_ome_tiff_voxel_size_is_read(tmp_path):
    a = np.zeros((3, 8, 8), np.uint8)
    p = tmp_path / "ome.tif"
    tifffile.imwrite(p, a, ome=True, metadata={"axes": "ZYX", "PhysicalSizeX": 0.005,
                                                 "PhysicalSizeY": 0.005, "PhysicalSizeZ": 0.03})
    v = read_volume(p)
    assert v.voxel_size == pytest.approx((30.0, 5.0, 5.0))


def test_existing_output_is_refused_unless_overwrite(tmp_path):
    a = np.zeros((3, 8, 8), np.uint8)
    p = write_volume(tmp_path / "x.tif", a)
    with pytest.raises(FileExistsError, match="overwrite"):
        write_volume(p, a + 1)
    assert tifffile.imread(p).max() == 0
    write_volume(p, a + 1, overwrite=True)
    assert tifffile.imread(p).max() == 1


def test_failed_streaming_write_leaves_nothing_that_looks_complete(tmp_path):
    def slices():
        yield 0, np.zeros((8, 8), np.uint8)
        raise RuntimeError("boom")

    for ext in ("tif", "zarr"):
        with pytest.raises(RuntimeError):
            write_volume(tmp_path / f"y.{ext}", slices(), shape=(3, 8, 8), dtype=np.uint8)
    assert os.listdir(tmp_path) == []


def test_incomplete_iterator_is_an_error(tmp_path):
    items = ((z, np.zeros((4, 4), np.uint8)) for z in range(2))
    with pytest.raises(ValueError, match="incomplete"):
        write_volume(tmp_path / "z.tif", items, shape=(3, 4, 4), dtype=np.uint8)
    assert not (tmp_path / "z.tif").exists()


def test_unwritable_or_missing_folder(tmp_path, monkeypatch):
    a = np.zeros((2, 4, 4), np.uint8)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_volume(tmp_path / "nope" / "x.tif", a)
    ro = tmp_path / "ro"
    ro.mkdir()
    # root ignores permission bits, so report the folder as unwritable the way os does
    import napari_zup.io as zio

    real_access = os.access
    monkeypatch.setattr(zio.os, "access",
                        lambda p, mode: False if str(p) == str(ro) else real_access(p, mode))
    with pytest.raises(PermissionError, match="not writable"):
        write_volume(ro / "x.tif", a)
    assert list(ro.iterdir()) == []


def test_corrupt_and_unknown_files_give_clear_errors(tmp_path):
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"II*\x00garbage")
    with pytest.raises(VolumeReadError, match="truncated or corrupt"):
        read_volume(bad)
    good = tmp_path / "cut.tif"
    tifffile.imwrite(good, np.zeros((5, 64, 64), np.uint8), imagej=True)
    cut = tmp_path / "cut2.tif"
    cut.write_bytes(good.read_bytes()[:3000])
    with pytest.raises(VolumeReadError):
        np.asarray(read_volume(cut).data)
    with pytest.raises(VolumeReadError, match="unsupported file type"):
        (tmp_path / "a.png").write_bytes(b"x")
        read_volume(tmp_path / "a.png")
    with pytest.raises(VolumeReadError, match="does not exist"):
        read_volume(tmp_path / "missing.tif")


def test_atomic_output_replaces_on_success_and_leaves_nothing_on_failure(tmp_path):
    from napari_zup.io import atomic_output

    target = tmp_path / "out.txt"
    target.write_text("old")
    with atomic_output(target) as part:
        assert part.parent == tmp_path and part.name == f".out.txt.partial-{os.getpid()}"
        part.write_text("new")
        assert target.read_text() == "old"  # the real name changes only at the end
    assert target.read_text() == "new" and sorted(os.listdir(tmp_path)) == ["out.txt"]
    store = tmp_path / "s.zarr"
    (store / "old").mkdir(parents=True)
    with atomic_output(store) as part:  # a folder replaces a folder
        (part / "new").mkdir(parents=True)
    assert sorted(os.listdir(store)) == ["new"]
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_output(target) as part:
            part.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "new" and sorted(os.listdir(tmp_path)) == ["out.txt", "s.zarr"]


def test_one_unit_table_names_sizes_and_symbols():
    from napari_zup.io import short_unit, unit_symbol, unit_to_nm

    for name in ("micrometer", "micron", "µm", "μm", "um", "UM", "\\u00B5m"):
        assert (short_unit(name), unit_symbol(name), unit_to_nm(name)) == ("um", "µm", 1e3)
    assert (short_unit("nanometer"), unit_symbol("nanometer"), unit_to_nm("nm")) == \
        ("nm", "nm", 1.0)
    assert (short_unit("millimeter"), unit_to_nm("mm")) == ("mm", 1e6)
    assert (short_unit("angstrom"), unit_symbol("angstrom"), unit_to_nm("Å")) == \
        ("angstrom", "Å", 0.1)
    assert short_unit("pixel") is None and unit_symbol("parsec") is None
    assert unit_to_nm("pixel") == 1.0
    with pytest.raises(VolumeReadError, match="unknown length unit 'inch'"):
        unit_to_nm("inch")
