"""Issue #12: nothing lost, no traceback, every input trusted only as far as it deserves.

Each test is one kind of mistake a user makes (or a fault a machine makes); most call the CLI
in-process (``cli.main([...])``, rc + stderr), signals use a real subprocess.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from napari_zup import cli, grid
from napari_zup.io import (UNKNOWN_UNIT, VolumeReadError, output_dtype, read_volume,
                           remove_stale_partials, write_volume)
from napari_zup.methods import base

SAMPLE = Path(__file__).parents[1] / "src/napari_zup/data/flyem_medulla_sample1_crop_10nm.tif"


def run(capsys, *args):
    rc = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, err


def stack(path, n=6, voxel=(40.0, 4.0, 4.0), dtype=np.uint8, seed=0):
    a = np.random.default_rng(seed).integers(0, 200, (n, 32, 40)).astype(dtype)
    if voxel is None:
        tifffile.imwrite(path, a)
    else:
        write_volume(path, a, voxel)
    return a


def one_line_error(rc, err, *needles):
    assert rc == 2, err
    assert "Traceback" not in err, err
    for n in needles:
        assert n in err, err


# -- data loss: the output must never be the input ---------------------------------------------

@pytest.mark.parametrize("spelling", ["same", "dotdot", "symlink", "hardlink"])
def test_reconstruct_refuses_to_write_over_its_input(tmp_path, capsys, monkeypatch, spelling):
    monkeypatch.chdir(tmp_path)
    stack(tmp_path / "x.tif")
    before = (tmp_path / "x.tif").read_bytes()
    (tmp_path / "sub").mkdir()
    out = {"same": "x.tif", "dotdot": "./sub/../x.tif", "symlink": "link.tif",
           "hardlink": "hard.tif"}[spelling]
    if spelling == "symlink":
        os.symlink(tmp_path / "x.tif", tmp_path / "link.tif")
    if spelling == "hardlink":
        os.link(tmp_path / "x.tif", tmp_path / "hard.tif")
    rc, err = run(capsys, "reconstruct", "x.tif", out, "--method", "linear", "--factor", "2",
                  "--overwrite")
    one_line_error(rc, err, "is the input")
    assert (tmp_path / "x.tif").read_bytes() == before


def test_zarr_store_is_not_overwritten_by_itself_or_from_inside(tmp_path, capsys):
    a = stack(tmp_path / "s.tif")
    store = write_volume(tmp_path / "in.zarr", a, (40.0, 4.0, 4.0))
    os.symlink(store, tmp_path / "alias.zarr")
    for src, out in [(store, store), (store, tmp_path / "alias.zarr"),
                     (store / "0", store)]:  # the array inside the store, the store as output
        rc, err = run(capsys, "reconstruct", src, out, "--method", "linear", "--factor", "2",
                      "--overwrite")
        one_line_error(rc, err, "is the input")
    np.testing.assert_array_equal(np.asarray(read_volume(store).data), a)


def test_every_writing_command_refuses_its_input(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stack(tmp_path / "x.tif", n=8, voxel=(4.0, 4.0, 4.0))
    before = (tmp_path / "x.tif").read_bytes()
    rc, err = run(capsys, "flow", "x.tif", "./x.tif", "--overwrite")
    one_line_error(rc, err, "is the input")
    rc, err = run(capsys, "evaluate", "x.tif", "--factor", "2", "--methods", "linear",
                  "--json", "x.tif", "--overwrite")
    one_line_error(rc, err, "is the input")
    # a map named like the input, in the input's folder
    os.rename("x.tif", "error_linear_x2.tif")
    rc, err = run(capsys, "evaluate", "error_linear_x2.tif", "--factor", "2", "--methods",
                  "linear", "--maps", ".", "--overwrite")
    one_line_error(rc, err, "is the input")
    assert (tmp_path / "error_linear_x2.tif").read_bytes() == before
    # `zup sample` onto the bundled sample itself (refused before "already exists")
    rc, err = run(capsys, "sample", SAMPLE)
    one_line_error(rc, err, "is the input")


# -- truncated / corrupt / unfinished inputs ----------------------------------------------------

def _cut(src: Path, dst: Path, at: int) -> Path:
    dst.write_bytes(src.read_bytes()[:at])
    return dst


def test_tiff_cut_at_a_page_boundary_is_refused_naming_both_counts(tmp_path, capsys):
    full = tmp_path / "full.tif"
    stack(full, n=24)
    with tifffile.TiffFile(full) as tif:
        p = tif.pages[11]
        end_of_12 = p.dataoffsets[0] + p.databytecounts[0]
    cut = _cut(full, tmp_path / "cut.tif", end_of_12)
    with pytest.raises(VolumeReadError, match="truncated or corrupt") as exc:
        read_volume(cut)
    assert "declares 24 images" in str(exc.value) and "only 1 can be read" in str(exc.value)
    rc, err = run(capsys, "reconstruct", cut, tmp_path / "o.tif", "--factor", "2")
    one_line_error(rc, err, "truncated or corrupt", "24")
    assert "2D image" not in err
    assert not (tmp_path / "o.tif").exists()


def test_half_written_tiff_says_truncated_not_2d(tmp_path, capsys):
    full = tmp_path / "full.tif"
    stack(full, n=10)
    half = _cut(full, tmp_path / "half.tif", full.stat().st_size // 2)
    rc, err = run(capsys, "reconstruct", half, tmp_path / "o.tif", "--factor", "2")
    one_line_error(rc, err, "truncated or corrupt")
    assert "2D image" not in err


def test_tiff_whose_page_chain_is_cut_is_refused_without_metadata(tmp_path):
    """Pages written one by one (no ImageJ/OME count to compare with): the page chain of the
    cut file points past its end, which tifffile only logs; we refuse."""
    full = tmp_path / "pp.tif"
    a = np.zeros((12, 16, 16), np.uint8)
    with tifffile.TiffWriter(full) as w:
        for sl in a:
            w.write(sl, contiguous=False)
    with tifffile.TiffFile(full) as tif:
        at = tif.pages[6].offset
    with pytest.raises(VolumeReadError, match="truncated or corrupt"):
        read_volume(_cut(full, tmp_path / "pp_cut.tif", at))


def test_unfinished_cluster_store_is_refused_as_input_naming_the_resume_command(tmp_path,
                                                                                capsys):
    a = stack(tmp_path / "s.tif")
    store = write_volume(tmp_path / "run.zarr", a, (10.0, 4.0, 4.0))
    root = zarr.open_group(str(store), mode="r+")
    root.attrs["zup"] = {"status": "incomplete", "source": str(tmp_path / "s.tif"),
                         "signature": {"method": "of-linear", "factor": "4"}}
    with pytest.raises(VolumeReadError, match="unfinished") as exc:
        read_volume(store)
    assert "zup reconstruct" in str(exc.value) and "--method of-linear --factor 4" in str(
        exc.value)
    rc, err = run(capsys, "reconstruct", store, tmp_path / "o.tif", "--factor", "2")
    one_line_error(rc, err, "incomplete", "zup reconstruct")
    root.attrs["zup"] = {"status": "complete"}
    assert read_volume(store).data.shape == a.shape  # once finished it reads


@pytest.mark.parametrize("break_it", ["missing path", "no datasets", "scale not a list"])
def test_broken_ome_zarr_metadata_is_one_line(tmp_path, capsys, break_it):
    store = write_volume(tmp_path / "b.zarr", np.zeros((4, 8, 8), np.uint8), (10.0, 4.0, 4.0))
    root = zarr.open_group(str(store), mode="r+")
    ms = dict(root.attrs)["multiscales"]
    if break_it == "missing path":
        ms[0]["datasets"][0]["path"] = "s0"
    elif break_it == "no datasets":
        del ms[0]["datasets"]
    else:
        ms[0]["datasets"][0]["coordinateTransformations"][0]["scale"] = 7
    root.attrs["multiscales"] = ms
    rc, err = run(capsys, "reconstruct", store, tmp_path / "o.tif", "--factor", "2")
    one_line_error(rc, err, "metadata", "broken")


# -- parameters and options checked before any work --------------------------------------------

def test_bad_method_parameter_is_refused_before_the_input_is_read(tmp_path, capsys):
    # the input does not even exist: the parameter must be what is reported
    rc, err = run(capsys, "reconstruct", tmp_path / "missing.tif", tmp_path / "o.tif",
                  "--method", "of-linear", "--factor", "2", "--param", "poly_sigma=abc")
    one_line_error(rc, err, "poly_sigma must be a number", "'abc'")
    rc, err = run(capsys, "reconstruct", tmp_path / "missing.tif", tmp_path / "o.tif",
                  "--method", "of-linear", "--factor", "2", "--param", "levels=2.5")
    one_line_error(rc, err, "levels must be an integer")
    stack(tmp_path / "x.tif", n=8, voxel=(4.0, 4.0, 4.0))
    rc, err = run(capsys, "evaluate", tmp_path / "x.tif", "--factor", "2", "--methods",
                  "linear,of-linear", "--param", "winsize=big")
    one_line_error(rc, err, "winsize must be an integer")
    assert "evaluating" not in err  # refused before the first method ran
    rc, err = run(capsys, "flow", tmp_path / "x.tif", tmp_path / "f.tif", "--param", "foo=1")
    one_line_error(rc, err, "unknown parameter 'foo'")


def test_options_a_method_does_not_take_are_refused(tmp_path, capsys):
    stack(tmp_path / "x.tif", n=8, voxel=(4.0, 4.0, 4.0))
    ckpt = tmp_path / "c.pt"
    ckpt.write_bytes(b"x")
    rc, err = run(capsys, "reconstruct", tmp_path / "x.tif", tmp_path / "o.tif", "--method",
                  "linear", "--factor", "2", "--checkpoint", ckpt)
    one_line_error(rc, err, "--checkpoint", "linear takes no checkpoint")
    rc, err = run(capsys, "reconstruct", tmp_path / "x.tif", tmp_path / "o.tif", "--method",
                  "cubic", "--factor", "2", "--winsize", "31")
    one_line_error(rc, err, "winsize", "of-linear")
    rc, err = run(capsys, "evaluate", tmp_path / "x.tif", "--factor", "2", "--methods",
                  "linear,cubic", "--checkpoint", ckpt)
    one_line_error(rc, err, "--checkpoint")
    assert not (tmp_path / "o.tif").exists()


def test_workers_without_the_distributed_extra_is_one_line(tmp_path, capsys, monkeypatch):
    stack(tmp_path / "x.tif")
    monkeypatch.setitem(sys.modules, "distributed", None)  # `import distributed` fails
    rc, err = run(capsys, "reconstruct", tmp_path / "x.tif", tmp_path / "o.zarr",
                  "--method", "linear", "--factor", "2", "--workers", "2")
    one_line_error(rc, err, "'distributed' extra", "pip install")
    rc, err = run(capsys, "reconstruct", tmp_path / "x.tif", tmp_path / "o.tif",
                  "--method", "linear", "--factor", "2", "--workers", "2")
    one_line_error(rc, err, ".zarr")  # --workers is not silently ignored for a TIFF output
    assert not (tmp_path / "o.zarr").exists() and not (tmp_path / "o.tif").exists()


def test_nan_voxels_in_flow_are_one_line(tmp_path, capsys):
    a = np.random.default_rng(0).random((4, 32, 32)).astype(np.float32)
    a[2, 5, 5] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", a, photometric="minisblack")
    rc, err = run(capsys, "flow", tmp_path / "nan.tif", tmp_path / "f.tif")
    one_line_error(rc, err, "NaN")
    assert sorted(os.listdir(tmp_path)) == ["nan.tif"]


def test_maps_pointing_at_an_existing_file(tmp_path, capsys):
    stack(tmp_path / "x.tif", n=8, voxel=(4.0, 4.0, 4.0))
    (tmp_path / "maps").write_text("keep")
    rc, err = run(capsys, "evaluate", tmp_path / "x.tif", "--factor", "2", "--methods",
                  "linear", "--maps", tmp_path / "maps")
    one_line_error(rc, err, "--maps", "existing file")
    assert (tmp_path / "maps").read_text() == "keep"
    assert "evaluating" not in err


def test_existing_error_map_needs_overwrite(tmp_path, capsys):
    stack(tmp_path / "x.tif", n=8, voxel=(4.0, 4.0, 4.0))
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "error_linear_x2.tif").write_bytes(b"keep")
    rc, err = run(capsys, "evaluate", tmp_path / "x.tif", "--factor", "2", "--methods",
                  "linear", "--maps", tmp_path / "m")
    one_line_error(rc, err, "--overwrite")
    assert (tmp_path / "m" / "error_linear_x2.tif").read_bytes() == b"keep"


def test_montage_in_a_missing_folder_is_refused_before_the_run(tmp_path, capsys):
    stack(tmp_path / "x.tif")
    rc, err = run(capsys, "reconstruct", tmp_path / "x.tif", tmp_path / "o.tif", "--method",
                  "linear", "--factor", "2", "--montage", tmp_path / "nope" / "m.png")
    one_line_error(rc, err, "--montage", "does not exist")
    assert not (tmp_path / "o.tif").exists()  # nothing was computed or written
    rc, err = run(capsys, "reconstruct", tmp_path / "x.tif", tmp_path / "o.tif", "--method",
                  "linear", "--factor", "2", "--montage", tmp_path / "m.png")
    assert rc == 0, err
    assert (tmp_path / "m.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(os.listdir(tmp_path)) == ["m.png", "o.tif", "x.tif"]


# -- the one error boundary --------------------------------------------------------------------

def test_expected_errors_are_one_line_and_bugs_keep_their_traceback(tmp_path, capsys,
                                                                    monkeypatch):
    def disk_gone(args):
        raise PermissionError(13, "Permission denied", "/data/x.tif")

    monkeypatch.setattr(cli, "cmd_methods", disk_gone)
    rc, err = run(capsys, "methods")
    one_line_error(rc, err, "Permission denied")
    assert err.count("\n") == 1

    def bug(*a, **k):
        raise RuntimeError("an internal inconsistency")

    stack(tmp_path / "x.tif")
    monkeypatch.setattr(cli, "make_plan", bug)
    rc, err = run(capsys, "reconstruct", tmp_path / "x.tif", tmp_path / "o.tif", "--method",
                  "linear", "--factor", "2")
    assert rc == 1
    assert "Traceback" in err and "an internal inconsistency" in err
    assert "bug in napari-zup" in err and "report" in err
    assert not (tmp_path / "o.tif").exists()


# -- float64 to TIFF: decided up front, the same for every writer -------------------------------

def test_float64_input_to_tiff_is_converted_up_front_and_said(tmp_path, capsys):
    a = np.random.default_rng(1).random((5, 16, 16))  # float64
    tifffile.imwrite(tmp_path / "f64.tif", a)  # plain TIFF keeps float64
    rc, err = run(capsys, "reconstruct", tmp_path / "f64.tif", tmp_path / "o.tif", "--method",
                  "linear", "--factor", "2")
    assert rc == 0, err
    assert "float32" in err and err.index("float32") < err.index("zup: linear x2")
    out = tifffile.imread(tmp_path / "o.tif")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[::2], a, rtol=1e-6)
    # the library writer follows the same rule, and Zarr keeps float64
    p = write_volume(tmp_path / "w.tif", a)
    assert tifffile.imread(p).dtype == np.float32
    assert read_volume(write_volume(tmp_path / "w.zarr", a)).data.dtype == np.float64
    assert output_dtype("x.tif", np.int8)[0] == np.int16


def test_types_tiff_cannot_hold_are_refused_before_any_work(tmp_path, capsys):
    a = np.arange(5 * 8 * 8, dtype=np.int64).reshape(5, 8, 8) * 10**6
    tifffile.imwrite(tmp_path / "i64.tif", a)
    rc, err = run(capsys, "reconstruct", tmp_path / "i64.tif", tmp_path / "o.tif", "--method",
                  "linear", "--factor", "2")
    one_line_error(rc, err, "int64", ".zarr")
    assert "zup: linear" not in err  # not planned
    assert not (tmp_path / "o.tif").exists()
    with pytest.raises(ValueError, match="zarr"):
        write_volume(tmp_path / "w.tif", a)


# -- voxel size ----------------------------------------------------------------------------------

def test_voxel_size_option_and_exact_auto_factor(tmp_path, capsys):
    stack(tmp_path / "raw.tif", voxel=None)  # no metadata at all
    rc, err = run(capsys, "reconstruct", tmp_path / "raw.tif", tmp_path / "o.tif", "--method",
                  "linear")
    one_line_error(rc, err, "--voxel-size")
    rc, err = run(capsys, "reconstruct", tmp_path / "raw.tif", tmp_path / "o.tif", "--method",
                  "linear", "--voxel-size", "50", "4", "4")
    assert rc == 0, err
    assert "--factor auto: 12.5" in err and "4 x 4 x 4 nm" in err
    out = read_volume(tmp_path / "o.tif")
    assert out.data.shape[0] == grid.output_length(6, grid.Fraction(25, 2)) == 63
    assert out.voxel_size == pytest.approx((4.0, 4.0, 4.0)) and out.unit == "nm"
    rc, err = run(capsys, "reconstruct", tmp_path / "raw.tif", tmp_path / "u.tif", "--method",
                  "linear", "--voxel-size", "0.05", "0.004", "0.004", "--unit", "um",
                  "--factor", "2")
    assert rc == 0, err
    assert read_volume(tmp_path / "u.tif").voxel_size == pytest.approx((25.0, 4.0, 4.0))


def test_auto_factor_rule_exact_or_rounded(monkeypatch):
    assert grid.auto_factor((50.0, 4.0, 4.0), fractional=True) == grid.Fraction(25, 2)
    assert grid.auto_factor((50.0, 4.0, 4.0), fractional=False) == 13
    assert grid.auto_factor((40.0, 10.0, 10.0), fractional=False) == 4
    with pytest.raises(ValueError, match="isotropic"):
        grid.auto_factor((5.0, 4.0, 4.0))
    with pytest.raises(ValueError, match="unknown"):
        grid.auto_factor(None)
    # an integer-only method gets the rounded factor from the CLI too, and is told so
    info = base.MethodInfo(name="int-only", kind="pair", description="t", fractional=False)
    monkeypatch.setitem(base._REGISTRY, "int-only", base._Entry(info, base._REGISTRY[
        "linear"].factory))
    vol = read_volume(SAMPLE)
    vol.voxel_size = (50.0, 4.0, 4.0)
    assert cli.resolve_factor("auto", vol, "int-only") == 13
    assert cli.resolve_factor("auto", vol, "linear") == grid.Fraction(25, 2)


def test_unknown_voxel_size_is_not_claimed_as_nanometres(tmp_path, capsys):
    stack(tmp_path / "raw.tif", voxel=None)
    for name in ("o.tif", "o.zarr"):
        rc, err = run(capsys, "reconstruct", tmp_path / "raw.tif", tmp_path / name,
                      "--method", "linear", "--factor", "4")
        assert rc == 0, err
    with tifffile.TiffFile(tmp_path / "o.tif") as tif:
        ij = tif.imagej_metadata
    assert ij["unit"] == UNKNOWN_UNIT and ij["spacing"] == pytest.approx(0.25)
    attrs = dict(zarr.open_group(str(tmp_path / "o.zarr"), mode="r").attrs)
    axes = attrs["multiscales"][0]["axes"]
    assert all("unit" not in a for a in axes)
    scale = attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"]
    assert scale == pytest.approx([0.25, 1.0, 1.0])  # the z step is still divided by F
    for name in ("o.tif", "o.zarr"):
        v = read_volume(tmp_path / name)
        assert v.unit == UNKNOWN_UNIT and v.voxel_size == pytest.approx((0.25, 1.0, 1.0))
    # still valid OME-Zarr by a reader of the spec (unit is optional there)
    ome_models = pytest.importorskip("ome_zarr_models.v04.image")
    img = ome_models.Image.from_zarr(zarr.open_group(str(tmp_path / "o.zarr"), mode="r"))
    assert [a.unit for a in img.attributes.multiscales[0].axes] == [None] * 3


def test_evaluate_takes_a_voxel_size_for_its_maps(tmp_path, capsys):
    stack(tmp_path / "raw.tif", n=8, voxel=None)
    rc, err = run(capsys, "evaluate", tmp_path / "raw.tif", "--factor", "2", "--methods",
                  "linear", "--maps", tmp_path / "m", "--voxel-size", "8", "8", "8")
    assert rc == 0, err
    assert read_volume(tmp_path / "m" / "error_linear_x2.tif").voxel_size == pytest.approx(
        (8.0, 8.0, 8.0))


# -- signals and leftovers -----------------------------------------------------------------------

def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_partials_of_dead_processes_are_removed_live_ones_kept(tmp_path, capsys):
    stack(tmp_path / "x.tif")
    dead = tmp_path / f".o.tif.partial-{_dead_pid()}"
    dead.write_bytes(b"half")
    dead_dir = tmp_path / f".o.zarr.partial-{_dead_pid()}"
    dead_dir.mkdir()
    live = tmp_path / f".o.tif.partial-{os.getppid()}"  # a process that is running
    live.write_bytes(b"busy")
    other = tmp_path / ".other.tif.partial-1"
    other.write_bytes(b"not ours")
    for name in ("o.tif", "o.zarr"):
        rc, err = run(capsys, "reconstruct", tmp_path / "x.tif", tmp_path / name, "--method",
                      "linear", "--factor", "2")
        assert rc == 0, err
    assert not dead.exists() and not dead_dir.exists()
    assert live.exists() and other.exists()
    assert remove_stale_partials(tmp_path / "o.tif") == []


def test_sigterm_cleans_up_like_ctrl_c(tmp_path):
    """A scheduler's kill (SIGTERM) in the middle of a write: exit 143, one line, and no
    ``.partial-PID`` file left behind (before: the partial stayed, one more per rerun)."""
    a = np.random.default_rng(0).integers(0, 255, (40, 256, 256), dtype=np.uint8)
    write_volume(tmp_path / "big.tif", a, (40.0, 4.0, 4.0))
    cmd = [sys.executable, "-m", "napari_zup.cli", "reconstruct", str(tmp_path / "big.tif"),
           str(tmp_path / "o.tif"), "--method", "of-cubic", "--factor", "8", "--threads", "1"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not any(".partial-" in n for n in os.listdir(tmp_path)):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 143, err
    assert "terminated (SIGTERM)" in err and "Traceback" not in err, err
    assert sorted(os.listdir(tmp_path)) == ["big.tif"]


def test_json_scores_are_written_whole(tmp_path, capsys):
    stack(tmp_path / "x.tif", n=8, voxel=(4.0, 4.0, 4.0))
    rc, err = run(capsys, "evaluate", tmp_path / "x.tif", "--factor", "2", "--methods",
                  "linear", "--json", tmp_path / "s.json")
    assert rc == 0, err
    assert "linear" in json.loads((tmp_path / "s.json").read_text())
    assert sorted(os.listdir(tmp_path)) == ["s.json", "x.tif"]


def test_options_that_would_be_ignored_are_refused(tmp_path, capsys):
    stack(tmp_path / "x.tif", n=4, voxel=(4.0, 4.0, 4.0))
    base_args = ["reconstruct", tmp_path / "x.tif", tmp_path / "o.zarr", "--method", "linear",
                 "--factor", "2"]
    for extra, needle in [(["--chunks", "4", "16", "16"], "--chunks"),
                          (["--pyramid-levels", "2"], "--pyramid-levels"),
                          (["--no-resume"], "--no-resume"),
                          (["--input-level", "1"], "--input-level"),
                          (["--unit", "um"], "--unit goes with --voxel-size"),
                          (["--voxel-size", "4", "0", "4"], "three positive numbers"),
                          (["--voxel-size", "4", "4", "4", "--unit", "furlong"], "furlong")]:
        rc, err = run(capsys, *base_args, *extra)
        one_line_error(rc, err, needle)
    rc, err = run(capsys, "flow", tmp_path / "x.tif", tmp_path / "f.tif", "--max-magnitude", "3")
    one_line_error(rc, err, "--rgb")
    assert sorted(os.listdir(tmp_path)) == ["x.tif"]


@pytest.mark.slow
def test_sigterm_on_a_cluster_run_leaves_it_resumable(tmp_path):
    """SIGTERM to the `zup --workers` client: exit 143, the store stays marked incomplete
    with the chunks already written, and the same command then finishes it."""
    a = np.random.default_rng(0).integers(0, 255, (12, 128, 128), dtype=np.uint8)
    write_volume(tmp_path / "s.tif", a, (40.0, 10.0, 10.0))
    out = tmp_path / "o.zarr"
    args = [sys.executable, "-m", "napari_zup.cli", "reconstruct", str(tmp_path / "s.tif"),
            str(out), "--method", "of-linear", "--factor", "4", "--winsize", "15",
            "--levels", "2", "--workers", "1", "--chunks", "4", "32", "32",
            "--pyramid-levels", "1"]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    markers = out / "zup_done" / "0"
    deadline = time.monotonic() + 300
    while not (markers.is_dir() and len(os.listdir(markers)) >= 3):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 143, err
    assert "terminated (SIGTERM)" in err and "rerun the same command" in err, err
    assert "Traceback" not in err, err
    assert dict(zarr.open_group(str(out), mode="r").attrs)["zup"]["status"] == "incomplete"
    again = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert dict(zarr.open_group(str(out), mode="r").attrs)["zup"]["status"] == "complete"


class _DropsSigterm:
    """Runs the CLI's SIGTERM handler inside ``__del__``, where Python prints and drops the
    exception: what happens when the signal arrives while the main thread is finalising an
    object (seen in CI: distributed's ``Future.__del__``)."""

    def __del__(self):
        cli._on_sigterm(signal.SIGTERM, None)


def _terminate_after(events, n):
    """Pass ``events`` on; after the ``n``-th, a SIGTERM arrives whose exception is dropped."""
    for i, event in enumerate(events, 1):
        yield event
        if i == n:
            _DropsSigterm()  # collected at once (CPython): the handler runs, its raise is lost


def test_sigterm_dropped_in_a_finaliser_still_stops_a_local_run(tmp_path, capsys, monkeypatch):
    """The handler's exception can be lost; the request is not: exit 143, no output file,
    no stray traceback, the input unchanged."""
    src = tmp_path / "s.tif"
    write_volume(src, read_volume(SAMPLE).data[:24], (40.0, 10.0, 10.0))
    before = src.read_bytes()
    real = cli.reconstruct_events
    monkeypatch.setattr(cli, "reconstruct_events",
                        lambda *a, **k: _terminate_after(real(*a, **k), 3))
    rc, err = run(capsys, "reconstruct", src, tmp_path / "o.tif", "--method", "linear",
                  "--factor", "4")
    assert rc == 143, err
    assert "terminated (SIGTERM)" in err and "Exception ignored" not in err, err
    assert sorted(os.listdir(tmp_path)) == ["s.tif"]
    assert src.read_bytes() == before
    monkeypatch.setattr(cli, "reconstruct_events", real)
    rc, err = run(capsys, "reconstruct", src, tmp_path / "o.tif", "--method", "linear",
                  "--factor", "4")
    assert rc == 0, err


@pytest.mark.slow
def test_sigterm_dropped_in_a_finaliser_still_stops_a_cluster_run(tmp_path, capsys,
                                                                  monkeypatch):
    """Same on `--workers`: the runner's cancel poll sees the request; the store is left
    incomplete and resumable."""
    import napari_zup.distributed as dist

    src = tmp_path / "s.tif"
    write_volume(src, read_volume(SAMPLE).data[:12, :128, :128], (40.0, 10.0, 10.0))
    out = tmp_path / "o.zarr"
    real = dist.iter_reconstruct_to_zarr

    def dropping(*a, **k):
        gen = real(*a, **k)
        yield next(gen)  # the first event: chunks found finished (none)
        _DropsSigterm()
        yield from gen

    monkeypatch.setattr(dist, "iter_reconstruct_to_zarr", dropping)
    args = ["reconstruct", src, out, "--method", "linear", "--factor", "4", "--workers", "1",
            "--chunks", "4", "32", "32", "--pyramid-levels", "1"]
    rc, err = run(capsys, *args)
    assert rc == 143, err
    assert "terminated (SIGTERM)" in err and "rerun the same command" in err, err
    assert "Exception ignored" not in err and "Traceback" not in err, err
    assert dict(zarr.open_group(str(out), mode="r").attrs)["zup"]["status"] == "incomplete"
    monkeypatch.setattr(dist, "iter_reconstruct_to_zarr", real)
    rc, err = run(capsys, *args)
    assert rc == 0, err
    assert dict(zarr.open_group(str(out), mode="r").attrs)["zup"]["status"] == "complete"


def test_sigterm_dropped_in_a_finaliser_stops_an_evaluation(tmp_path, capsys, monkeypatch):
    """zup evaluate: the next method is not started; exit 143, no JSON left behind."""
    from napari_zup import evaluation as ev

    real, calls = ev.evaluate_method, []

    def dropping(*a, **k):
        calls.append(a[2])
        out = real(*a, **k)
        _DropsSigterm()
        return out

    monkeypatch.setattr(ev, "evaluate_method", dropping)
    src = tmp_path / "s.tif"
    write_volume(src, read_volume(SAMPLE).data[:24], (10.0, 10.0, 10.0))
    rc, err = run(capsys, "evaluate", src, "--factor", "4", "--methods", "linear,cubic",
                  "--json", tmp_path / "s.json")
    assert rc == 143, err
    assert calls == ["linear"] and "Exception ignored" not in err, (calls, err)
    assert sorted(os.listdir(tmp_path)) == ["s.tif"]
