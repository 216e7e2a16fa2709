"""Slice folders / globs, HDF5 and MRC: read with their voxel size, lazily, and refused with a
message that names what is wrong. Files are written in the test from a crop of the bundled
real FIB-SEM sample."""
import pickle
import subprocess
import sys
from pathlib import Path

import cv2
import h5py
import mrcfile
import numpy as np
import pytest
import tifffile

import napari_zup.formats as formats
from napari_zup.formats import MultipleDatasetsError, file_voxel_size, read_slices
from napari_zup.io import VolumeReadError, read_volume, write_volume

BUNDLED = Path(formats.__file__).parent / "data" / "flyem_medulla_sample1_crop_10nm.tif"


@pytest.fixture(scope="module")
def crop():
    """12 x 40 x 56 voxels of real FIB-SEM (uint8), varied enough that any reordering shows."""
    data = tifffile.imread(BUNDLED)[40:52, 20:60, 30:86]
    assert len({data[z].tobytes() for z in range(len(data))}) == len(data)
    return data


def write_slices(folder: Path, stack, ext="tif", name="slice{}", voxel=None):
    """One file per z, numbered from 1 without zero padding (lexical order != z order)."""
    folder.mkdir(exist_ok=True)
    for z, sl in enumerate(stack):
        f = folder / f"{name.format(z + 1)}.{ext}"
        if ext == "png":
            assert cv2.imwrite(str(f), sl)
        elif voxel:
            tifffile.imwrite(f, sl, imagej=True, resolution=(1 / voxel[2], 1 / voxel[1]),
                             metadata={"spacing": voxel[0], "unit": "nm"})
        else:
            tifffile.imwrite(f, sl)
    return folder


# -- slice folders and globs ---------------------------------------------------------------------

def test_folder_of_tiffs_in_natural_order_with_voxel_size(tmp_path, crop):
    folder = write_slices(tmp_path / "slices", crop, voxel=(40.0, 10.0, 10.0))
    assert sorted(f.name for f in folder.iterdir())[:3] == ["slice1.tif", "slice10.tif",
                                                            "slice11.tif"]
    vol = read_volume(folder)
    assert isinstance(vol.data, np.ndarray)
    np.testing.assert_array_equal(vol.data, crop)
    assert vol.voxel_size == pytest.approx((40.0, 10.0, 10.0))
    assert vol.metadata["first"] == "slice1.tif" and vol.metadata["last"] == "slice12.tif"


def test_folder_of_pngs_8_and_16_bit(tmp_path, crop):
    np.testing.assert_array_equal(read_volume(write_slices(tmp_path / "p8", crop, "png")).data,
                                  crop)
    deep = crop.astype(np.uint16) * 257
    vol = read_volume(write_slices(tmp_path / "p16", deep, "png"))
    assert vol.data.dtype == np.uint16
    np.testing.assert_array_equal(vol.data, deep)
    assert vol.voxel_size is None  # PNG records no z step


def test_xy_pixel_size_alone_is_kept_but_is_no_voxel_size(tmp_path, crop):
    folder = tmp_path / "xy"
    folder.mkdir()
    for z, sl in enumerate(crop):
        tifffile.imwrite(folder / f"s{z:03d}.tif", sl, imagej=True, resolution=(0.25, 0.25),
                         metadata={"unit": "nm"})
    vol = read_volume(folder)
    assert vol.voxel_size is None
    assert vol.metadata["pixel_size_yx"] == pytest.approx((4.0, 4.0))


def test_glob_picks_its_files_only(tmp_path, crop):
    folder = write_slices(tmp_path / "g", crop, name="img_{}")
    tifffile.imwrite(folder / "overview.tif", np.zeros((7, 7), np.uint8))
    vol = read_volume(str(folder / "img_*.tif"))
    np.testing.assert_array_equal(vol.data, crop)
    with pytest.raises(VolumeReadError, match="no file matches"):
        read_volume(str(folder / "nothing_*.tif"))


def test_odd_shape_is_refused_naming_the_file(tmp_path, crop):
    folder = write_slices(tmp_path / "odd", crop)
    tifffile.imwrite(folder / "slice7.tif", crop[6, :-1])
    with pytest.raises(VolumeReadError, match=r"'slice7\.tif' is \(39, 56\) uint8 but "
                                              r"'slice1\.tif' is \(40, 56\) uint8"):
        read_volume(folder)


def test_odd_dtype_is_refused_naming_the_file(tmp_path, crop):
    folder = write_slices(tmp_path / "odd", crop)
    tifffile.imwrite(folder / "slice3.tif", crop[2].astype(np.uint16))
    with pytest.raises(VolumeReadError, match=r"'slice3\.tif' is \(40, 56\) uint16"):
        read_volume(folder)


