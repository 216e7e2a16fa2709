"""``zup train METHOD``: the same flags for every learned method (film, tsain, niiv, a2i).

A flag that does not apply to the method's family is refused with a message. By default the
model starts from the bundled checkpoint and is adapted to ``--data`` (``--from-scratch``
opts out); held-out sections decide whether the result is better than the start.
"""
from __future__ import annotations

import argparse
import sys

from .._cli.common import TERMINATE
from .session import (Finished, Message, Step, TrainConfig, TrainingError, TrainingSession,
                      Validation, family_of)

#: flags that only one family understands -> the TrainConfig field and who uses it
FAMILY_FLAGS = {
    "--val": ("val", "pair"),
    "--degradation": ("degradation", "axial"),
    "--rows": ("rows", "axial"),
}
#: film's architecture options: flag -> its argparse name, which is also its arch key
FILM_ARCH_FLAGS = {"--knots": "knots", "--end-flags": "end_flags", "--dec-blocks": "dec_blocks"}


def _int_list(text) -> list[int] | None:
    """``"2,4,8"`` -> ``[2, 4, 8]``; None when it is not a comma list of integers."""
    try:
        return [int(x) for x in str(text).split(",")]
    except ValueError:
        return None


def build_parser(method: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"zup train {method}",
        description=f"Train or adapt {method}. By default the bundled model is fine-tuned on "
                    "--data and kept only if it beats the bundled one on held-out sections. "
                    "Pair interpolators (film, tsain) with --self-supervised learn "
                    "(A[z-1], A[z+1]) -> A[z] on your anisotropic stack; axial restorers (niiv, "
                    "a2i) learn lateral -> axial from its xy slices. The best checkpoint is "
                    "kept at --out at all times; Ctrl-C keeps it.")
    p.add_argument("--data", action="append", required=True, metavar="STACK",
                   help="training stack (TIFF, OME-Zarr, ...); repeat for several (pair only)")
    p.add_argument("--out", default=f"{method}_adapted.safetensors",
                   help="checkpoint to write (the training state goes to OUT.state.pt)")
    p.add_argument("--minutes", type=float, default=10.0, help="time budget (default 10)")
    p.add_argument("--steps", type=int, default=None, help="step budget (steps to run now)")
    p.add_argument("--eval-every", type=int, default=50,
                   help="steps between validations on the held-out data (default 50)")
    p.add_argument("--lr", type=float, default=None, help="learning rate")
    p.add_argument("--batch", type=int, default=None, help="tuples / patches per step")
    p.add_argument("--crop", type=int, default=None, help="crop / patch width in pixels")
    p.add_argument("--factor", default=None,
                   help="factor(s) as an integer or a comma list: pair tuples' gaps (default "
                        "2,4,8; self-supervised 2); axial: the stack's z/xy anisotropy (default "
                        "from the voxel size)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    p.add_argument("--resume", default=None, metavar="STATE",
                   help="continue a training state (OUT.state.pt of an earlier run)")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--from-scratch", action="store_true",
                       help="start from random weights instead of the bundled model")
    start.add_argument("--init", default=None, metavar="CHECKPOINT",
                       help="start from this checkpoint instead of the bundled model")
    p.add_argument("--self-supervised", action="store_true",
                   help="train on your anisotropic stack alone (no isotropic ground truth)")
    p.add_argument("--augment", action="store_true",
                   help="degradations users' data have: noise, contrast, blur, pixel size, thick "
                        "sections (see napari_zup.training.augment)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val", default=None, help="(film, tsain) a separate validation stack")
    p.add_argument("--degradation", default=None,
                   help="(niiv, a2i) decimate = thin sections (default), pool = thick sections")
    p.add_argument("--rows", type=int, default=None,
                   help="(niiv, a2i) low-resolution rows per patch")
    p.add_argument("--knots", type=int, choices=(2, 4), default=None,
                   help="(film) 4: also see the outer knots z-1 and z+2 (started from a 2-knot "
                        "checkpoint, the new inputs start at zero); default: the checkpoint's")
    p.add_argument("--end-flags", action="store_true", default=None,
                   help="(film, 4 knots) also tell the model which outer knot is missing at "
                        "the volume ends (two new inputs, started at zero)")
    p.add_argument("--dec-blocks", default=None, metavar="N,N,N,N",
                   help="(film) residual blocks per decoder level, full resolution first "
                        "(more capacity; blocks a checkpoint lacks start as the identity)")
    return p


