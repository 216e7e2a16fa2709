"""The Reconstruct widget sending a layer to a dask cluster (the engine of ``zup reconstruct
--workers/--scheduler``): the result is an OME-Zarr store shown as a lazily read layer that
fills in, resumable after Cancel. Real FIB-SEM sample, linear method, small chunks."""
import threading

import numpy as np
import pytest
import zarr

from napari_zup import io
from napari_zup.engine import reconstruct

from .test_napari_widgets import TIMEOUT_MS

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def scheduler():
    """An in-process cluster (threads): the widget reaches it through its address, exactly as
    it would reach a dask-jobqueue or Kubernetes scheduler."""
    from distributed import LocalCluster

    cluster = LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                           dashboard_address=":0")
    yield cluster.scheduler_address
    cluster.close()


@pytest.fixture
def hold_chunks(monkeypatch):
    """``gate = hold_chunks(n)``: the cluster run's client stops submitting after ``n``
    finished chunks until ``gate.set()``, so the half-written state is checked without racing
    the workers."""
    from napari_zup._qt._cluster_run import ClusterRun
    from napari_zup.distributed import client as distributed

    # at most 4 x threads chunks in flight (not 64): a held run stops with chunks to spare
    monkeypatch.setattr(distributed, "MIN_IN_FLIGHT", 1)
    original = ClusterRun._events
    gates = []

    def install(n):
        gate = threading.Event()
        gates.append(gate)

        def held(self):
            events = original(self)
            try:
                for event in events:
                    yield event
                    if event.done == n:
                        gate.wait(TIMEOUT_MS / 1000)
            finally:
                events.close()

        monkeypatch.setattr(ClusterRun, "_events", held)
        return gate

    yield install
    for g in gates:
        g.set()


def _widget(viewer, engine, out, method="linear"):
    from napari_zup._qt import ReconstructWidget
    from napari_zup._qt._reconstruct import ENGINES

    w = ReconstructWidget(viewer)
    assert engine in ENGINES
    w.engine_combo.setCurrentText(engine)
    w.method_combo.setCurrentText(method)
    w.output_edit.setText(str(out))
    w._output_auto = False
    return w


def _wait(qtbot, run):
    qtbot.waitUntil(lambda: not run.running, timeout=TIMEOUT_MS)


def _written_slices(arr) -> list[int]:
    return [i for i in range(arr.shape[0]) if np.asarray(arr[i]).any()]


def test_local_cluster_run_fills_a_zarr_layer_in(qtbot, viewer_with_sample, tmp_path,
                                                 hold_chunks):
    from napari_zup._qt._reconstruct import ENGINE_LOCAL

    viewer, layer = viewer_with_sample
    before = layer.data.copy()
    out = tmp_path / "result.zarr"
    w = _widget(viewer, ENGINE_LOCAL, out)
    w.workers_spin.setValue(1)
    # the threads-only options are hidden, the cluster's shown
    assert w.output_row.isVisibleTo(w) and w.workers_spin.isVisibleTo(w)
    assert not w.tile_spin.isVisibleTo(w) and not w.scheduler_edit.isVisibleTo(w)
    gate = hold_chunks(2)
    run = w.start()
    qtbot.waitUntil(lambda: run.layer is not None and run.done >= 2, timeout=TIMEOUT_MS)
    qtbot.wait(200)
    # mid-run: the layer reads the store on disk, some chunks are in, the rest is still empty
    assert run.running and 2 <= run.done < run.total
    assert isinstance(run.layer.data, zarr.Array)
    assert run.layer.metadata["zup"]["status"] == "running"
    filled = _written_slices(run.layer.data)
    assert filled and filled[0] == 0 and len(filled) < run.out_shape[0]
    assert not w.run_button.isEnabled() and w.cancel_button.isEnabled()
    gate.set()
    _wait(qtbot, run)
    assert run.status == "done", run.error
    got = run.layer
    assert got.name == f"{layer.name} · linear ×4 (cluster)"
    assert got.metadata["zup"]["status"] == "done" and not got.metadata["zup"]["partial"]
    assert tuple(got.scale) == pytest.approx((10.0, 10.0, 10.0))
    np.testing.assert_array_equal(np.asarray(got.data), reconstruct(before, "linear", 4))
    np.testing.assert_array_equal(layer.data, before)  # the input is never modified
    # the store on disk is a complete OME-Zarr with the voxel size
    vol = io.read_volume(out)
    assert vol.voxel_size == pytest.approx((10.0, 10.0, 10.0))
    assert zarr.open_group(str(out), mode="r").attrs["zup"]["status"] == "complete"
    # the next run gets a fresh name: a finished result is never overwritten
    assert w.output_edit.text() != str(out)


