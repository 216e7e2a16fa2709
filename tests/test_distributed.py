"""Distributed, out-of-core, resumable reconstruction to OME-Zarr (napari_zup.distributed).

Real FIB-SEM crops (../shared/data sample1); a LocalCluster of 2 worker processes is shared by
most tests (started once), the fault tests start their own.
"""
import errno
import os
import signal
import threading
import time
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr

from napari_zup import distributed as zd
from napari_zup import engine, io
from napari_zup.distributed import client as zd_client
from napari_zup.distributed import worker as zd_worker
from napari_zup.pyramid import downsample_yx

from ._data import SAMPLE1, need

OF_PARAMS = {"winsize": 15, "levels": 2}  # small window: small halo, fast


@pytest.fixture(scope="module")
def crop():
    g = tifffile.imread(need(SAMPLE1))
    return g[:48:4, 20:212, 30:190].copy()  # 12 knots (40 nm z step) x 192 x 160


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           dashboard_address=":0")
    c = Client(cluster, set_as_default=False)
    yield c
    c.close()
    cluster.close()


@pytest.fixture(scope="module")
def in_zarr(crop, tmp_path_factory):
    p = tmp_path_factory.mktemp("in") / "in.zarr"
    io.write_volume(p, crop, (40.0, 10.0, 10.0), chunks=(4, 64, 64))
    return p


def _chunk_bytes(store: Path) -> dict:
    """Every file of every pyramid level, by relative path (metadata and chunks)."""
    files = {}
    for lv in sorted(p for p in store.iterdir() if p.is_dir() and p.name.isdigit()):
        for f in sorted(lv.iterdir()):
            files[f"{lv.name}/{f.name}"] = f.read_bytes()
    return files


def _close_to(a, b):
    """The engine's tiling tolerance (tests/test_engine.py) for flow methods."""
    diff = np.abs(a.astype(float) - b)
    return diff.mean() <= 0.05 and np.percentile(diff, 99.9) <= 2 and diff.max() <= 8


def test_linear_equals_engine_with_pyramid_and_scale(client, crop, in_zarr, tmp_path,
                                                     monkeypatch):
    # A tiny submission window: pyramid tasks must find their dependencies all the same.
    monkeypatch.setattr(zd_client, "MIN_IN_FLIGHT", 3)
    monkeypatch.setattr(zd_client, "IN_FLIGHT_PER_THREAD", 1)
    out = tmp_path / "lin.zarr"
    done = []
    p = zd.reconstruct_to_zarr(in_zarr, out, "linear", 4, client=client, chunks=(8, 64, 64),
                               levels=3, progress=lambda d, n: done.append((d, n)))
    ref = engine.reconstruct(crop, "linear", 4)
    vol = io.read_volume(p)
    assert vol.data.shape == ref.shape == (45, 192, 160)
    np.testing.assert_array_equal(vol.data.compute(), ref)
    assert vol.voxel_size == pytest.approx((10.0, 10.0, 10.0))  # 40 nm / 4, isotropic
    assert vol.metadata["levels"] == 3 and vol.metadata["zup"]["status"] == "complete"
    lv1, lv2 = io.read_volume(p, level=1), io.read_volume(p, level=2)
    assert lv1.voxel_size == pytest.approx((10.0, 20.0, 20.0))
    assert lv2.voxel_size == pytest.approx((10.0, 40.0, 40.0)) and lv2.data.shape == (45, 48, 40)
    np.testing.assert_array_equal(lv1.data.compute(), downsample_yx(ref))
    np.testing.assert_array_equal(lv2.data.compute(), downsample_yx(downsample_yx(ref)))
    assert done[-1][0] == done[-1][1] == len(done) - 1  # one report per chunk, all levels
    assert not (out / zd.DONE_GROUP).exists()  # markers removed once complete
    # The model/method object is created once per worker process, not once per chunk.
    loads = client.run(zd.method_loads)
    assert all(n == 1 for per_worker in loads.values() for n in per_worker.values())


def test_of_linear_equals_engine_numpy_input(client, crop, tmp_path):
    out = tmp_path / "of.zarr"
    zd.reconstruct_to_zarr(crop, out, "of-linear", 4, method_params=OF_PARAMS, client=client,
                           chunks=(8, 96, 80), levels=1, voxel_size=(40, 10, 10))
    ref = engine.reconstruct(crop, "of-linear", 4, method_params=OF_PARAMS)
    got = io.read_volume(out).data.compute()
    np.testing.assert_array_equal(got[::4], crop)  # knots are copied
    assert _close_to(got, ref)
    assert np.abs(got.astype(float) - got[::4].repeat(4, 0)[:45]).mean() > 1  # not a copy


