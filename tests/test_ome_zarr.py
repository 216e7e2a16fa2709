"""The OME-Zarr metadata we write is valid by a reader of the spec (ome-zarr-models), and other
readers (ome-zarr, our napari reader) place every pyramid level where it belongs."""
import numpy as np
import pytest
import tifffile
import zarr

from napari_zup import io
from napari_zup.pyramid import downsample_yx

from ._data import SAMPLE1, need

ome_models = pytest.importorskip("ome_zarr_models.v04.image")


@pytest.fixture(scope="module")
def crop():
    return tifffile.imread(need(SAMPLE1))[:24:4, :150, :130].copy()  # 6 x 150 x 130, real


def _transforms(store, level: int):
    ds = zarr.open_group(str(store), mode="r").attrs["multiscales"][0]["datasets"][level]
    out = {}
    for t in ds["coordinateTransformations"]:
        out[t["type"]] = t[t["type"]]
    return out


def _pixel_centre(transforms, index):
    """Physical position of a pixel index under OME-Zarr scale-then-translation."""
    return np.asarray(index) * transforms["scale"] + transforms.get("translation", 0)


def test_single_level_tiff_to_zarr_validates(crop, tmp_path):
    out = io.write_volume(tmp_path / "one.zarr", crop, (40.0, 10.0, 10.0), "nm")
    img = ome_models.Image.from_zarr(zarr.open_group(str(out), mode="r"))
    ms = img.attributes.multiscales[0]
    assert [a.unit for a in ms.axes] == ["nanometer"] * 3
    assert list(ms.datasets[0].coordinateTransformations[0].scale) == [40.0, 10.0, 10.0]


def test_pyramid_levels_validate_and_align(crop, tmp_path):
    zd = pytest.importorskip("napari_zup.distributed")
    from distributed import Client, LocalCluster

    src = tmp_path / "in.tif"
    io.write_volume(src, crop, (40.0, 10.0, 10.0), "nm")
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        out = zd.reconstruct_to_zarr(src, tmp_path / "pyr.zarr", "linear", 4, client=client,
                                     chunks=(8, 64, 64), levels=3, voxel_size=(40.0, 10.0, 10.0),
                                     unit="nm")
    # A spec reader accepts the whole multiscale image (every level's array and metadata).
    img = ome_models.Image.from_zarr(zarr.open_group(str(out), mode="r"))
    assert len(img.attributes.multiscales[0].datasets) == 3
    lv0 = np.asarray(zarr.open_array(str(out / "0"), mode="r"))
    for level in (1, 2):
        t0, t = _transforms(out, 0), _transforms(out, level)
        d = 2 ** level
        assert t["scale"] == [10.0, 10.0 * d, 10.0 * d]
        # Level-l pixel (0, 0) is the mean of level-0 pixels 0..d-1: its centre is theirs.
        expect = _pixel_centre(t0, [0, (d - 1) / 2, (d - 1) / 2])
        np.testing.assert_allclose(_pixel_centre(t, [0, 0, 0]), expect)
        # ... and its value is that mean (the metadata describes the data actually written).
        arr = np.asarray(zarr.open_array(str(out / str(level)), mode="r"))
        ref = lv0
        for _ in range(level):
            ref = downsample_yx(ref)
        np.testing.assert_array_equal(arr, ref)

    # ome-zarr (the reference Python reader) sees the same levels and scales.
    import ome_zarr.io
    import ome_zarr.reader

    node = next(iter(ome_zarr.reader.Reader(ome_zarr.io.parse_url(str(out)))()))
    assert [tuple(a.shape) for a in node.data] == [(21, 150, 130), (21, 75, 65), (21, 38, 33)]
    scales = [[t for t in ct if t["type"] == "scale"][0]["scale"]
              for ct in node.metadata["coordinateTransformations"]]
    assert scales[0] == [10.0, 10.0, 10.0]

    # Our napari reader opens it with the voxel size as layer scale.
    from napari_zup._reader import get_reader

    [(data, kwargs, kind)] = get_reader(str(out))(str(out))
    assert kind == "image" and data.shape == (21, 150, 130)
    assert kwargs["scale"] == (10.0, 10.0, 10.0)