def test_cancel_keeps_a_resumable_store_and_run_again_finishes_it(
        qtbot, viewer_with_sample, tmp_path, scheduler, hold_chunks, notes):
    from napari_zup._qt._reconstruct import ENGINE_SCHEDULER

    viewer, layer = viewer_with_sample
    out = tmp_path / "resume.zarr"
    w = _widget(viewer, ENGINE_SCHEDULER, out)
    w.scheduler_edit.setText(scheduler)
    gate = hold_chunks(2)
    run = w.start()
    qtbot.waitUntil(lambda: run.layer is not None and run.done >= 2, timeout=TIMEOUT_MS)
    w.cancel()
    gate.set()
    _wait(qtbot, run)
    assert run.status == "cancelled"
    assert run.layer.name.endswith("(partial)") and run.layer.metadata["zup"]["partial"]
    assert any("resume" in str(m) for m in notes)
    assert zarr.open_group(str(out), mode="r").attrs["zup"]["status"] == "incomplete"
    n_kept = run.done
    assert 2 <= n_kept < run.total
    assert w.output_edit.text() == str(out)  # left as it was, so that Run resumes
    run2 = w.start()
    _wait(qtbot, run2)
    assert run2.status == "done", run2.error
    assert run2.stats["resumed_chunks"] >= n_kept  # finished chunks were not computed again
    np.testing.assert_array_equal(np.asarray(run2.layer.data),
                                  reconstruct(layer.data, "linear", 4))


def test_a_file_opened_lazily_is_read_by_the_workers_into_a_pyramid(
        qtbot, make_napari_viewer, tmp_path, scheduler):
    """A layer read lazily from OME-Zarr goes to the cluster as its path (nothing is sent from
    napari); a pyramid output is shown as a multiscale layer."""
    from napari_zup._qt._cluster_run import ClusterRun, cluster_source
    from napari_zup._sample_data import anisotropic_sample

    data, kw, _ = anisotropic_sample()[0]
    src = tmp_path / "in.zarr"
    io.write_volume(src, data, kw["scale"], chunks=(8, 96, 96))
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(src), plugin="napari-zup")
    assert isinstance(cluster_source(layer), io.Volume)
    run = ClusterRun(viewer, layer, "linear", 4, tmp_path / "pyr.zarr", scheduler=scheduler,
                     levels=2, chunks=(16, 96, 96)).start()
    _wait(qtbot, run)
    assert run.status == "done", run.error
    assert run.layer.multiscale and len(run.layer.data) == 2
    assert tuple(run.layer.data[1].shape) == (129, 96, 96)
    np.testing.assert_array_equal(np.asarray(run.layer.data[0]), reconstruct(data, "linear", 4))
    assert tuple(run.layer.scale) == pytest.approx((10.0, 10.0, 10.0))


@pytest.mark.parametrize("case", ["no output", "not zarr", "no scheduler", "unreachable",
                                  "other run"])
def test_bad_cluster_settings_are_refused_with_a_reason(qtbot, viewer_with_sample, tmp_path,
                                                        scheduler, notes, case):
    from napari_zup._qt._reconstruct import ENGINE_SCHEDULER

    viewer, layer = viewer_with_sample
    out = tmp_path / "out.zarr"
    if case == "other run":  # a store of another run is there: refused, left untouched
        io.write_volume(out, layer.data[:4], (40.0, 10.0, 10.0))
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    w = _widget(viewer, ENGINE_SCHEDULER, out)
    w.scheduler_edit.setText({"no scheduler": "", "unreachable": "tcp://127.0.0.1:9"}.get(
        case, scheduler))
    if case == "no output":
        w.output_edit.setText("")
    if case == "not zarr":
        w.output_edit.setText(str(tmp_path / "out.tif"))
    n_layers = len(viewer.layers)
    run = w.start()
    if run is not None:
        _wait(qtbot, run)
        assert run.status == "failed"
    expected = {"no output": "choose an output", "not zarr": "ending in .zarr",
                "no scheduler": "address of the dask scheduler",
                "unreachable": "cannot reach the dask scheduler",
                "other run": "not written by a zup distributed run"}[case]
    qtbot.waitUntil(lambda: any(expected in str(m) for m in notes), timeout=TIMEOUT_MS)
    assert len(viewer.layers) == n_layers  # no half-made output layer
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert w.run_button.isEnabled()
