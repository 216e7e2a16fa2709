"""The learned-model framework: anchored outputs (flat stays flat), checkpoint and training-state
errors, the one training session for every learned method, adaptation, augmentation."""
import json
import pickle
import struct

import numpy as np
import pytest
import torch

from napari_zup.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from napari_zup.engine import reconstruct
from napari_zup.methods import method_names


@pytest.fixture(scope="module", autouse=True)
def _threads(one_torch_thread):
    """Every test of this module on one torch thread (conftest.one_torch_thread)."""


# -- flat input stays flat, for every registered method (shipped checkpoints) ---------------

@pytest.mark.parametrize("value,dtype", [(7, np.uint8), (1234, np.uint16), (250, np.uint8)])
@pytest.mark.parametrize("method", method_names())
def test_flat_input_stays_flat(method, value, dtype):
    vol = np.full((4, 40, 44), value, dtype)
    out = reconstruct(vol, method, 4, method_params={"device": "cpu"} if method in (
        "film", "tsain", "niiv", "a2i") else None)
    assert out.shape == (13, 40, 44) and out.dtype == vol.dtype
    dev = np.abs(out.astype(np.int64) - value)
    assert dev.max() <= 1, (method, int(out.min()), int(out.max()))


def test_learned_outputs_stay_within_the_local_range_of_their_inputs():
    """The anchor itself: a step edge is not overshot by more than its own two levels."""
    from napari_zup.methods._torch_common import bound_to_local_range

    a = torch.zeros(1, 1, 8, 8)
    a[..., 4:] = 1.0
    wild = torch.randn(1, 1, 8, 8) * 5
    out = bound_to_local_range(wild, (a, a), radius=1)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    # far from the edge (more than the radius) the range is a single value
    assert torch.equal(out[..., :2], torch.zeros(1, 1, 8, 2))
    assert torch.equal(out[..., 6:], torch.ones(1, 1, 8, 2))


# -- checkpoint metadata and files -----------------------------------------------------------

def _write_raw_safetensors(path, header_meta: str):
    """A safetensors file with one float tensor and a hand-written "zup" metadata string."""
    header = {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
              "__metadata__": {"zup": header_meta}}
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + np.zeros(2, np.float32).tobytes())


@pytest.mark.parametrize("meta,words", [
    ("{not json", "not valid JSON"),
    ("[1, 2, 3]", "JSON list, not an object"),
    ('"film"', "JSON str, not an object"),
])
def test_bad_checkpoint_metadata_is_one_clear_error(tmp_path, meta, words):
    p = tmp_path / "bad.safetensors"
    _write_raw_safetensors(p, meta)
    with pytest.raises(CheckpointError, match=words) as exc:
        load_checkpoint(p, method="film")
    assert "bad.safetensors" in str(exc.value) and "\n" not in str(exc.value)


def test_pt_checkpoint_with_non_object_metadata_refused(tmp_path):
    p = tmp_path / "m.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "metadata": "[1]"}, p)
    with pytest.raises(CheckpointError, match="not an object"):
        load_checkpoint(p)
    torch.save({"state_dict": {"w": torch.zeros(2)}, "metadata": "{oops"}, p)
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(p)


def test_corrupted_tensor_bytes_refused(tmp_path):
    p = tmp_path / "ok.safetensors"
    save_checkpoint(p, {"w": torch.arange(64, dtype=torch.float32)}, {"method": "film"})
    raw = bytearray(p.read_bytes())
    raw[-5] ^= 0xFF
    p.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="corrupted"):
        load_checkpoint(p, method="film")


# -- one `zup train METHOD` with the same flags -------------------------------------------------

COMMON = ["--data", "x.tif", "--out", "o.safetensors", "--minutes", "1", "--steps", "3",
          "--eval-every", "2", "--lr", "1e-4", "--batch", "2", "--device", "cpu", "--seed", "3",
          "--augment", "--self-supervised", "--from-scratch"]


