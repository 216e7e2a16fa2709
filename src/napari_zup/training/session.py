"""One training loop for every learned method (``zup train METHOD``, the Train widget, Python).

A :class:`Family` (pair interpolators: film, tsain in :mod:`.interp`; axial restorers: niiv,
a2i in :mod:`.axial`) supplies the model builder, the batch sampler, the loss and the
validation batches; :class:`TrainingSession` runs the loop: train, validate every
``eval_every`` steps (PSNR and SSIM on held-out data), keep the best checkpoint at ``out``
(atomic), save a resumable training state next to it, stop on ``stop_event``, Ctrl-C, the time
budget or the step budget. :meth:`TrainingSession.events` is a generator of typed events
(:class:`Step`, :class:`Validation`, :class:`Message`, :class:`Finished`) that the CLI prints
and the widget displays; :func:`train` drains it and returns the :class:`TrainResult`.

Adaptation: starting from a checkpoint (``init``; the CLI's default is the bundled model), the
starting weights are scored on the same held-out data first; the result is kept as better only
if it beats them (PSNR higher, SSIM not lower), otherwise ``out`` holds the starting weights
labelled ``"better": false`` and the last message says so. The bundled files are never written.
"""
from __future__ import annotations

import json
from abc import ABC, abstractmethod
import math
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ..checkpoints import default_checkpoint, load_checkpoint, save_checkpoint


class TrainingError(ValueError):
    """Training cannot start or continue; the message says what was wrong and what to do."""


# -- events --------------------------------------------------------------------------------

@dataclass
class Step:
    step: int
    loss: float
    minutes: float


@dataclass
class Validation:
    step: int
    psnr: float
    ssim: float
    best_psnr: float
    improved: bool
    minutes: float
    preview: np.ndarray | None = None


@dataclass
class Message:
    text: str


@dataclass
class TrainResult:
    method: str
    path: Path
    steps: int
    minutes: float
    stopped: bool
    best_psnr: float
    best_ssim: float
    #: held-out scores of the starting weights (init) or None when trained from scratch
    start_psnr: float | None = None
    start_ssim: float | None = None
    #: False when an adaptation did not beat its starting model (``out`` then holds that one)
    better: bool = True
    history: list = field(default_factory=list)


@dataclass
class Finished:
    result: TrainResult


# -- data ----------------------------------------------------------------------------------

def to_unit(volume, name: str = "the stack") -> np.ndarray:
    """Scale a stack to float32 [0, 1] as the methods do: the engine's one value range
    (dtype range; floats: min-max, NaN/inf refused)."""
    from ..engine import volume_value_range

    v = np.asarray(volume)
    if v.ndim != 3:
        raise TrainingError(f"{name} must be a 3D stack (z, y, x), got shape {v.shape}")
    try:
        lo, hi = volume_value_range(v)
    except ValueError as exc:
        raise TrainingError(f"{name}: {exc}") from None
    return ((v.astype(np.float32) - lo) / ((hi - lo) or 1.0)).astype(np.float32)


@dataclass
class Stack:
    """A training stack in [0, 1] with what the metadata records about it."""

    data: np.ndarray
    name: str = "array"
    voxel_size: tuple | None = None

    @classmethod
    def of(cls, item) -> "Stack":
        if isinstance(item, Stack):
            return item
        if isinstance(item, (str, Path)):
            from ..io import VolumeReadError, read_volume

            try:
                vol = read_volume(item)
                data = np.asarray(vol.data)
            except (VolumeReadError, OSError) as exc:
                raise TrainingError(f"cannot read training data {str(item)!r}: {exc}") from None
            return cls(to_unit(data, Path(item).name), Path(item).name,
                       tuple(vol.voxel_size) if vol.voxel_size else None)
        return cls(to_unit(item), "array")


