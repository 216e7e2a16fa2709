"""napari reader, writer and sample data: voxel size survives open -> save -> open."""
import numpy as np
import pytest
import tifffile

from napari_zup._reader import get_reader, read_layer_data
from napari_zup._sample_data import SAMPLE_FACTOR, anisotropic_sample, isotropic_sample
from napari_zup.io import read_volume, write_volume

from ._data import SAMPLE1, VNC, need

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def crop():
    """A real FIB-SEM crop (no synthetic data)."""
    return tifffile.imread(need(SAMPLE1))[:12, :64, :80]


def test_get_reader_claims_the_formats_it_reads_only(tmp_path):
    for name in ("a.tif", "a.TIFF", "a.zarr", "a.h5", "a.HDF5", "a.hdf", "a.mrc", "a.rec",
                 "a.map", "a.h5:/volumes/raw"):
        assert get_reader(str(tmp_path / name)) is read_layer_data, name
    assert get_reader(str(tmp_path / "a.png")) is None
    assert get_reader([str(tmp_path / "a.tif"), str(tmp_path / "b.tif")]) is None
    slices = tmp_path / "slices"
    slices.mkdir()
    assert get_reader(str(slices)) is None  # an empty folder is no volume
    tifffile.imwrite(slices / "s1.tif", np.zeros((4, 4), np.uint8))
    assert get_reader(str(slices)) is read_layer_data
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("x")
    assert get_reader(str(other)) is None


def _slices(folder, stack, voxel=None):
    folder.mkdir()
    for z, sl in enumerate(stack):  # unpadded numbers: natural order is not lexical order
        kw = {}
        if voxel:
            kw = {"imagej": True, "resolution": (1 / voxel[2], 1 / voxel[1]),
                  "metadata": {"spacing": voxel[0], "unit": "nm"}}
        tifffile.imwrite(folder / f"z{z + 1}.tif", sl, **kw)
    return folder


def test_viewer_opens_a_slice_folder_with_scale_and_units(make_napari_viewer, tmp_path, crop):
    folder = _slices(tmp_path / "slices", crop, (40.0, 10.0, 10.0))
    viewer = make_napari_viewer()
    from napari.plugins import _npe2

    assert "napari-zup" in _npe2.get_readers(str(folder))  # offered when a folder is dropped
    layer, = viewer.open(str(folder), plugin="napari-zup")
    np.testing.assert_array_equal(np.asarray(layer.data), crop)
    assert tuple(layer.scale) == pytest.approx((40.0, 10.0, 10.0))
    assert tuple(str(u) for u in layer.units) == ("nanometer",) * 3
    assert layer.name == "slices"


def test_viewer_opens_every_3d_dataset_of_an_hdf5_file(make_napari_viewer, tmp_path, crop):
    import h5py

    p = tmp_path / "sample_A.hdf"
    labels = (crop > 128).astype(np.uint64)
    with h5py.File(p, "w") as f:
        f.create_dataset("volumes/raw", data=crop).attrs["resolution"] = (40.0, 4.0, 4.0)
        f.create_dataset("volumes/labels/neuron_ids", data=labels).attrs["resolution"] = (
            40.0, 4.0, 4.0)
    viewer = make_napari_viewer()
    layers = viewer.open(str(p), plugin="napari-zup")
    by_name = {lay.name: lay for lay in layers}
    raw = by_name["sample_A.hdf:/volumes/raw"]
    ids = by_name["sample_A.hdf:/volumes/labels/neuron_ids"]
    assert type(raw).__name__ == "Image" and type(ids).__name__ == "Labels"
    np.testing.assert_array_equal(np.asarray(raw.data), crop)
    np.testing.assert_array_equal(np.asarray(ids.data), labels)
    for lay in (raw, ids):
        assert tuple(lay.scale) == pytest.approx((40.0, 4.0, 4.0))
    # napari's open() wants an existing path; the reader itself also takes "file:/dataset"
    (data, kw, kind), = read_layer_data(f"{p}:/volumes/raw")
    assert kind == "image" and kw["name"] == "sample_A.hdf:/volumes/raw"


def test_viewer_opens_mrc_with_header_voxel_size(make_napari_viewer, tmp_path, crop):
    import mrcfile

    p = tmp_path / "tomo.mrc"
    with mrcfile.new(p) as m:
        m.set_data(crop.astype(np.int16))
        m.voxel_size = (40.0, 40.0, 160.0)  # x, y, z in Ångström
    viewer = make_napari_viewer()
    layer, = viewer.open(str(p), plugin="napari-zup")
    assert tuple(layer.scale) == pytest.approx((16.0, 4.0, 4.0))
    np.testing.assert_array_equal(np.asarray(layer.data), crop)
    # no other reader claims .mrc: dropping it opens it with napari-zup, no dialog
    from napari.plugins import _npe2
    from qtpy.QtCore import QUrl

    assert "napari-zup" in _npe2.get_readers(str(p))
    viewer.window._qt_viewer._open_from_list_of_urls_data(
        [QUrl.fromLocalFile(str(p))], stack=False, choose_plugin=False)
    dropped = viewer.layers[-1]
    assert dropped is not layer and dropped.source.reader_plugin == "napari-zup"
    assert tuple(dropped.scale) == pytest.approx((16.0, 4.0, 4.0))


