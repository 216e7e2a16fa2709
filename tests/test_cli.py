"""`zup` end to end, on the real shared data, as a user runs it (subprocess)."""
import json
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from napari_zup.io import read_volume

from ._data import ISBI, SAMPLE1, need

# EVALUATION.md reference table, sample1, F = 4 (SSIM, PSNR)
REFERENCE_F4 = {"linear": (0.769, 28.23), "cubic": (0.772, 28.34),
                "of-linear": (0.801, 28.99), "of-cubic": (0.805, 29.17)}


def zup(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "napari_zup.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"zup {args} failed:\n{proc.stderr}")
    return proc


def popen_ctrl_c_able(cmd, **kw):
    """Popen for a child that a test will Ctrl-C. When pytest itself runs in the background
    (`pytest &` from a script, nohup), SIGINT is inherited as *ignored*, and Python leaves an
    ignored SIGINT ignored: the child would never see the Ctrl-C. The child is the user's
    `zup` in a terminal, so it starts with the default disposition (Python then installs its
    KeyboardInterrupt handler). zup itself keeps an inherited SIG_IGN: that is how a
    background job is asked not to die on Ctrl-C."""
    import signal

    return subprocess.Popen(cmd, preexec_fn=lambda: signal.signal(signal.SIGINT,
                                                                  signal.SIG_DFL), **kw)


def test_ctrl_c_able_child_gets_sigint_even_when_the_runner_ignores_it():
    import signal

    probe = [sys.executable, "-c", "import signal; print(signal.getsignal(signal.SIGINT) is "
             "signal.default_int_handler)"]
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as under `pytest &`
    try:
        plain = subprocess.run(probe, capture_output=True, text=True).stdout.strip()
        fixed = popen_ctrl_c_able(probe, stdout=subprocess.PIPE, text=True)
        out = fixed.communicate(timeout=60)[0].strip()
    finally:
        signal.signal(signal.SIGINT, previous)
    assert plain == "False"  # what the Ctrl-C test saw before: SIGINT stayed ignored
    assert out == "True"


def test_methods_table_lists_every_method():
    out = zup("methods").stdout
    for name in ("nearest", "linear", "cubic", "of-linear", "of-cubic"):
        assert f"\n{name} " in out
    assert "interpolates between slices" in out


def test_reconstruct_real_sstem_with_auto_factor(tmp_path):
    """50 nm / 4 nm: --factor auto is the exact 12.5 (of-linear takes fractional factors),
    said on stderr with the resulting voxel size, not silently rounded to 12."""
    out = tmp_path / "isbi_x12.5.tif"
    proc = zup("reconstruct", need(ISBI), out, "--method", "of-linear", "--factor", "auto",
               "--montage", tmp_path / "m.png")
    assert "slices/s" in proc.stderr and "ETA" in proc.stderr
    assert "--factor auto: 12.5;" in proc.stderr and "-> 4 x 4 x 4 nm" in proc.stderr
    v = read_volume(out)
    assert v.data.shape == (363, 512, 512)  # floor((30 - 1) * 12.5) + 1
    assert v.voxel_size == pytest.approx((4.0, 4.0, 4.0))
    src = tifffile.imread(ISBI)
    np.testing.assert_array_equal(np.asarray(v.data)[::25], src[::2])  # the knots
    assert (tmp_path / "m.png").stat().st_size > 10_000


def test_a_factor_that_oversamples_z_is_warned_about(tmp_path):
    """An isotropic crop of real FlyEM (10 nm voxels) restored x4 gets a warning naming the
    voxel size and the resulting z step; an anisotropic stack at its own ratio does not."""
    from ._data import SAMPLE2

    g = tifffile.imread(need(SAMPLE2))[:6, :48, :48]
    iso = tmp_path / "iso.tif"
    tifffile.imwrite(iso, g, imagej=True, resolution=(0.1, 0.1),
                     metadata={"spacing": 10, "unit": "nm"})
    proc = zup("reconstruct", iso, tmp_path / "o.tif", "--method", "linear", "--factor", "4")
    assert "warning" in proc.stderr and "10 x 10 x 10 nm" in proc.stderr
    assert "2.5 nm" in proc.stderr and "already isotropic" in proc.stderr
    aniso = tmp_path / "aniso.tif"
    tifffile.imwrite(aniso, g, imagej=True, resolution=(0.1, 0.1),
                     metadata={"spacing": 40, "unit": "nm"})
    ok = zup("reconstruct", aniso, tmp_path / "o2.tif", "--method", "linear", "--factor", "4")
    assert "warning" not in ok.stderr
    over = zup("reconstruct", aniso, tmp_path / "o3.tif", "--method", "linear", "--factor", "8")
    assert "5 nm" in over.stderr and "--factor auto gives 4" in over.stderr


def test_reconstruct_to_ome_zarr_fractional(tmp_path):
    out = tmp_path / "x.zarr"
    zup("reconstruct", need(ISBI), out, "--method", "cubic", "--factor", "2.5")
    v = read_volume(out)
    assert v.data.shape == (73, 512, 512)
    assert v.voxel_size == pytest.approx((20.0, 4.0, 4.0))


def test_evaluate_reproduces_reference_table_on_sample1(tmp_path):
    js = tmp_path / "s.json"
    proc = zup("evaluate", need(SAMPLE1), "--factor", "4", "--json", js, "--maps", tmp_path / "maps")
    scores = json.loads(js.read_text())
    for m, (ssim, psnr) in REFERENCE_F4.items():
        assert abs(scores[m]["ssim"] - ssim) <= 0.01, (m, scores[m])
        assert abs(scores[m]["psnr"] - psnr) <= 0.1, (m, scores[m])
        assert {"psnr", "ssim", "fpsnr", "ie", "seconds_per_slice"} <= set(scores[m])
    assert "of-cubic" in proc.stdout
    maps = tifffile.imread(tmp_path / "maps" / "error_of-linear_x4.tif")
    assert maps.shape == (249, 250, 250)
    assert maps[::4].max() == 0 and maps[1].mean() > 0


def test_flow_writes_fields(tmp_path):
    src = tmp_path / "small.tif"
    tifffile.imwrite(src, tifffile.imread(need(ISBI))[:4, :128, :128], imagej=True)
    zup("flow", src, tmp_path / "f.tif", "--winsize", "31")
    f = tifffile.imread(tmp_path / "f.tif")
    assert f.shape == (3, 128, 128, 2) and f.dtype == np.float32
    assert np.abs(f).max() > 0.1
    zup("flow", src, tmp_path / "f_rgb.tif", "--rgb")
    assert tifffile.imread(tmp_path / "f_rgb.tif").shape == (3, 128, 128, 3)


@pytest.mark.parametrize("args,message", [
    (["--factor", "1"], "factor must be > 1"),
    (["--factor", "nan"], "finite"),
    (["--factor", "x"], "must be a number"),
    (["--method", "bogus", "--factor", "2"], "unknown method"),
])
def test_bad_arguments_give_one_clear_line(tmp_path, args, message):
    proc = zup("reconstruct", need(ISBI), tmp_path / "o.tif", *args, check=False)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o.tif").exists()


def test_bad_inputs_are_refused_and_nothing_written(tmp_path):
    flat = tmp_path / "flat.tif"
    tifffile.imwrite(flat, np.zeros((64, 64), np.uint8))
    proc = zup("reconstruct", flat, tmp_path / "o.tif", "--factor", "2", check=False)
    assert proc.returncode == 2 and "2D image" in proc.stderr
    rgb = tmp_path / "rgb.tif"
    tifffile.imwrite(rgb, np.zeros((4, 32, 32, 3), np.uint8), photometric="rgb")
    proc = zup("reconstruct", rgb, tmp_path / "o.tif", "--factor", "2", check=False)
    assert proc.returncode == 2 and "RGB" in proc.stderr
    noscale = tmp_path / "noscale.tif"
    tifffile.imwrite(noscale, np.zeros((4, 32, 32), np.uint8), photometric="minisblack")
    proc = zup("reconstruct", noscale, tmp_path / "o.tif", check=False)
    assert proc.returncode == 2 and "voxel size is unknown" in proc.stderr
    assert "--voxel-size" in proc.stderr
    corrupt = tmp_path / "corrupt.tif"
    corrupt.write_bytes(b"II*\x00" + b"\x00" * 50)
    proc = zup("reconstruct", corrupt, tmp_path / "o.tif", "--factor", "2", check=False)
    assert proc.returncode == 2 and "corrupt" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corrupt.tif", "flat.tif",
                                                           "noscale.tif", "rgb.tif"]


