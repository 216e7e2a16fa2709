"""The one progress protocol (napari_zup.progress): the event type, the rate/ETA meter, the
generators that yield events (engine, evaluation, cluster runner) and cancel by one event."""
import dataclasses
import threading

import numpy as np
import pytest

from napari_zup._cli.common import _StderrProgress
from napari_zup._sample_data import SAMPLE_FACTOR, sample_path
from napari_zup.engine import ReconstructionCancelled, reconstruct, reconstruct_events
from napari_zup.evaluation import evaluate_events, evaluate_method
from napari_zup.io import read_volume
from napari_zup.progress import Meter, Progress, drive, events_from_callback


@pytest.fixture(scope="module")
def sample():
    """The bundled FlyEM crop at its anisotropic spacing, cut small: 6 knots of 96 x 80."""
    g = np.asarray(read_volume(sample_path()).data)
    return g[::SAMPLE_FACTOR][:6, :96, :80].copy()


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_event_is_frozen_and_knows_its_fraction():
    ev = Progress(3, 12, "linear ×4", payload=(2, None))
    assert ev.fraction == 0.25 and Progress(0, 0).fraction == 1.0
    assert ev.message == "linear ×4" and ev.payload == (2, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ev.done = 4


def test_meter_rate_and_eta():
    clock = Clock()
    m = Meter(10, "slices", clock=clock)
    assert np.isnan(m.eta) and m.rate == 0.0 and "ETA ?" in str(m)
    clock.t += 4.0
    m.update(Progress(2, 10))                   # 2 slices in 4 s: 0.5/s, 8 left -> 16 s
    assert m.rate == pytest.approx(0.5) and m.eta == pytest.approx(16.0)
    m.update(3)                                 # counts too: 5 in 4 s, 5 left -> 4 s
    assert m.done == 5 and m.eta == pytest.approx(4.0)
    assert str(m) == "5/10 slices, 1.2 slices/s, elapsed 4s, ETA 4s"


def test_meter_does_not_count_resumed_items_towards_the_rate():
    clock = Clock()
    m = Meter(100, "chunks", done=40, clock=clock)   # 40 chunks written by an earlier run
    clock.t += 10.0
    assert np.isnan(m.eta)                           # none new yet: unknown, not 0
    m.update(Progress(60, 100))                      # 20 new in 10 s: 2/s, 40 left -> 20 s
    assert m.rate == pytest.approx(2.0) and m.eta == pytest.approx(20.0)
    assert "(40 already done)" in str(m) and "ETA 20s" in str(m)


def test_drive_returns_the_result_and_closes_the_generator_on_error():
    closed = []

    def job():
        try:
            for i in range(5):
                yield Progress(i + 1, 5)
            return "result"
        finally:
            closed.append(True)

    seen = []
    assert drive(job(), lambda ev: seen.append(ev.done)) == "result"
    assert seen == [1, 2, 3, 4, 5] and closed == [True]

    def stop_at_2(ev):
        if ev.done == 2:
            raise KeyError("consumer failed")

    with pytest.raises(KeyError):
        drive(job(), stop_at_2)
    assert closed == [True, True]


def test_events_from_callback_forwards_events_and_the_result():
    def work(n, *, on_progress):
        for i in range(n):
            on_progress(Progress(i + 1, n, f"item {i}"))
        return n * 10

    gen = events_from_callback(work, 3)
    assert [ev.message for ev in gen] == ["item 0", "item 1", "item 2"]
    assert drive(events_from_callback(work, 4)) == 40

    def broken(*, on_progress):
        on_progress(Progress(1, 2))
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        list(events_from_callback(broken))


def test_reconstruction_events_in_order_with_totals_and_slices(sample):
    ref = reconstruct(sample, "linear", 4)
    events = list(reconstruct_events(sample, "linear", 4, tile_size=48))
    n = ref.shape[0]
    assert n == 21
    assert [ev.done for ev in events] == list(range(1, n + 1))
    assert {ev.total for ev in events} == {n}
    assert [ev.payload[0] for ev in events] == list(range(n))     # z order
    assert all("linear" in ev.message for ev in events)
    np.testing.assert_array_equal(np.stack([ev.payload[1] for ev in events]), ref)


def test_reconstruction_events_carry_flows(sample):
    params = {"winsize": 15, "levels": 2}
    events = list(reconstruct_events(sample[:3], "of-linear", 2, method_params=params,
                                     want_flows=True))
    assert [len(ev.payload) for ev in events] == [3] * 5
    assert events[1].payload[2].shape == sample.shape[1:] + (2,)   # a restored slice: a flow
    assert events[0].payload[2] is None                            # a knot: none


def test_cancel_stops_within_one_slice(sample):
    cancel = threading.Event()
    got = []
    with pytest.raises(ReconstructionCancelled):
        for ev in reconstruct_events(sample, "linear", 4, cancel=cancel, workers=1):
            got.append(ev.done)
            if ev.done == 2:                 # mid-slab (a slab is 4 slices here)
                cancel.set()
    assert got == [1, 2]


def test_evaluation_yields_the_reconstruction_and_returns_the_score(sample):
    g = sample[:5]                                    # 5 real sections; keep 0, 2, 4
    events = evaluate_events(g, 2, "linear", keep_output=True)
    seen = []
    score, out, maps = drive(events, seen.append)
    assert [ev.done for ev in seen] == [1, 2, 3, 4, 5] and seen[-1].total == 5
    assert score.n_slices == 2 and maps is None
    np.testing.assert_array_equal(out, np.stack([ev.payload[1] for ev in seen]))
    calls = []                                        # the callback API: the same events
    same, _, _ = evaluate_method(g, 2, "linear", on_slice=lambda i, sl: calls.append(i))
    assert calls == [0, 1, 2, 3, 4] and same.psnr == score.psnr


def test_cancel_stops_an_evaluation(sample):
    cancel = threading.Event()
    with pytest.raises(ReconstructionCancelled):
        for ev in evaluate_events(sample, 2, "linear", cancel=cancel):
            cancel.set()
            assert ev.done == 1


def test_cli_progress_line_from_events(capsys):
    line = _StderrProgress(3, "reconstruct", every=1e9)
    for i in range(3):
        line.update(Progress(i + 1, 3))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1                       # throttled: only the final line
    assert err[-1].startswith("reconstruct: 3/3 slices, ") and "ETA 0s" in err[-1]


def test_cluster_run_is_a_progress_generator(sample, tmp_path):
    pytest.importorskip("distributed")
    from napari_zup.distributed import iter_reconstruct_to_zarr

    out = tmp_path / "out.zarr"
    cancel = threading.Event()
    gen = iter_reconstruct_to_zarr(sample, out, "linear", 4, workers=1, processes=False,
                                   chunks=(4, 48, 48), levels=1, cancel=cancel)
    with pytest.raises(ReconstructionCancelled, match="resume"):
        for ev in gen:
            if ev.done >= 2:
                cancel.set()
    seen = []
    path = drive(iter_reconstruct_to_zarr(sample, out, "linear", 4, workers=1,
                                          processes=False, chunks=(4, 48, 48), levels=1),
                 seen.append)
    assert path == out
    total = 6 * 2 * 2                        # 21 slices in z-chunks of 4, 96 x 80 in 48 x 48
    assert {ev.total for ev in seen} == {total}
    assert seen[0].done >= 2                  # the first event counts the chunks kept
    assert [ev.done for ev in seen] == sorted(ev.done for ev in seen)
    assert seen[-1].done == total and seen[-1].message == "chunks written"
    np.testing.assert_array_equal(read_volume(out).data, reconstruct(sample, "linear", 4))