def test_tiff_and_dask_inputs(client, crop, tmp_path):
    tif = tmp_path / "in.tif"
    io.write_volume(tif, crop, (40.0, 10.0, 10.0))
    ref = engine.reconstruct(crop, "cubic", 2)
    a = zd.reconstruct_to_zarr(tif, tmp_path / "a.zarr", "cubic", 2, client=client,
                               chunks=(8, 96, 96), levels=1)
    va = io.read_volume(a)
    np.testing.assert_array_equal(va.data.compute(), ref)
    assert va.voxel_size == pytest.approx((20.0, 10.0, 10.0))
    b = zd.reconstruct_to_zarr(da.from_array(crop, chunks=(5, 64, 64)), tmp_path / "b.zarr",
                               "cubic", 2, client=client, chunks=(6, 64, 64), levels=2)
    vb = io.read_volume(b)
    np.testing.assert_array_equal(vb.data.compute(), ref)
    # no voxel size given or recorded: pixels, no claimed unit, the z step still divided by F
    ms = dict(zarr.open_group(str(b), mode="r").attrs)["multiscales"][0]
    assert all("unit" not in ax for ax in ms["axes"])
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [0.5, 1.0, 1.0]
    assert vb.unit == io.UNKNOWN_UNIT and vb.voxel_size == pytest.approx((0.5, 1.0, 1.0))


def test_resume_after_cancel_is_bit_identical(client, in_zarr, tmp_path):
    kw = dict(method_params=OF_PARAMS, client=client, chunks=(8, 64, 64), levels=2)
    ref = zd.reconstruct_to_zarr(in_zarr, tmp_path / "ref.zarr", "of-linear", 4, **kw)

    out = tmp_path / "run.zarr"
    cancel = threading.Event()

    def stop_after_some(done, total):
        if done >= 5:
            cancel.set()

    with pytest.raises(zd.ReconstructionCancelled, match="resume"):
        zd.reconstruct_to_zarr(in_zarr, out, "of-linear", 4, progress=stop_after_some,
                               cancel=cancel, **kw)
    attrs = dict(zarr.open_group(str(out), mode="r").attrs)
    assert attrs["zup"]["status"] == "incomplete"
    n_marked = len(os.listdir(out / zd.DONE_GROUP / "0"))
    total = 6 * 3 * 3 + 6 * 2 * 2
    assert 5 <= n_marked < total
    with pytest.raises(zd.OutputConflict, match="resume"):
        zd.reconstruct_to_zarr(in_zarr, out, "of-linear", 4, resume=False, **kw)
    # the unfinished store is not read as input (its missing chunks would read as zeros)
    with pytest.raises(io.VolumeReadError, match="unfinished") as exc:
        io.read_volume(out)
    assert f"{out} --method of-linear --factor 4" in str(exc.value)
    with pytest.raises(io.VolumeReadError, match="unfinished"):
        zd.reconstruct_to_zarr(out, tmp_path / "next.zarr", "linear", 2, client=client)

    seen = []
    zd.reconstruct_to_zarr(in_zarr, out, "of-linear", 4, progress=lambda d, n: seen.append(d),
                           **kw)
    assert seen[0] >= n_marked  # finished chunks were skipped, not recomputed
    assert dict(zarr.open_group(str(out), mode="r").attrs)["zup"]["status"] == "complete"
    a, b = _chunk_bytes(ref), _chunk_bytes(out)
    assert a.keys() == b.keys() and len(a) > total
    assert all(a[k] == b[k] for k in a)


def test_other_run_refused_unless_overwrite(client, crop, in_zarr, tmp_path):
    out = tmp_path / "o.zarr"
    zd.reconstruct_to_zarr(in_zarr, out, "linear", 4, client=client, levels=1)
    with pytest.raises(zd.OutputConflict, match="factor"):
        zd.reconstruct_to_zarr(in_zarr, out, "linear", 2, client=client, levels=1)
    with pytest.raises(zd.OutputConflict, match="method"):
        zd.reconstruct_to_zarr(in_zarr, out, "cubic", 4, client=client, levels=1)
    zd.reconstruct_to_zarr(in_zarr, out, "linear", 2, client=client, levels=1, overwrite=True)
    np.testing.assert_array_equal(io.read_volume(out).data.compute(),
                                  engine.reconstruct(crop, "linear", 2))
    foreign = tmp_path / "foreign.zarr"
    foreign.mkdir()
    with pytest.raises(zd.OutputConflict, match="not written by"):
        zd.reconstruct_to_zarr(in_zarr, foreign, "linear", 2, client=client)