def test_colour_stacks_mixed_and_empty_folders_are_refused(tmp_path, crop):
    rgb = write_slices(tmp_path / "rgb", crop[:3])
    tifffile.imwrite(rgb / "slice2.tif", np.stack([crop[1]] * 3, -1), photometric="rgb")
    with pytest.raises(VolumeReadError, match="'slice2.tif' is an RGB image"):
        read_volume(rgb)
    stacked = write_slices(tmp_path / "stk", crop[:3])
    tifffile.imwrite(stacked / "slice4.tif", crop[:5])
    with pytest.raises(VolumeReadError, match="'slice4.tif' holds an array of shape"):
        read_volume(stacked)
    mixed = write_slices(tmp_path / "mix", crop[:3])
    cv2.imwrite(str(mixed / "extra.png"), crop[0])
    with pytest.raises(VolumeReadError, match="mixes TIFF and PNG"):
        read_volume(mixed)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(VolumeReadError, match="holds no .tif/.tiff/.png slices"):
        read_volume(tmp_path / "empty")


def test_large_folder_is_lazy_and_reads_only_what_is_asked(tmp_path, crop, monkeypatch):
    folder = write_slices(tmp_path / "lazy", crop)
    reads = []
    original = formats._read_slice_file
    monkeypatch.setattr(formats, "_read_slice_file",
                        lambda f, *a: reads.append(f.name) or original(f, *a))
    vol = read_slices(folder, lazy=True)
    assert hasattr(vol.data, "dask") and reads == []  # nothing read yet
    np.testing.assert_array_equal(vol.data[4].compute(), crop[4])
    assert reads == ["slice5.tif"]
    # what a distributed run ships to its workers: the graph pickles, and reads the same
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(vol.data)).compute(), crop)
    import napari_zup.io as io

    monkeypatch.setattr(io, "LAZY_BYTES", crop.nbytes - 1)  # the default rule: by size
    assert hasattr(read_volume(folder).data, "dask")


# -- HDF5 ---------------------------------------------------------------------------------------

@pytest.fixture
def cremi(tmp_path, crop):
    """A CREMI-like file: raw with a resolution attribute, and a label volume."""
    p = tmp_path / "sample_A.hdf"
    with h5py.File(p, "w") as f:
        raw = f.create_dataset("volumes/raw", data=crop, chunks=(4, 40, 56))
        raw.attrs["resolution"] = (40.0, 4.0, 4.0)
        f.create_dataset("volumes/labels/neuron_ids", data=(crop > 128).astype(np.uint64))
        f.create_dataset("annotations/locations", data=np.zeros((5, 3)))
    return p


def test_hdf5_with_a_dataset_path_and_resolution(cremi, crop):
    vol = read_volume(f"{cremi}:/volumes/raw")
    np.testing.assert_array_equal(vol.data, crop)
    assert vol.voxel_size == pytest.approx((40.0, 4.0, 4.0))
    assert vol.path == f"{cremi}:/volumes/raw"
    assert read_volume(f"{cremi}:volumes/raw").voxel_size == pytest.approx((40.0, 4.0, 4.0))


def test_hdf5_with_several_3d_datasets_lists_them(cremi):
    with pytest.raises(MultipleDatasetsError) as err:
        read_volume(cremi)
    msg = str(err.value)
    assert "/volumes/raw (12, 40, 56) uint8" in msg
    assert "/volumes/labels/neuron_ids (12, 40, 56) uint64" in msg
    assert "locations" not in msg  # 2D: not a candidate
    assert f'"{cremi}:/volumes/raw"' in msg
    assert [n for n, _, _ in err.value.datasets] == ["/volumes/labels/neuron_ids",
                                                      "/volumes/raw"]
    with pytest.raises(VolumeReadError, match="no dataset '/volumes/rwa'; its 3D datasets"):
        read_volume(f"{cremi}:/volumes/rwa")
    with pytest.raises(VolumeReadError, match=r"shape \(5, 3\); napari-zup needs a 3D"):
        read_volume(f"{cremi}:/annotations/locations")


def test_hdf5_single_dataset_needs_no_path_element_size_um_and_lazy(tmp_path, crop):
    p = tmp_path / "ilastik.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("data", data=crop).attrs["element_size_um"] = (0.05, 0.008, 0.008)
    vol = read_volume(p, lazy=True)
    assert hasattr(vol.data, "dask")
    assert vol.voxel_size == pytest.approx((50.0, 8.0, 8.0))
    np.testing.assert_array_equal(vol.data[3:7, 5].compute(), crop[3:7, 5])
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(vol.data)).compute(), crop)
    (tmp_path / "bad.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(VolumeReadError, match="cannot open 'bad.h5' as HDF5"):
        read_volume(tmp_path / "bad.h5")


# -- MRC ----------------------------------------------------------------------------------------

def test_mrc_voxel_size_from_header_in_nm(tmp_path, crop):
    p = tmp_path / "tomo.mrc"
    with mrcfile.new(p) as m:
        m.set_data(crop.astype(np.int16))
        m.voxel_size = (40.0, 40.0, 160.0)  # x, y, z in Ångström
    vol = read_volume(p)
    assert vol.voxel_size == pytest.approx((16.0, 4.0, 4.0))
    assert vol.data.dtype == np.int16
    np.testing.assert_array_equal(vol.data, crop)
    lazy = read_volume(p, lazy=True)
    assert hasattr(lazy.data, "dask")
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(lazy.data)).compute(), crop)