@pytest.mark.parametrize("method", ["film", "tsain", "niiv", "a2i"])
def test_same_flags_for_every_learned_method(method):
    from napari_zup.training.cli import config_from_args

    cfg = config_from_args(method, COMMON)
    assert (cfg.method, cfg.data, cfg.steps, cfg.eval_every, cfg.lr, cfg.batch, cfg.seed) == (
        method, "x.tif", 3, 2, 1e-4, 2, 3)
    assert cfg.augment and cfg.self_supervised and cfg.init is None
    assert config_from_args(method, COMMON[:-1]).init == "bundled"  # the default start
    assert config_from_args(method, COMMON[:-1] + ["--resume", "s.pt"]).init is None


@pytest.mark.parametrize("method,flag", [("niiv", ["--val", "v.tif"]), ("a2i", ["--val", "v.tif"]),
                                         ("film", ["--degradation", "pool"]),
                                         ("tsain", ["--rows", "8"])])
def test_a_flag_of_the_other_family_is_refused(method, flag, capsys):
    from napari_zup.training.cli import config_from_args

    with pytest.raises(SystemExit) as exc:
        config_from_args(method, COMMON + flag)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"{flag[0]} does not apply to {method}" in err


def _stack(tmp_path, n=12, size=64, name="stack.tif"):
    import tifffile

    from ._data import SAMPLE2, need

    g = tifffile.imread(need(SAMPLE2))[:n * 4:4, 80:80 + size, 80:80 + size]
    p = tmp_path / name
    tifffile.imwrite(p, np.ascontiguousarray(g), imagej=True,
                     resolution=(1 / 10.0, 1 / 10.0), metadata={"spacing": 40.0, "unit": "nm"})
    return p, g


def _sha(path):
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("method", ["niiv", "film"])
def test_adapting_the_bundled_model_records_what_it_was_adapted_on(tmp_path, method, capsys):
    """Default start = the bundled checkpoint; held-out sections decide whether the result
    is better; the metadata says what it was adapted on; the bundled file is untouched."""
    from napari_zup.checkpoints import default_checkpoint
    from napari_zup.training.cli import main

    data, g = _stack(tmp_path, 12, 64)
    bundled = default_checkpoint(method)
    before = _sha(bundled)
    out = tmp_path / "adapted.safetensors"
    extra = ["--factor", "4"] if method == "niiv" else ["--self-supervised", "--crop", "32"]
    rc = main(method, ["--data", str(data), "--out", str(out), "--steps", "2",
                       "--eval-every", "1", "--batch", "2", "--device", "cpu"] + extra)
    text = capsys.readouterr()
    assert rc == 0, text.err
    assert _sha(bundled) == before
    _, meta = load_checkpoint(out, method)
    ad = meta["adapted_on"]
    assert ad["file"] == "stack.tif" and ad["shape"] == list(g.shape)
    assert ad["voxel_size"] == pytest.approx([40.0, 10.0, 10.0])
    assert "sections" in ad["held_out"] and ad["steps"] == 2 and ad["device"] == "cpu"
    assert ad["start"] == f"bundled {method}.safetensors"
    s, a = ad["held_out_scores"]["start"], ad["held_out_scores"]["adapted"]
    assert np.isfinite([s["psnr"], s["ssim"], a["psnr"], a["ssim"]]).all()
    better = a["psnr"] > s["psnr"] + 1e-3 and a["ssim"] >= s["ssim"]
    assert ad["better"] is better
    if not better:  # the starting weights are what the file holds, labelled
        assert meta["training"]["label"] == "not better than the starting model"
        assert "did not beat the starting model" in text.out
        w_out, _ = load_checkpoint(out, method)
        w_b, _ = load_checkpoint(bundled, method)
        assert all(torch.equal(w_out[k], w_b[k]) for k in w_b)


def test_out_on_the_bundled_checkpoint_is_refused(tmp_path, capsys):
    from napari_zup.checkpoints import default_checkpoint
    from napari_zup.training.cli import main

    data, _ = _stack(tmp_path, 12, 64)
    bundled = default_checkpoint("niiv")
    before = _sha(bundled)
    rc = main("niiv", ["--data", str(data), "--out", str(bundled), "--steps", "1",
                       "--factor", "4"])
    assert rc == 2 and "bundled" in capsys.readouterr().err
    assert _sha(bundled) == before