def config_from_args(method: str, argv: list[str]) -> TrainConfig:
    """Parse ``argv`` into a :class:`TrainConfig`; a flag of another family is refused."""
    p = build_parser(method)
    args = p.parse_args(argv)
    fam = family_of(method)
    for flag, (name, kind) in FAMILY_FLAGS.items():
        if getattr(args, name) is not None and fam.kind != kind:
            p.error(f"{flag} does not apply to {method} (a {fam.kind} method); it is for the "
                    f"{kind} methods ({'film, tsain' if kind == 'pair' else 'niiv, a2i'})")
    factors = None
    if args.factor is not None:
        factors = _int_list(args.factor)
        if factors is None:
            p.error(f"--factor must be an integer or a comma list of integers, got "
                    f"{args.factor!r}")
    if args.resume:
        init = None
    elif args.init:
        init = args.init
    else:
        init = None if args.from_scratch else "bundled"
    for flag, name in FILM_ARCH_FLAGS.items():
        if getattr(args, name) is not None and method != "film":
            p.error(f"{flag} applies to film only, not {method}")
    if args.dec_blocks is not None:
        blocks = _int_list(args.dec_blocks) or []
        if len(blocks) != 4 or min(blocks) < 0:
            p.error(f"--dec-blocks needs four counts >= 0 (one per decoder level, full "
                    f"resolution first), e.g. 2,2,2,2; got {args.dec_blocks!r}")
        args.dec_blocks = blocks
    arch = {name: getattr(args, name) for name in FILM_ARCH_FLAGS.values()
            if getattr(args, name) is not None}
    data = args.data if len(args.data) > 1 else args.data[0]
    return TrainConfig(
        method, data, out=args.out, val=args.val, minutes=args.minutes, steps=args.steps,
        eval_every=args.eval_every, lr=args.lr, batch=args.batch, crop=args.crop,
        device=args.device, init=init, resume=args.resume,
        self_supervised=args.self_supervised, augment=args.augment, seed=args.seed,
        factors=factors, degradation=args.degradation or "decimate", rows=args.rows,
        arch=arch or None)


def main(method: str, argv: list[str]) -> int:
    """``zup train METHOD ARGS``; returns the exit status."""
    from ..checkpoints import CheckpointError

    cfg = config_from_args(method, argv)
    # A SIGTERM whose exception Python dropped (see TERMINATE) stops it at the next step.
    session = TrainingSession(cfg, stop_event=TERMINATE)
    last_print, interrupted = 0.0, False
    try:
        for ev in session.events():
            if isinstance(ev, Message):
                interrupted = interrupted or ev.text.startswith("interrupted")
                print(ev.text, flush=True)
            elif isinstance(ev, Step):
                if ev.step == 1 or ev.minutes - last_print >= 0.25:
                    print(f"step {ev.step:6d}  {ev.minutes:6.1f} min  loss {ev.loss:.5f}",
                          flush=True)
                    last_print = ev.minutes
            elif isinstance(ev, Validation):
                print(f"step {ev.step:6d}  {ev.minutes:6.1f} min  held-out PSNR {ev.psnr:.2f} dB"
                      f"  SSIM {ev.ssim:.4f}{'  *best, saved' if ev.improved else ''}",
                      flush=True)
            elif isinstance(ev, Finished):
                r = ev.result
                print(f"wrote {r.path} ({r.steps} steps, {r.minutes:.1f} min"
                      f"{'' if r.better else ', not better than the start'})")
    except (TrainingError, CheckpointError, ValueError, OSError) as exc:
        print(f"zup train {method}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before the first step or during the final save
        print(f"interrupted; the best checkpoint so far (if any) is in {cfg.out}",
              file=sys.stderr)
        return 143 if TERMINATE.is_set() else 130
    if TERMINATE.is_set():  # SIGTERM: stopped as on Ctrl-C, best model kept
        return 143
    return 130 if interrupted else 0


if __name__ == "__main__":  # python -m napari_zup.training.cli METHOD ARGS
    sys.exit(main(sys.argv[1], sys.argv[2:]))