def test_unreachable_scheduler_clear_error_nothing_written(in_zarr, tmp_path):
    out = tmp_path / "never.zarr"
    t0 = time.perf_counter()
    with pytest.raises(zd.SchedulerUnreachable, match="127.0.0.1:9"):
        zd.reconstruct_to_zarr(in_zarr, out, "linear", 4, scheduler="tcp://127.0.0.1:9",
                               connect_timeout=2)
    assert time.perf_counter() - t0 < 30  # "within a few seconds" (generous: shared CPU)
    assert not out.exists()


def test_disk_full_keeps_finished_chunks_and_resumes(crop, in_zarr, tmp_path, monkeypatch):
    """A write that fails for good (ENOSPC) stops the run with a clear error; the chunks
    written before stay, the store says incomplete, and a rerun finishes it bit-identically.
    Threads in this process (processes=False) so that the failing write can be patched in."""
    kw = dict(chunks=(8, 64, 64), levels=2, workers=1, processes=False, retries=1)
    ref = zd.reconstruct_to_zarr(in_zarr, tmp_path / "ref.zarr", "linear", 4, **kw)
    real_write, calls = zd_worker._write_chunk, []

    def full_disk_after_6(arr, sel, block):
        calls.append(1)
        if len(calls) > 6:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(arr, sel, block)

    monkeypatch.setattr(zd_worker, "_write_chunk", full_disk_after_6)
    out = tmp_path / "full.zarr"
    with pytest.raises(zd.ReconstructionFailed, match="No space left.*resume"):
        zd.reconstruct_to_zarr(in_zarr, out, "linear", 4, **kw)
    assert dict(zarr.open_group(str(out), mode="r").attrs)["zup"]["status"] == "incomplete"
    assert sum(len(os.listdir(out / zd.DONE_GROUP / lv)) for lv in ("0", "1")) == 6
    monkeypatch.setattr(zd_worker, "_write_chunk", real_write)
    zd.reconstruct_to_zarr(in_zarr, out, "linear", 4, **kw)
    a, b = _chunk_bytes(ref), _chunk_bytes(out)
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)


def test_worker_killed_mid_run_still_completes(client, in_zarr, tmp_path):
    from distributed import Client, LocalCluster

    kw = dict(method_params=OF_PARAMS, chunks=(4, 64, 64), levels=1)
    ref = zd.reconstruct_to_zarr(in_zarr, tmp_path / "ref.zarr", "of-linear", 4,
                                 client=client, **kw)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, \
            Client(cluster, set_as_default=False) as c:
        pids = c.run(os.getpid)
        victim = sorted(pids.values())[0]
        killed = []

        def kill_one(done, total):
            if done >= 3 and not killed:
                os.kill(victim, signal.SIGKILL)
                killed.append(done)

        zd.reconstruct_to_zarr(in_zarr, tmp_path / "k.zarr", "of-linear", 4, client=c,
                               progress=kill_one, retries=3, **kw)
        assert killed and killed[0] < 12 * 3 * 3  # killed before the end
        assert victim not in c.run(os.getpid).values()
    a, b = _chunk_bytes(ref), _chunk_bytes(tmp_path / "k.zarr")
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)


def test_bad_arguments_named(in_zarr, tmp_path):
    with pytest.raises(ValueError, match=r"\.zarr"):
        zd.reconstruct_to_zarr(in_zarr, tmp_path / "x.tif", "linear", 4, workers=1)
    with pytest.raises(ValueError, match="at most one"):
        zd.reconstruct_to_zarr(in_zarr, tmp_path / "x.zarr", "linear", 4, workers=2,
                               scheduler="tcp://127.0.0.1:9")
    with pytest.raises(FileNotFoundError, match="create it first"):
        zd.reconstruct_to_zarr(in_zarr, tmp_path / "nope" / "x.zarr", "linear", 4, workers=1)
    with pytest.raises(ValueError, match="is the input"):
        zd.reconstruct_to_zarr(in_zarr, in_zarr, "linear", 4, workers=1)
    with pytest.raises(io.VolumeReadError, match="level 5"):
        zd.reconstruct_to_zarr(in_zarr, tmp_path / "x.zarr", "linear", 4, input_level=5,
                               workers=1)