def _normalise_stacks(stacks: list[Stack], val: Stack | None, init_meta):
    """``(intensity reference, stacks, val)`` with every stack mapped as inference will map
    it (:mod:`napari_zup.intensity`): to the starting checkpoint's reference, or, from
    scratch, to the training stacks' pooled percentiles (so stacks of different contrast
    meet in one range). The reference goes into the trained checkpoint."""
    from ..intensity import (normalise_unit_stack, reference_metadata, reference_of,
                             sample_values)

    ref = reference_of(init_meta)
    if ref is not None:
        meta = dict(init_meta["intensity"])
    else:
        meta = reference_metadata(np.concatenate([sample_values(s.data) for s in stacks]))
        meta["data"] = ", ".join(s.name for s in stacks)
        ref = reference_of({"intensity": meta})

    def norm(s):
        return replace(s, data=normalise_unit_stack(s.data, ref))

    return meta, [norm(s) for s in stacks], (norm(val) if val is not None else None)


# -- the family interface ------------------------------------------------------------------

class Family(ABC):
    """What a family of learned models plugs into the loop (see :mod:`.interp`, :mod:`.axial`)."""

    kind: str = ""
    methods: tuple[str, ...] = ()
    #: options of :class:`TrainConfig` that mean something for this family
    options: frozenset = frozenset()

    @abstractmethod
    def defaults(self, method: str) -> dict:  # lr, batch, crop
        ...

    @abstractmethod
    def build(self, method: str, arch: dict | None):
        """``(model, arch)`` with ``arch`` completed by the defaults."""
        ...

    @abstractmethod
    def split(self, stacks: list[Stack], cfg: "TrainConfig"):
        """``(train_stacks, val_stacks, held_out_description)``."""
        ...

    @abstractmethod
    def sampler(self, stacks: list[Stack], cfg: "TrainConfig"):
        """An object with ``sample(batch) -> tuple of numpy arrays``."""
        ...

    @abstractmethod
    def validation(self, stacks: list[Stack], cfg: "TrainConfig") -> list:
        ...

    @abstractmethod
    def predict(self, model, batch, device):
        """``(prediction, target)`` tensors (B, 1, h, w) for a sampled batch."""
        ...

    @abstractmethod
    def loss(self, method: str, pred, target):
        ...

    def preview(self, model, stack: Stack, cfg: "TrainConfig", device) -> np.ndarray | None:
        return None

    def start_state(self, state: dict, model) -> dict:
        """A starting checkpoint's ``state`` as a state dict of ``model`` (same architecture:
        unchanged)."""
        return state

    def metadata(self, cfg: "TrainConfig", sampler) -> dict:
        return {}


def family_of(method: str) -> Family:
    from .axial import AXIAL
    from .interp import PAIR

    for fam in (PAIR, AXIAL):
        if method in fam.methods:
            return type(fam)()  # a fresh one per session (families keep per-run state)
    raise TrainingError(f"unknown learned method {method!r}; trainable: film, tsain, niiv, a2i")


@dataclass
class TrainConfig:
    method: str
    data: Any                    # stack(s): arrays, paths or Stack
    out: Any = None
    val: Any = None              # separate validation stack (default: held-out sections)
    minutes: float | None = 10.0  # 0/None: no time budget
    steps: int | None = None     # steps to run in this session (resume: more steps)
    eval_every: int = 50
    lr: float | None = None
    batch: int | None = None
    crop: int | None = None
    device: str = "auto"
    init: Any = None             # checkpoint to start from ("bundled" = the shipped one)
    resume: Any = None           # training state to continue (True: OUT.state.pt)
    self_supervised: bool = False
    augment: bool = False
    seed: int = 0
    factors: Any = None
    arch: dict | None = None
    #: factor of the preview image (default: the stack's anisotropy, or the first factor)
    preview_factor: int | None = None
    # axial restorers only
    degradation: str = "decimate"
    rows: int | None = None


def _psnr_ssim(pred, target) -> tuple[float, float]:
    from skimage.metrics import structural_similarity

    p = pred.detach().float().clamp(0, 1).cpu().numpy()
    t = target.detach().float().cpu().numpy()
    mse = ((p - t) ** 2).reshape(len(p), -1).mean(1)
    psnr = float(np.mean(10 * np.log10(1.0 / np.maximum(mse, 1e-10))))
    ssims = []
    for a, b in zip(p[:, 0], t[:, 0]):
        win = min(7, *a.shape)
        win -= 1 - win % 2
        ssims.append(structural_similarity(a, b, data_range=1.0, win_size=max(win, 3)))
    return psnr, float(np.mean(ssims))


