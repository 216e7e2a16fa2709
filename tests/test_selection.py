"""`--method auto` (napari_zup.selection): self-evaluation on a bounded sample of real data,
the ranking rule (a learned method must beat the best classical/optical-flow one in PSNR and
SSIM), skipped candidates, the budget, and `zup reconstruct --method auto` end to end."""
import math
import subprocess
import sys
import threading

import numpy as np
import pytest

from napari_zup import selection
from napari_zup._sample_data import sample_path
from napari_zup.engine import ReconstructionCancelled
from napari_zup.evaluation import MethodScore, SELF_EVAL_LABEL
from napari_zup.io import read_volume, write_volume
from napari_zup.methods import base
from napari_zup.methods.base import MethodInfo, RenderResult, register
from napari_zup.methods.classical import Linear
from napari_zup.selection import choose_method, rank

from ._data import ISBI, need


@pytest.fixture(scope="module")
def aniso():
    """A real anisotropic FIB-SEM stack: every 4th slice of the bundled crop, 13 x 128^2."""
    crop = np.asarray(read_volume(sample_path()).data)
    return np.ascontiguousarray(crop[::4][:13, 20:148, 30:158])


class _Bad(Linear):
    """A 'learned' method that renders the inverted linear interpolation: scores badly."""

    info = MethodInfo("fake-bad-learned", "pair", "test: inverted linear", needs_checkpoint=True)

    def render(self, block, positions, *, value_range, want_flows=False):
        out = super().render(block, positions, value_range=value_range).slices
        lo, hi = value_range
        return RenderResult((hi + lo - out.astype(np.float64)).astype(block.dtype))


class _Good(Linear):
    """A 'learned' method that renders linear interpolation (beats nearest on real data)."""

    info = MethodInfo("fake-good-learned", "pair", "test: linear", needs_checkpoint=True)


@pytest.fixture
def fakes(monkeypatch):
    # the fakes need no torch: its import is not part of their predicted cost
    monkeypatch.setattr(selection, "TORCH_IMPORT_S", 0.0)
    for cls in (_Bad, _Good):
        register(cls.info, cls)
    yield
    for cls in (_Bad, _Good):
        base._REGISTRY.pop(cls.info.name, None)


def _score(psnr, ssim):
    return MethodScore(psnr=psnr, ssim=ssim, fpsnr=psnr, ie=1.0, seconds_per_slice=0.1,
                       n_slices=4, texture=0.5)


def test_auto_never_picks_a_learned_method_scoring_below_the_best_classical(aniso, fakes):
    c = choose_method(aniso, 4, candidates=["linear", "cubic", "of-linear", "fake-bad-learned"])
    assert c.method in ("linear", "cubic", "of-linear")
    bad, best = c.scores["fake-bad-learned"], c.scores[c.method]
    assert bad.psnr < best.psnr and bad.ssim < best.ssim
    assert best.psnr >= max(c.scores[m].psnr for m in ("linear", "cubic", "of-linear")) - 0.1
    assert "no learned method scored above it" in c.reason
    assert "twice the real spacing" in c.reason and SELF_EVAL_LABEL in c.table


def test_auto_picks_a_learned_method_that_beats_the_classical_one_in_both(aniso, fakes):
    c = choose_method(aniso, 4, candidates=["nearest", "fake-good-learned"])
    near, good = c.scores["nearest"], c.scores["fake-good-learned"]
    assert good.psnr > near.psnr and good.ssim > near.ssim
    assert c.method == "fake-good-learned" and "in both PSNR and SSIM" in c.reason


def test_rank_needs_both_psnr_and_ssim_for_a_learned_method(fakes):
    # higher PSNR, lower SSIM (a learned method that blurs noisy sections): not chosen
    m, why = rank({"of-cubic": _score(20.0, 0.50), "fake-good-learned": _score(20.6, 0.49)})
    assert m == "of-cubic" and "higher in PSNR but not SSIM" in why and "both" in why
    m, why = rank({"of-cubic": _score(20.0, 0.50), "fake-good-learned": _score(20.6, 0.51)})
    assert m == "fake-good-learned"
    # classical ties (PSNR within 0.1 dB) go to the higher SSIM
    m, _ = rank({"linear": _score(20.05, 0.50), "cubic": _score(20.0, 0.52)})
    assert m == "cubic"
    # only learned candidates: the best of them
    m, _ = rank({"fake-bad-learned": _score(10.0, 0.1), "fake-good-learned": _score(12.0, 0.2)})
    assert m == "fake-good-learned"


def test_learned_methods_come_from_method_infos():
    learned = {i.name for i in base.method_infos() if i.needs_checkpoint}
    assert learned == {m for m in base.method_names() if selection.is_learned(m)}
    assert not selection.is_learned("of-cubic")


def test_candidates_outside_their_checkpoint_range_are_skipped_with_a_reason(aniso):
    c = choose_method(aniso, 12, candidates=["linear", "film"])   # film: trained for x1-x8
    assert c.method == "linear" and set(c.scores) == {"linear"}
    assert "factor range" in c.skipped["film"] and "film" in c.table


def test_auto_refuses_short_stacks(aniso):
    with pytest.raises(ValueError, match="at least 5 sections"):
        choose_method(aniso[:4], 4, candidates=["linear"])