def test_ome_zarr_input_level_and_volume_input(client, crop, in_zarr, tmp_path):
    """Input from a chosen OME-Zarr level (path + input_level, or the io.Volume of a level,
    as the napari widget would pass it): shapes and voxel sizes follow that level."""
    pyr = zd.reconstruct_to_zarr(in_zarr, tmp_path / "pyr.zarr", "nearest", 2, client=client,
                                 levels=2)
    lv1 = io.read_volume(pyr, level=1)  # (23, 96, 80), voxel (20, 20, 20)
    ref = engine.reconstruct(lv1.data.compute(), "linear", 2)
    a = zd.reconstruct_to_zarr(pyr, tmp_path / "a.zarr", "linear", 2, client=client,
                               input_level=1, levels=1)
    b = zd.reconstruct_to_zarr(lv1, tmp_path / "b.zarr", "linear", 2, client=client, levels=1)
    for out in (a, b):
        v = io.read_volume(out)
        assert v.data.shape == ref.shape == (45, 96, 80)
        np.testing.assert_array_equal(v.data.compute(), ref)
        assert v.voxel_size == pytest.approx((10.0, 20.0, 20.0))
        assert v.metadata["zup"]["signature"]["input"]["level"] == 1


def test_learned_method_loaded_once_per_worker(client, crop, tmp_path):
    """film (the shipped checkpoint): each worker process loads the model once for all its
    chunks; the result equals the engine's; the checkpoint's hash is part of the signature."""
    vol = crop[:5, :96, :96]
    ref = engine.reconstruct(vol, "film", 2)
    out = zd.reconstruct_to_zarr(vol, tmp_path / "film.zarr", "film", 2, client=client,
                                 chunks=(2, 48, 48), levels=1)
    got = io.read_volume(out)
    # the same model on 48-px chunks with its 64-px halo, in worker processes with their own
    # torch thread count: float summation order differs, so a rounding may flip (measured: 1
    # pixel of 82,944 by 1 grey level); the engine's tiled-vs-untiled tolerance for film
    diff = np.abs(got.data.compute().astype(int) - ref.astype(int))
    assert diff.max() <= 2 and (diff > 0).mean() < 1e-3, (diff.max(), (diff > 0).mean())
    np.testing.assert_array_equal(got.data.compute()[::2], vol)  # knots copied exactly
    assert len(got.metadata["zup"]["signature"]["checkpoint"]["sha256"]) == 64
    loads = client.run(zd.method_loads)
    film = [n for per_worker in loads.values() for k, n in per_worker.items()
            if k.startswith("film ")]
    assert film and all(n == 1 for n in film)  # 20 chunks, one load per worker


@pytest.fixture
def small_disk(tmp_path):
    """A real 4 MB file system (tmpfs) for the output; needs root (mount), as in CI."""
    import subprocess

    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
            capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root); the ENOSPC test above "
                    "covers the logic")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_real_disk_full_mid_run_then_freed_resumes(crop, in_zarr, tmp_path, small_disk):
    """The output's file system really fills up mid-run (another program writes a big file
    after a few chunks): the run stops with a clear error, chunks written before stay, the
    store says incomplete; once space is freed the same call finishes it with the same bytes
    as an undisturbed run."""
    kw = dict(chunks=(8, 64, 64), levels=2, workers=1, processes=False, retries=1)
    ref = zd.reconstruct_to_zarr(in_zarr, tmp_path / "ref.zarr", "linear", 4, **kw)
    filler = small_disk / "someone_elses_file.bin"

    def fill_disk_after_4(done, total):
        if done >= 4 and not filler.exists():
            fd = os.open(filler, os.O_WRONLY | os.O_CREAT)  # unbuffered: nothing left to flush
            try:
                while True:
                    os.write(fd, b"\xff" * 65536)
            except OSError:  # ENOSPC: the disk is full now
                pass
            finally:
                os.close(fd)

    out = small_disk / "out.zarr"
    with pytest.raises(zd.ReconstructionFailed, match="No space left.*rerun"):
        zd.reconstruct_to_zarr(in_zarr, out, "linear", 4, progress=fill_disk_after_4, **kw)
    assert dict(zarr.open_group(str(out), mode="r").attrs)["zup"]["status"] == "incomplete"
    kept = sum(len(os.listdir(out / zd.DONE_GROUP / lv)) for lv in ("0", "1"))
    assert kept >= 4
    for lv in ("0", "1"):  # every marked chunk is whole (zarr writes chunk files atomically)
        for name in os.listdir(out / zd.DONE_GROUP / lv):
            assert (out / lv / name).read_bytes() == (ref / lv / name).read_bytes()

    filler.unlink()
    seen = []
    zd.reconstruct_to_zarr(in_zarr, out, "linear", 4, progress=lambda d, n: seen.append(d), **kw)
    assert seen[0] == kept
    a, b = _chunk_bytes(ref), _chunk_bytes(out)
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)