@pytest.mark.parametrize("method,args,words", [
    ("film", ["--self-supervised", "--from-scratch"], "at least 8 sections"),
    ("niiv", ["--factor", "4", "--crop", "200", "--from-scratch"], "too small"),
    ("tsain", ["--self-supervised", "--crop", "200", "--from-scratch"], "smaller than the crop"),
])
def test_too_small_or_too_short_stack_refused_nothing_written(tmp_path, capsys, method, args,
                                                              words):
    from napari_zup.training.cli import main

    n = 5 if words == "at least 8 sections" else 12
    data, _ = _stack(tmp_path, n, 64)
    out = tmp_path / "never.safetensors"
    rc = main(method, ["--data", str(data), "--out", str(out), "--steps", "1"] + args)
    err = capsys.readouterr().err
    assert rc == 2 and words in err and err.count("\n") == 1, err
    assert not out.exists() and not (tmp_path / "never.safetensors.state.pt").exists()


# -- resume: bad training states ---------------------------------------------------------------

class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.parametrize("kind,words", [("evil", "would run code"),
                                        ("truncated", "cannot be read"),
                                        ("notdict", "not a zup training state"),
                                        ("other", "is for 'a2i'")])
def test_bad_training_state_on_resume(tmp_path, kind, words):
    from napari_zup.training.session import TrainingError, train

    state = tmp_path / "m.safetensors.state.pt"
    if kind == "evil":
        with open(state, "wb") as fh:
            pickle.dump({"model": _Evil()}, fh)
    elif kind == "truncated":
        torch.save({"model": {"w": torch.zeros(100)}}, state)
        state.write_bytes(state.read_bytes()[:200])
    elif kind == "notdict":
        torch.save([1, 2, 3], state)
    else:
        torch.save({"method": "a2i", "arch": "{}", "model": {}, "optim": {}, "step": 1,
                    "elapsed": 0.0, "best": 0.0}, state)
    vol = np.random.default_rng(0).integers(0, 255, (12, 40, 40), dtype=np.uint8)
    with pytest.raises(TrainingError, match=words) as exc:
        train("niiv", vol, factors=4, out=tmp_path / "m.safetensors", resume=str(state),
              steps=1)
    msg = str(exc.value)
    assert "weights_only" not in msg and "m.safetensors.state.pt" in msg
    assert not (tmp_path / "m.safetensors").exists()


# -- the session: events, stop, budgets ------------------------------------------------------

def test_session_events_and_stop_keep_the_best(tmp_path):
    import threading

    from napari_zup.training.session import (Finished, Message, Step, TrainConfig,
                                             TrainingSession, Validation)

    vol = np.random.default_rng(1).integers(0, 255, (10, 48, 48), dtype=np.uint8)
    stop = threading.Event()
    out = tmp_path / "n.safetensors"
    cfg = TrainConfig("niiv", vol, out=out, minutes=5, eval_every=3, factors=[4], batch=2,
                      crop=16, rows=5, arch={"channels": 8, "blocks": 1, "hidden": 16,
                                             "layers": 2})
    kinds, steps = [], []
    for ev in TrainingSession(cfg, stop).events():
        kinds.append(type(ev))
        if isinstance(ev, Step):
            steps.append(ev.step)
            assert np.isfinite(ev.loss)
            if ev.step == 7:
                stop.set()
        if isinstance(ev, Validation):
            assert ev.preview is not None and ev.preview.shape == (37, 48)
            assert out.is_file()  # the first validation wrote the first best
        if isinstance(ev, Finished):
            res = ev.result
    assert kinds[0] is Message and kinds[-1] is Finished and Validation in kinds
    assert steps == list(range(1, 8)) and res.stopped and res.steps == 7
    _, meta = load_checkpoint(out, "niiv")
    best = max(h["val_psnr"] for h in res.history)
    assert meta["training"]["val_psnr"] == pytest.approx(best, abs=1e-3)
    assert meta["training"]["held_out"] == "sections 8-9 of array"
    assert "adapted_on" not in meta  # trained from scratch


# -- --augment ---------------------------------------------------------------------------------