def test_sample_is_bounded_middle_sections_and_crops(monkeypatch):
    a = np.asarray(read_volume(need(ISBI)).data)                 # 30 x 512 x 512, real ssTEM
    seen = []
    monkeypatch.setattr(selection, "BUDGET", 1e9)                # budget never binding
    c = choose_method(a, 4, candidates=["linear"], on_progress=lambda ev: seen.append((ev.done, ev.total)))
    assert "sections 10-18 of 30" in c.sample and "4 crop(s) of 256 x 256" in c.sample
    assert c.scores["linear"].n_slices == 4 * 4                 # 4 restored per crop
    assert seen[-1][0] == seen[-1][1] == 4
    monkeypatch.setattr(selection, "BUDGET", 1e-9)               # budget binding at once
    monkeypatch.setattr(selection, "MIN_BUDGET_S", 0.0)
    c = choose_method(a, 4, candidates=["linear"])
    assert "1 crop(s)" in c.sample and c.scores["linear"].n_slices == 4
    corners, size = selection.sample_crops(512, 512)
    assert size == (256, 256) and corners[0] == (128, 128) and len(set(corners)) == 4


def test_learned_candidates_beyond_the_time_budget_are_skipped_not_chosen(aniso, fakes,
                                                                          monkeypatch):
    monkeypatch.setattr(selection, "BUDGET", 0.0)
    monkeypatch.setattr(selection, "MIN_BUDGET_S", 0.0)
    c = choose_method(aniso, 4, candidates=["fake-good-learned", "nearest", "cubic"])
    assert list(c.scores) == ["nearest", "cubic"]      # classical first, always scored
    assert "time budget" in c.skipped["fake-good-learned"] and c.method in ("nearest", "cubic")
    monkeypatch.setattr(selection, "MIN_BUDGET_S", 1e9)
    c = choose_method(aniso, 4, candidates=["fake-good-learned", "nearest"])
    assert c.method == "fake-good-learned" and not c.skipped


class _Costly(Linear):
    """A 'learned' method whose measured sample cost is far beyond any budget; counts renders."""

    info = MethodInfo("fake-costly-learned", "pair", "test: costly", needs_checkpoint=True,
                      sample_cost=1e6)
    renders = 0

    def render(self, block, positions, *, value_range, want_flows=False):
        type(self).renders += 1
        return super().render(block, positions, value_range=value_range)


def test_a_candidate_predicted_over_the_budget_is_never_started(aniso, fakes):
    """The budget is enforced before a candidate runs (from MethodInfo.sample_cost), so the
    choice stays within it; a larger budget lets the same candidate be scored."""
    register(_Costly.info, _Costly)
    try:
        _Costly.renders = 0
        c = choose_method(aniso, 4, candidates=["linear", "fake-costly-learned"])
        assert _Costly.renders == 0 and list(c.scores) == ["linear"]
        assert "would take about" in c.skipped["fake-costly-learned"]
        assert "--auto-budget" in c.skipped["fake-costly-learned"]
        c = choose_method(aniso, 4, candidates=["linear", "fake-costly-learned"],
                          budget=math.inf)
        assert _Costly.renders > 0 and set(c.scores) == {"linear", "fake-costly-learned"}
        with pytest.raises(ValueError, match="budget"):
            choose_method(aniso, 4, candidates=["linear"], budget=-1)
    finally:
        base._REGISTRY.pop(_Costly.info.name, None)


def test_predicted_cost_scales_with_the_sample_and_adds_the_torch_import(monkeypatch):
    import sys

    a = selection.predicted_cost("film", (256, 256), 4, 1.0)
    b = selection.predicted_cost("film", (256, 256), 8, 2.0)
    monkeypatch.setitem(sys.modules, "torch", sys.modules.get("torch") or object())
    warm = selection.predicted_cost("film", (256, 256), 4, 1.0)
    assert warm == pytest.approx(base.get_info("film").sample_cost * 0.065536 * 4)
    assert a >= warm and b == pytest.approx(2 * (2 * warm + (a - warm)))
    assert selection.predicted_cost("linear", (256, 256), 4, 1.0) == 0.0


def test_cancel_stops_the_choice(aniso):
    ev = threading.Event()
    ev.set()
    with pytest.raises(ReconstructionCancelled):
        choose_method(aniso, 4, candidates=["linear", "cubic"], cancel=ev)


def test_cli_reconstruct_method_auto_end_to_end(tmp_path, aniso):
    src, out = tmp_path / "a.tif", tmp_path / "iso.tif"
    write_volume(src, aniso[:, :96, :96], (40.0, 10.0, 10.0), "nm")
    proc = subprocess.run([sys.executable, "-m", "napari_zup.cli", "reconstruct", src, out,
                           "--method", "auto"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    chosen = proc.stdout.split("auto chose ", 1)[1].split(":", 1)[0]
    assert chosen in base.method_names()
    assert "twice the real spacing" in proc.stdout and "PSNR" in proc.stdout
    for name in base.method_names():                            # every method in the table
        assert f"\n{name} " in proc.stdout
    v = read_volume(out)
    assert v.data.shape == (49, 96, 96)                          # (13 - 1) * 4 + 1
    np.testing.assert_array_equal(np.asarray(v.data)[::4], aniso[:, :96, :96])
    assert f"{chosen} x4" in proc.stderr


def test_cli_auto_refuses_a_bad_command_before_self_evaluating(tmp_path, aniso, monkeypatch,
                                                               capsys):
    from napari_zup import cli

    src = tmp_path / "a.tif"
    write_volume(src, aniso[:, :64, :64], (40.0, 10.0, 10.0), "nm")
    ran = []
    monkeypatch.setattr(selection, "choose_method", lambda *a, **k: ran.append(1))
    assert cli.main(["reconstruct", str(src), str(src), "--method", "auto",
                     "--overwrite"]) == 2
    assert "input" in capsys.readouterr().err
    assert cli.main(["reconstruct", str(src), str(tmp_path / "o.tif"), "--method", "auto",
                     "--montage", str(tmp_path / "missing" / "m.png")]) == 2
    assert "missing" in capsys.readouterr().err
    assert ran == [] and src.exists()