def _is_bundled(path: Path) -> bool:
    ref = default_checkpoint("film") or default_checkpoint("niiv")
    return ref is not None and path.resolve().parent == ref.resolve().parent


class TrainingSession:
    """One training run; iterate :meth:`events` (or call :func:`train`)."""

    def __init__(self, cfg: TrainConfig, stop_event: threading.Event | None = None):
        self.cfg = cfg
        self.stop_event = stop_event or threading.Event()
        self.family = family_of(cfg.method)

    def stop(self):
        self.stop_event.set()

    # -- set-up (everything checked before any step) --
    def _setup(self):
        import torch

        from ..devices import select_device

        cfg, fam = self.cfg, self.family
        if cfg.resume and cfg.init is not None:
            raise TrainingError("give --resume (continue a training state) or --init / the "
                                "bundled start (start from a checkpoint's weights), not both")
        if cfg.eval_every is None or cfg.eval_every < 1:
            raise TrainingError(f"--eval-every must be >= 1, got {cfg.eval_every}")
        if cfg.steps is not None and cfg.steps < 0:
            raise TrainingError(f"--steps must be >= 0, got {cfg.steps}")
        if not cfg.minutes and cfg.steps is None:
            raise TrainingError("give a time budget (--minutes) or a step budget (--steps)")
        d = fam.defaults(cfg.method)
        self.lr0 = cfg.lr or (d["lr_init"] if cfg.init is not None else d["lr"])
        self.batch = cfg.batch or d["batch"]
        self.crop = cfg.crop or d["crop"]
        self.out = Path(cfg.out or f"{cfg.method}.safetensors")
        if _is_bundled(self.out):
            raise TrainingError(f"--out {str(self.out)!r} is inside the package's bundled "
                                "checkpoints; write the trained model elsewhere")
        self.state_path = self.out.with_name(self.out.name + ".state.pt")
        self.dev = select_device(cfg.device)
        torch.manual_seed(cfg.seed)
        init_state, self.init_name, self.init_state, self.init_path = None, None, None, None
        arch, init_meta = cfg.arch, None
        if cfg.init is not None:  # checked before any data is read
            path = default_checkpoint(cfg.method) if cfg.init == "bundled" else Path(cfg.init)
            if path is None:
                raise TrainingError(f"no bundled {cfg.method} checkpoint is installed; "
                                    "train with --from-scratch")
            init_state, init_meta = load_checkpoint(path, cfg.method)
            self.init_state, self.init_path = init_state, str(path)
            # the checkpoint's architecture, with what the user asked to change (--knots)
            arch = {**(init_meta.get("arch") or {}), **(cfg.arch or {})}
            self.init_name = "bundled " + path.name if cfg.init == "bundled" else path.name
        state = self._load_state() if cfg.resume else None
        if state is not None:
            arch = json.loads(state["arch"])
        self.model, self.arch = fam.build(cfg.method, arch)
        self.cfg = cfg = replace(cfg, arch=self.arch)  # the samplers read it (e.g. knots)
        if init_state is not None:  # in this architecture (e.g. 2 knots -> 4: zeros added)
            init_state = self.init_state = fam.start_state(init_state, self.model)
        items = cfg.data if isinstance(cfg.data, (list, tuple)) else [cfg.data]
        stacks = [Stack.of(x) for x in items]
        val_stack = Stack.of(cfg.val) if cfg.val is not None else None
        self.intensity, stacks, val_stack = _normalise_stacks(stacks, val_stack, init_meta)
        self.stacks = stacks
        if val_stack is not None:
            train_st, val_st = stacks, [val_stack]
            self.held_out = f"separate validation stack {val_st[0].name}"
        else:
            train_st, val_st, self.held_out = fam.split(stacks, cfg)
        self.sampler = fam.sampler(train_st, cfg)
        self.vset = fam.validation(val_st, cfg)
        if init_state is not None:
            self.model.load_state_dict(init_state)
        self.model.to(self.dev).train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=self.lr0, weight_decay=1e-4)
        self.step, self.prev_s, self.best, self.best_ssim = 0, 0.0, -math.inf, -math.inf
        self.history, self.start_scores = [], None
        if state is not None:
            try:
                self.model.load_state_dict(state["model"])
                self.opt.load_state_dict(state["optim"])
            except (RuntimeError, ValueError, KeyError) as exc:
                raise TrainingError(f"training state {self.state_path.name!r} does not fit this "
                                    f"{cfg.method} model ({str(exc).splitlines()[0]}); start "
                                    "without --resume") from None
            self.step, self.prev_s = int(state["step"]), float(state["elapsed"])
            self.best, self.best_ssim = float(state["best"]), float(state.get("best_ssim", -1))
            self.history = json.loads(state.get("history", "[]"))
            start = json.loads(state.get("start", "null")) or {}
            self.start_scores, self.init_name = start.get("scores"), start.get("init")
            self.init_path = start.get("path")
            if self.init_path and Path(self.init_path).is_file():  # to fall back to it
                self.init_state = fam.start_state(load_checkpoint(self.init_path, cfg.method)[0],
                                                  self.model)
            self.sampler.rng = np.random.default_rng(cfg.seed + self.step)
        self.out.parent.mkdir(parents=True, exist_ok=True)

    def _load_state(self):
        import pickle

        import torch

        cfg = self.cfg
        path = self.state_path if cfg.resume is True else Path(cfg.resume)
        self.state_path = path
        if not path.is_file():
            raise TrainingError(f"--resume: no training state {str(path)!r}; start without "
                                "--resume")
        try:
            st = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise TrainingError(f"training state {path.name!r} was refused: it holds Python "
                                "objects that would run code when loaded, not only tensors and "
                                "numbers; it was not written by zup train. Start without "
                                "--resume") from None
        except Exception as exc:  # truncated zip, wrong format, ...
            raise TrainingError(f"training state {path.name!r} cannot be read "
                                f"({type(exc).__name__}); it is truncated or of another format. "
                                "Start without --resume") from None
        need = {"method", "arch", "model", "optim", "step", "elapsed", "best"}
        if not isinstance(st, dict) or not need <= set(st):
            raise TrainingError(f"training state {path.name!r} is not a zup training state "
                                f"(expected the keys {', '.join(sorted(need))}); start without "
                                "--resume")
        if st["method"] != cfg.method:
            raise TrainingError(f"training state {path.name!r} is for {st['method']!r}, not "
                                f"{cfg.method!r}")
        return st

    # -- pieces of the loop --
    def _validate(self, model=None):
        import torch

        model = model or self.model
        model.eval()
        ps, ss = [], []
        with torch.no_grad():
            for b in self.vset:
                pred, target = self.family.predict(model, b, self.dev)
                p, s = _psnr_ssim(pred, target)
                ps.append(p)
                ss.append(s)
        model.train()
        return float(np.mean(ps)), float(np.mean(ss))

    def _meta(self, psnr, ssim, elapsed_s):
        cfg = self.cfg
        training = {
            "data": [s.name for s in self.stacks], "steps": self.step,
            "minutes": round(elapsed_s / 60, 2), "batch": self.batch, "crop": self.crop,
            "learning_rate": self.lr0, "self_supervised": bool(cfg.self_supervised),
            "augment": bool(cfg.augment), "init": self.init_name, "held_out": self.held_out,
            "device": str(self.dev), "val_psnr": round(psnr, 3), "val_ssim": round(ssim, 4),
            "seed": cfg.seed,
        }
        meta = {"method": cfg.method, "arch": self.arch, "intensity": self.intensity}
        extra = self.family.metadata(cfg, self.sampler)
        training.update(extra.pop("training", {}))
        meta.update(extra)
        meta["training"] = training
        if self.init_name is not None:
            s0 = self.stacks[0]
            meta["adapted_on"] = {
                "file": s0.name, "shape": list(s0.data.shape),
                "voxel_size": list(s0.voxel_size) if s0.voxel_size else None,
                "held_out": self.held_out, "steps": self.step,
                "minutes": round(elapsed_s / 60, 2), "device": str(self.dev),
                "start": self.init_name,
                "held_out_scores": {"start": self.start_scores,
                                    "adapted": {"psnr": round(psnr, 3), "ssim": round(ssim, 4)}},
            }
        return meta

    def _save_state(self, elapsed_s):
        import torch

        tmp = self.state_path.with_name(self.state_path.name + ".partial")
        start = {"init": self.init_name, "scores": self.start_scores,
                 "path": self.init_path}
        torch.save({"method": self.cfg.method, "arch": json.dumps(self.arch),
                    "model": self.model.state_dict(), "optim": self.opt.state_dict(),
                    "step": self.step, "elapsed": elapsed_s, "best": self.best,
                    "best_ssim": self.best_ssim, "history": json.dumps(self.history),
                    "start": json.dumps(start)}, str(tmp))
        tmp.replace(self.state_path)

    def _lr_at(self, frac):
        lr = self.lr0 * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))
        return lr * min(1.0, (self.step + 1) / 50) if self.init_name is None else lr

    # -- the loop --
    def events(self) -> Iterator:
        import torch

        cfg, fam = self.cfg, self.family
        self._setup()
        n_params = sum(p.numel() for p in self.model.parameters())
        yield Message(f"{cfg.method}: {n_params} parameters, device {self.dev}, data "
                      f"{[s.name for s in self.stacks]}, held out: {self.held_out}, batch "
                      f"{self.batch}, crop {self.crop}, start: {self.init_name or 'from scratch'}")
        if cfg.resume:
            yield Message(f"resumed {cfg.method} at step {self.step}, {self.prev_s / 60:.1f} min,"
                          f" best {self.best:.2f} dB")
        use_amp = str(self.dev).startswith("cuda")
        t0 = time.perf_counter()
        budget = (cfg.minutes or 0) * 60.0
        start_step, stopped = self.step, False
        elapsed = lambda: self.prev_s + time.perf_counter() - t0  # noqa: E731
        run_loss, run_n = 0.0, 0
        try:
            while True:
                if self.stop_event.is_set():
                    stopped = True
                    break
                done = self.step - start_step
                if (budget and time.perf_counter() - t0 >= budget) or (
                        cfg.steps is not None and done >= cfg.steps):
                    break
                frac = max((time.perf_counter() - t0) / budget if budget else 0.0,
                           done / cfg.steps if cfg.steps else 0.0)
                for g in self.opt.param_groups:
                    g["lr"] = self._lr_at(frac)
                batch = self.sampler.sample(self.batch)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                    pred, target = fam.predict(self.model, batch, self.dev)
                loss = fam.loss(cfg.method, pred.float(), target)
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
                self.opt.step()
                self.step += 1
                lv = float(loss.item())
                run_loss, run_n = run_loss + lv, run_n + 1
                yield Step(self.step, lv, elapsed() / 60)
                if (self.step - start_step) % cfg.eval_every == 0:
                    yield self._validation_event(elapsed(), run_loss / run_n)
                    run_loss, run_n = 0.0, 0
        except KeyboardInterrupt:
            stopped = True
            yield Message("interrupted: keeping the best model so far")
        if not self.history or self.history[-1]["step"] != self.step:  # not just validated
            yield self._validation_event(elapsed(), run_loss / max(run_n, 1))
        yield from self._finish(elapsed(), stopped)

    def _validation_event(self, elapsed_s, train_loss):
        p, s = self._validate()
        improved = p > self.best
        self.history.append({"step": self.step, "minutes": round(elapsed_s / 60, 2),
                             "train_loss": round(train_loss, 5), "val_psnr": round(p, 3),
                             "val_ssim": round(s, 4)})
        if improved:
            self.best, self.best_ssim = p, s
            save_checkpoint(self.out, self.model.state_dict(), self._meta(p, s, elapsed_s))
        self._save_state(elapsed_s)
        preview = self.family.preview(self.model, self.stacks[0], self.cfg, self.dev)
        return Validation(self.step, p, s, self.best, improved, elapsed_s / 60, preview)

    def _start_scores(self):
        """Held-out PSNR/SSIM of the starting weights (same data as every validation)."""
        if self.start_scores is None and self.init_state is not None:
            model, _ = self.family.build(self.cfg.method, self.arch)
            model.load_state_dict(self.init_state)
            p, s = self._validate(model.to(self.dev))
            self.start_scores = {"psnr": round(p, 3), "ssim": round(s, 4)}
        return self.start_scores

    def _finish(self, elapsed_s, stopped):
        start = self._start_scores()
        state, meta = load_checkpoint(self.out, self.cfg.method)
        better = True
        if start is not None:
            yield Message(f"held-out score of the starting model ({self.init_name}): PSNR "
                          f"{start['psnr']:.2f} dB, SSIM {start['ssim']:.4f}")
            better = self.best > start["psnr"] + 1e-3 and self.best_ssim >= start["ssim"]
            if not better and self.init_state is not None:
                state = self.init_state  # out keeps the starting weights, labelled
            meta["adapted_on"]["held_out_scores"]["start"] = start
        meta.pop("tensors_sha256", None)
        meta["training"]["steps_run"] = self.step
        meta["training"]["minutes_run"] = round(elapsed_s / 60, 2)
        if self.start_scores is not None:
            meta["adapted_on"]["steps"] = self.step
            meta["adapted_on"]["minutes"] = round(elapsed_s / 60, 2)
            meta["adapted_on"]["better"] = better
            if not better:
                meta["training"]["label"] = "not better than the starting model"
        save_checkpoint(self.out, state, meta)
        res = TrainResult(self.cfg.method, self.out, self.step, elapsed_s / 60, stopped,
                          self.best, self.best_ssim,
                          (self.start_scores or {}).get("psnr"),
                          (self.start_scores or {}).get("ssim"), better, self.history)
        if self.start_scores is not None and not better:
            yield Message(f"the adapted model did not beat the starting model "
                          f"({self.init_name}) on the held-out data (PSNR {self.best:.2f} vs "
                          f"{res.start_psnr:.2f} dB, SSIM {self.best_ssim:.4f} vs "
                          f"{res.start_ssim:.4f}): keep using it; {self.out} holds it, labelled "
                          "'not better'")
        else:
            gain = "" if res.start_psnr is None else f" (start {res.start_psnr:.2f} dB)"
            yield Message(f"{self.cfg.method}: {'stopped' if stopped else 'done'} at step "
                          f"{self.step}, best held-out PSNR {self.best:.2f} dB{gain}, SSIM "
                          f"{self.best_ssim:.4f}; checkpoint {self.out}")
        yield Finished(res)