def test_degradations_change_the_tuple_not_the_input():
    from napari_zup.training.augment import degrade_tuple

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:48, :48]
    img = (0.5 + 0.3 * np.sin(xx / 3.0) * np.cos(yy / 4.0)).astype(np.float32)
    trip = np.stack([img, np.roll(img, 2, 1), np.roll(img, 1, 1)])
    keep = trip.copy()
    out = degrade_tuple(trip, rng, p=1.0)
    np.testing.assert_array_equal(trip, keep)
    assert out.shape == trip.shape and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert np.abs(out - trip).mean() > 0.01
    # noise is independent per image: the two equal inputs differ afterwards
    same = np.stack([img, img, img])
    d = degrade_tuple(same, np.random.default_rng(1), p=1.0)
    assert np.abs(d[0] - d[1]).mean() > 1e-3
    # p = 0: unchanged
    np.testing.assert_allclose(degrade_tuple(trip, rng, p=0.0), trip, atol=1e-7)


def test_augment_reaches_the_samplers():
    from napari_zup.methods._axial_common import PairSampler
    from napari_zup.training.augment import degrade_tuple
    from napari_zup.training.interp import TupleSampler

    vol = np.random.default_rng(0).integers(0, 255, (12, 40, 40), dtype=np.uint8)
    plain = TupleSampler([vol], crop=32, self_supervised=True, augment=False, seed=4)
    deg = TupleSampler([vol], crop=32, self_supervised=True, augment=False, seed=4, degrade=True)
    a0, a1 = plain.sample(16), deg.sample(16)
    assert all(x.shape == y.shape for x, y in zip(a0, a1))
    assert not np.allclose(a0[0], a1[0])
    assert ((0 < a1[2]) & (a1[2] < 1)).all()  # positions t stay positions
    v01 = vol.astype(np.float32) / 255
    s0 = PairSampler(v01, [4], 5, 16, seed=2)
    s1 = PairSampler(v01, [4], 5, 16, seed=2,
                     degrade=lambda x, r: degrade_tuple(x, r, p=1.0))
    (l0, h0, p0, _), (l1, h1, p1, _) = s0.sample(8), s1.sample(8)
    assert h0.shape == h1.shape and not np.allclose(h0, h1)
    np.testing.assert_array_equal(l1, h1[:, :, ::4])  # rows degraded after the augmentation


def test_axial_training_on_several_stacks_of_different_sizes():
    """niiv/a2i train on several cubes (e.g. sample1 and the extra blocks): batches come from
    every stack, the first stack's last sections are held out, the others all train."""
    from napari_zup.training.axial import AXIAL, MultiSampler
    from napari_zup.training.session import Stack, TrainConfig

    rng = np.random.default_rng(0)
    small = rng.random((20, 64, 64), dtype=np.float32)
    big = 0.5 + 0 * rng.random((10, 96, 128), dtype=np.float32)   # flat: recognisable
    cfg = TrainConfig("niiv", data=None, factors=[2, 4])
    train, val, held = AXIAL.split([Stack(small, "a", None), Stack(big, "b", None)], cfg)
    assert [len(s.data) for s in train] == [17, 10] and len(val[0].data) == 3
    assert "sections 17-19 of a" in held
    s = AXIAL.sampler(train, cfg)
    assert isinstance(s, MultiSampler)
    flat = [np.ptp(s.sample(4)[1]) == 0 for _ in range(60)]
    assert any(flat) and not all(flat)     # both stacks are drawn
    assert sum(flat) > 20                  # the bigger stack more often (by voxels)


@pytest.mark.parametrize("method", ["film", "niiv"])
def test_augmented_training_is_validated_on_degraded_copies_too(method):
    """With --augment the held-out set holds the clean tuples and degraded copies of them,
    so keep-best judges what was trained for; without it, only the clean ones."""
    from napari_zup.training.session import Stack, TrainConfig, family_of

    from ._data import SAMPLE2, need
    import tifffile

    v = tifffile.imread(need(SAMPLE2))[:40, :128, :128].astype(np.float32) / 255
    fam = family_of(method)
    st = [Stack(v, "s2", None)]
    kw = dict(factors=[2], self_supervised=method == "film")
    clean = fam.validation(st, TrainConfig(method, data=None, **kw))
    both = fam.validation(st, TrainConfig(method, data=None, augment=True, **kw))
    assert len(both) == 2 * len(clean)
    for c, b in zip(clean, both[:len(clean)]):           # the clean half is unchanged
        for x, y in zip(c, b):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    tgt = -1 if method == "film" else 1                  # target: film (a,b,t,y), axial (lr,hr,..)
    diffs = [np.abs(np.asarray(d[tgt]) - np.asarray(c[tgt])).mean()
             for c, d in zip(clean, both[len(clean):])]
    assert max(diffs) > 0.005