def test_mrc_without_voxel_size_and_not_mrc(tmp_path, crop):
    p = tmp_path / "plain.rec"
    with mrcfile.new(p) as m:
        m.set_data(crop.astype(np.float32))
    assert read_volume(p).voxel_size is None
    (tmp_path / "junk.map").write_bytes(b"\0" * 100)
    with pytest.raises(VolumeReadError, match="cannot read 'junk.map' as MRC"):
        read_volume(tmp_path / "junk.map")


def test_file_voxel_size_reads_headers(tmp_path, crop, cremi):
    tif = write_volume(tmp_path / "a.tif", crop, (40.0, 8.0, 8.0))
    assert file_voxel_size(tif) == (pytest.approx((40.0, 8.0, 8.0)), "nm")
    assert file_voxel_size(f"{cremi}:/volumes/raw")[0] == pytest.approx((40.0, 4.0, 4.0))
    tifffile.imwrite(tmp_path / "plain.tif", crop)
    assert file_voxel_size(tmp_path / "plain.tif") is None
    assert file_voxel_size(tmp_path / "missing.tif") is None


# -- the CLI takes them all ------------------------------------------------------------------------

def zup(*args):
    proc = subprocess.run([sys.executable, "-m", "napari_zup.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=600)
    return proc


def test_cli_reconstructs_a_folder_a_glob_and_an_hdf5_dataset(tmp_path, crop, cremi):
    stack = write_volume(tmp_path / "stack.tif", crop, (40.0, 10.0, 10.0))
    folder = write_slices(tmp_path / "slices", crop, voxel=(40.0, 10.0, 10.0))
    for src, out in ((stack, "ref.tif"), (folder, "folder.tif"),
                     (f"{folder}/slice*.tif", "glob.tif"), (f"{cremi}:/volumes/raw", "h5.tif")):
        proc = zup("reconstruct", src, tmp_path / out, "--method", "linear", "--factor", "auto")
        assert proc.returncode == 0, proc.stderr
    ref = read_volume(tmp_path / "ref.tif")
    assert ref.data.shape == (45, 40, 56)
    for out in ("folder.tif", "glob.tif"):
        got = read_volume(tmp_path / out)
        np.testing.assert_array_equal(got.data, ref.data)
        assert got.voxel_size == pytest.approx((10.0, 10.0, 10.0))
    h5 = read_volume(tmp_path / "h5.tif")  # 40 nm / 4 nm: factor 10
    assert h5.data.shape == (111, 40, 56) and h5.voxel_size == pytest.approx((4.0, 4.0, 4.0))
    proc = zup("reconstruct", cremi, tmp_path / "none.tif", "--factor", "2")
    assert proc.returncode == 2 and "several 3D datasets" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "none.tif").exists()


def test_cli_distributed_run_reads_an_hdf5_dataset_in_its_workers(tmp_path, cremi):
    spec = f"{cremi}:/volumes/raw"
    one = zup("reconstruct", spec, tmp_path / "one.zarr", "--method", "cubic", "--factor", "4")
    two = zup("reconstruct", spec, tmp_path / "two.zarr", "--method", "cubic", "--factor", "4",
              "--workers", "2")
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    a, b = read_volume(tmp_path / "one.zarr"), read_volume(tmp_path / "two.zarr")
    np.testing.assert_array_equal(np.asarray(a.data), np.asarray(b.data))
    assert b.voxel_size == pytest.approx((10.0, 4.0, 4.0))


def test_an_output_that_is_one_of_the_globbed_slices_is_refused(tmp_path, crop):
    folder = write_slices(tmp_path / "g", crop)
    before = (folder / "slice3.tif").read_bytes()
    proc = zup("reconstruct", f"{folder}/slice*.tif", folder / "slice3.tif", "--factor", "2",
               "--method", "linear", "--overwrite")
    assert proc.returncode == 2 and "is the input" in proc.stderr, proc.stderr
    assert (folder / "slice3.tif").read_bytes() == before
    proc = zup("reconstruct", folder, folder / "inside.tif", "--factor", "2")
    assert proc.returncode == 2 and "is the input" in proc.stderr
    assert not (folder / "inside.tif").exists()


def test_a_size_in_pixels_is_no_voxel_size(tmp_path, crop):
    folder = tmp_path / "px"
    folder.mkdir()
    for z, sl in enumerate(crop):
        tifffile.imwrite(folder / f"s{z}.tif", sl, imagej=True, resolution=(1.0, 1.0),
                         metadata={"spacing": 1.0, "unit": "pixel"})
    vol = read_volume(folder)
    assert vol.voxel_size is None
    assert "pixel_size_yx" not in vol.metadata
    p = tmp_path / "px.h5"
    with h5py.File(p, "w") as f:
        ds = f.create_dataset("raw", data=crop)
        ds.attrs["resolution"], ds.attrs["unit"] = (4.0, 1.0, 1.0), "pixel"
    assert read_volume(p).voxel_size is None