def train(method: str, data, *, log: Callable[[str], None] | None = None,
          callback: Callable[[int, float, np.ndarray | None], None] | None = None,
          stop_event: threading.Event | None = None, **options) -> TrainResult:
    """Train ``method`` on ``data`` (see :class:`TrainConfig` for ``options``) and return the
    :class:`TrainResult`. ``log(text)`` gets the messages; ``callback(step, loss, preview)``
    every 10 steps and at each validation (with the preview image)."""
    session = TrainingSession(TrainConfig(method, data, **options), stop_event)
    log = log or (lambda s: None)
    result, acc, n = None, 0.0, 0
    for ev in session.events():
        if isinstance(ev, Message):
            log(ev.text)
        elif isinstance(ev, Step):
            acc, n = acc + ev.loss, n + 1
            if callback is not None and ev.step % 10 == 0:
                callback(ev.step, acc / n, None)
                acc, n = 0.0, 0
        elif isinstance(ev, Validation):
            log(f"step {ev.step:6d}  {ev.minutes:6.1f} min  val PSNR {ev.psnr:.2f} dB  SSIM "
                f"{ev.ssim:.4f}{'  *best, saved' if ev.improved else ''}")
            if callback is not None and ev.preview is not None:
                callback(ev.step, acc / max(n, 1), ev.preview)
        elif isinstance(ev, Finished):
            result = ev.result
    return result