@pytest.mark.gpu  # skipped without CUDA (conftest.py)
def test_training_on_cuda_mixed_precision(tmp_path):
    from napari_zup.training.session import train

    vol = np.random.default_rng(1).integers(0, 255, (12, 64, 64), dtype=np.uint8)
    res = train("film", vol, out=tmp_path / "f.safetensors", steps=5, eval_every=5,
                self_supervised=True, crop=32, batch=4, device="cuda")
    assert res.steps == 5 and np.isfinite(res.best_psnr)
    _, meta = load_checkpoint(tmp_path / "f.safetensors", "film")
    assert meta["training"]["device"].startswith("cuda")


@pytest.mark.parametrize("method,path", [("film", "napari_zup.methods.film:Film"),
                                         ("tsain", "napari_zup.methods.tsain:Tsain"),
                                         ("niiv", "napari_zup.methods.niiv:Niiv"),
                                         ("a2i", "napari_zup.methods.a2i:A2I")])
def test_lazy_registry_entries_agree_with_the_classes(method, path):
    """learned_registry.py repeats each learned MethodInfo (so that listing methods does not
    import torch): the copies must equal the classes' own."""
    import importlib

    from napari_zup.methods.base import get_info

    mod, cls = path.split(":")
    assert get_info(method) == getattr(importlib.import_module(mod), cls).info


def test_ctrl_c_keeps_the_best_and_never_touches_the_bundled_file(tmp_path):
    """SIGINT during training: the best checkpoint so far stays, exit status 130."""
    import signal
    import subprocess
    import sys
    import time

    from napari_zup.checkpoints import default_checkpoint

    data, _ = _stack(tmp_path, 12, 64)
    bundled = default_checkpoint("niiv")
    before = _sha(bundled)
    out = tmp_path / "a.safetensors"
    proc = subprocess.Popen(
        [sys.executable, "-m", "napari_zup.cli", "train", "niiv", "--data", str(data), "--out",
         str(out), "--factor", "4", "--minutes", "10", "--eval-every", "2", "--batch", "2",
         "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = []
    deadline = time.time() + 240
    for line in proc.stdout:  # wait for the first validation
        lines.append(line)
        if "held-out PSNR" in line or time.time() > deadline:
            break
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=240)
    text = "".join(lines) + rest
    assert proc.returncode == 130, (text, err)
    assert "interrupted" in text + err and out.is_file()  # stderr when it lands mid-save
    _, meta = load_checkpoint(out, "niiv")
    assert meta["adapted_on"]["file"] == "stack.tif"
    assert _sha(bundled) == before


def test_sigterm_whose_exception_was_dropped_still_stops_training(tmp_path, capsys,
                                                                  monkeypatch):
    """`zup train` gets a SIGTERM while the main thread is in a ``__del__`` (the handler's
    exception is printed and dropped there): training still stops at the next step, keeps
    the best model, exits 143, and no stray traceback is printed."""
    import signal

    from napari_zup import cli
    from napari_zup.training import session as ts

    class DropsSigterm:
        def __del__(self):
            cli._on_sigterm(signal.SIGTERM, None)

    real = ts.TrainingSession.events

    def events(self):
        for ev in real(self):
            yield ev
            if isinstance(ev, ts.Validation):
                DropsSigterm()  # collected at once: the handler runs, its raise is lost

    monkeypatch.setattr(ts.TrainingSession, "events", events)
    data, _ = _stack(tmp_path, 12, 64)
    out = tmp_path / "a.safetensors"
    rc = cli.main(["train", "niiv", "--data", str(data), "--out", str(out), "--factor", "4",
                   "--minutes", "1", "--eval-every", "2", "--batch", "2", "--device", "cpu"])
    text = capsys.readouterr()
    assert rc == 143, text
    assert "Exception ignored" not in text.err, text
    _, meta = load_checkpoint(out, "niiv")
    assert meta["training"]["steps_run"] == 2  # stopped right after the first validation