def test_existing_output_needs_overwrite(tmp_path):
    src = tmp_path / "s.tif"
    tifffile.imwrite(src, np.zeros((3, 16, 16), np.uint8), photometric="minisblack")
    out = tmp_path / "o.tif"
    out.write_bytes(b"keep")
    proc = zup("reconstruct", src, out, "--factor", "2", check=False)
    assert proc.returncode == 2 and "--overwrite" in proc.stderr
    assert out.read_bytes() == b"keep"
    zup("reconstruct", src, out, "--factor", "2", "--method", "linear", "--overwrite")
    assert tifffile.imread(out).shape == (5, 16, 16)


def test_reconstruct_on_a_local_dask_cluster_matches_single_process(tmp_path):
    src = tmp_path / "s.tif"
    tifffile.imwrite(src, tifffile.imread(need(ISBI))[:6, :200, :180], imagej=True,
                     resolution=(0.25, 0.25), metadata={"spacing": 50, "unit": "nm"})
    zup("reconstruct", src, tmp_path / "one.zarr", "--method", "cubic", "--factor", "4")
    proc = zup("reconstruct", src, tmp_path / "two.zarr", "--method", "cubic", "--factor", "4",
               "--workers", "2")
    assert "chunks" in proc.stderr
    a, b = read_volume(tmp_path / "one.zarr"), read_volume(tmp_path / "two.zarr")
    np.testing.assert_array_equal(np.asarray(a.data), np.asarray(b.data))
    assert b.voxel_size == pytest.approx((12.5, 4.0, 4.0))
    proc = zup("reconstruct", src, tmp_path / "three.zarr", "--scheduler",
               "tcp://127.0.0.1:1", "--factor", "4", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert not (tmp_path / "three.zarr").exists()


def _store_files(store) -> dict:
    """Every chunk and array-metadata file of every pyramid level, by relative path."""
    return {str(f.relative_to(store)): f.read_bytes()
            for lv in sorted(store.iterdir()) if lv.is_dir() and lv.name.isdigit()
            for f in sorted(lv.iterdir())}


def test_ctrl_c_then_the_same_command_resumes_bit_identically(tmp_path):
    """A user presses Ctrl-C during `zup reconstruct ... --workers N` (SIGINT to the whole
    process group, workers included), then runs the same command again: the store says
    incomplete, the rerun skips the chunks already written, and the result has the same bytes
    as a run that was never interrupted. A rerun of the finished command does nothing."""
    import os
    import signal
    import time

    import zarr

    src = tmp_path / "s.tif"
    g = tifffile.imread(need(SAMPLE1))[:48:4, 20:212, 30:190]  # 12 knots, 40 nm z step
    tifffile.imwrite(src, g, imagej=True, resolution=(0.1, 0.1),
                     metadata={"spacing": 40, "unit": "nm"})
    args = ["reconstruct", src, None, "--method", "of-linear", "--factor", "4", "--winsize",
            "15", "--levels", "2", "--workers", "1", "--chunks", "4", "64", "64",
            "--pyramid-levels", "1"]
    ref, out = tmp_path / "ref.zarr", tmp_path / "out.zarr"
    zup(*[ref if a is None else a for a in args])
    total = len([f for f in (ref / "0").iterdir() if not f.name.startswith(".")])
    assert total == 12 * 3 * 3

    cmd = [sys.executable, "-m", "napari_zup.cli", *[str(out if a is None else a) for a in args]]
    proc = popen_ctrl_c_able(cmd, stderr=subprocess.PIPE, text=True, start_new_session=True)
    markers = out / "zup_done" / "0"
    deadline = time.monotonic() + 300
    while not (markers.is_dir() and len(os.listdir(markers)) >= 5):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, err
    assert "rerun the same command to resume" in err and "Traceback" not in err, err
    assert dict(zarr.open_group(str(out), mode="r").attrs)["zup"]["status"] == "incomplete"
    n_kept = len(os.listdir(markers))
    assert 5 <= n_kept < total

    again = zup(*[out if a is None else a for a in args])
    assert f"resuming {out}: " in again.stderr and "already done" in again.stderr
    assert dict(zarr.open_group(str(out), mode="r").attrs)["zup"]["status"] == "complete"
    a, b = _store_files(ref), _store_files(out)
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)

    done = zup(*[out if a is None else a for a in args])
    assert "already complete" in done.stderr
    other = zup(*[out if a is None else a for a in args[:-2]], "--factor", "2", check=False)
    assert other.returncode == 2 and "factor" in other.stderr and "--overwrite" in other.stderr