def test_reader_error_names_the_odd_slice(tmp_path, crop):
    from napari_zup.io import VolumeReadError

    folder = _slices(tmp_path / "odd", crop)
    tifffile.imwrite(folder / "z5.tif", crop[4, :-2])
    with pytest.raises(VolumeReadError, match="'z5.tif' is"):
        read_layer_data(str(folder))


def test_reader_gives_scale_units_and_lazy_data_for_real_stack():
    (data, kw, kind), = read_layer_data(str(need(VNC)))
    assert kind == "image"
    assert data.shape == (20, 1024, 1024)
    assert kw["scale"] == pytest.approx((50.0, 4.6, 4.6), rel=1e-3)
    assert kw["units"] == ("nm", "nm", "nm")
    assert kw["metadata"]["zup"]["voxel_size"] == pytest.approx([50.0, 4.6, 4.6], rel=1e-3)


def test_large_tiff_opens_lazily(tmp_path, monkeypatch, crop):
    import napari_zup.io as io

    p = write_volume(tmp_path / "c.tif", crop, (40.0, 10.0, 10.0))
    monkeypatch.setattr(io, "LAZY_BYTES", 1000)
    (data, kw, _), = read_layer_data(str(p))
    assert hasattr(data, "dask")  # a dask array: nothing read yet
    lo, hi = kw["contrast_limits"]
    mid = crop[len(crop) // 2]
    assert (lo, hi) == (mid.min(), mid.max())


@pytest.mark.parametrize("ext", ["tif", "zarr"])
def test_open_save_open_keeps_voxel_size(make_napari_viewer, tmp_path, crop, ext):
    src = write_volume(tmp_path / f"in.{ext}", crop, (40.0, 8.0, 8.0))
    viewer = make_napari_viewer()
    layer, = viewer.open(str(src), plugin="napari-zup")
    assert tuple(layer.scale) == pytest.approx((40.0, 8.0, 8.0))
    np.testing.assert_array_equal(np.asarray(layer.data), crop)
    out = tmp_path / f"out.{ext}"
    viewer.layers.save(str(out), selected=False, plugin="napari-zup")
    back = read_volume(out)
    assert back.voxel_size == pytest.approx((40.0, 8.0, 8.0))
    np.testing.assert_array_equal(np.asarray(back.data), crop)


def test_writer_converts_micrometre_scale(make_napari_viewer, tmp_path, crop):
    viewer = make_napari_viewer()
    viewer.add_image(crop, scale=(0.04, 0.01, 0.01), units=("um", "um", "um"))
    out = tmp_path / "um.tif"
    viewer.layers.save(str(out), selected=False, plugin="napari-zup")
    assert read_volume(out).voxel_size == pytest.approx((40.0, 10.0, 10.0))


def test_writer_refuses_rgb_with_a_reason(tmp_path):
    from napari_zup._writer import write_image

    with pytest.raises(ValueError, match="3D grayscale"):
        write_image(str(tmp_path / "x.tif"), np.zeros((4, 5, 6, 3), np.uint8), {"rgb": True})


def test_dropping_a_tiff_offers_this_reader_and_uses_it_when_preferred(
        make_napari_viewer, tmp_path, crop, monkeypatch):
    from napari.plugins import _npe2
    from napari.settings import get_settings

    src = write_volume(tmp_path / "drop.tif", crop, (40.0, 10.0, 10.0))
    assert "napari-zup" in _npe2.get_readers(str(src))
    viewer = make_napari_viewer()
    settings = get_settings().plugins
    monkeypatch.setattr(settings, "extension2reader",
                        {**settings.extension2reader, "*.tif": "napari-zup"})
    # exactly what dropping the file on the canvas does (QtViewer.dropEvent)
    from qtpy.QtCore import QUrl

    viewer.window._qt_viewer._open_from_list_of_urls_data(
        [QUrl.fromLocalFile(str(src))], stack=False, choose_plugin=False)
    layer = viewer.layers[-1]
    assert layer.source.reader_plugin == "napari-zup"
    assert tuple(layer.scale) == pytest.approx((40.0, 10.0, 10.0))


def test_sample_data_is_real_and_attributed(make_napari_viewer):
    (iso, kw_iso, _), = isotropic_sample()
    (ani, kw_ani, _), = anisotropic_sample()
    assert iso.shape == (129, 192, 192) and iso.dtype == np.uint8
    np.testing.assert_array_equal(ani, iso[::SAMPLE_FACTOR])
    assert tuple(kw_iso["scale"]) == (10.0, 10.0, 10.0)
    assert tuple(kw_ani["scale"]) == (40.0, 10.0, 10.0)
    truth = tifffile.imread(need(SAMPLE1))[60:189, 29:221, 29:221]
    np.testing.assert_array_equal(iso, truth)
    for kw in (kw_iso, kw_ani):
        assert "Parag" in kw["metadata"]["zup"]["attribution"]
    viewer = make_napari_viewer()
    layer, = viewer.open_sample("napari-zup", "anisotropic")
    assert layer.data.shape == (33, 192, 192)
    assert tuple(layer.scale) == (40.0, 10.0, 10.0)