def test_texture_flag_reaches_film_and_is_refused_where_it_does_not_apply(tmp_path):
    import subprocess
    import sys

    import tifffile

    from napari_zup._sample_data import sample_path
    from napari_zup.evaluation import high_frequency_energy
    from napari_zup.io import read_volume

    src = tmp_path / "a.tif"
    v = np.asarray(read_volume(sample_path()).data)[:9:4, :96, :96]
    tifffile.imwrite(src, v, imagej=True, resolution=(0.1, 0.1),
                     metadata={"spacing": 40.0, "unit": "nm"})
    bad = subprocess.run([sys.executable, "-m", "napari_zup.cli", "reconstruct", str(src),
                          str(tmp_path / "l.tif"), "--method", "linear", "--factor", "4",
                          "--texture", "0.8"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--texture" in bad.stderr and "film" in bad.stderr
    assert not (tmp_path / "l.tif").exists()
    out = tmp_path / "f.tif"
    ok = subprocess.run([sys.executable, "-m", "napari_zup.cli", "reconstruct", str(src),
                         str(out), "--method", "film", "--factor", "4", "--texture", "0.8"],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    r = tifffile.imread(out).astype(np.float64)
    ratio = (np.mean([high_frequency_energy(r[k]) for k in (1, 2, 3, 5, 6, 7)])
             / np.mean([high_frequency_energy(r[k]) for k in (0, 4, 8)]))
    assert 0.6 < ratio < 1.0, ratio
