"""``zup evaluate``: drop-and-restore on an isotropic stack, or ``--self`` on an anisotropic
one (docs/evaluation.md); scores table, ``--json``, ``--maps``."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from .. import __version__
from ..checkpoints import factor_warning
from ..engine import validate_volume
from ..io import check_not_input, check_output_path, write_volume
from ..methods.base import get_info, method_infos
from .common import (TEXTURE_HELP, _add_farneback, _add_voxel_size, _check_method, _fail,
                     _method_params, _read, _refuse_unused, check_terminated, parse_params,
                     resolve_factor)

#: ``zup evaluate``'s default methods: the classical and optical-flow ones (seconds on any
#: stack); ``--methods all`` adds the learned ones with their bundled checkpoints.
DEFAULT_EVAL_METHODS = "linear,cubic,of-linear,of-cubic"


def _eval_methods(text: str) -> list[str]:
    """``--methods``: comma-separated names, or ``all`` = every registered method."""
    if text.strip().lower() == "all":
        return [info.name for info in method_infos()]
    methods = [m.strip() for m in text.split(",") if m.strip()]
    for m in methods:
        try:
            get_info(m)
        except ValueError as exc:
            _fail(str(exc))
    if not methods:
        _fail("--methods: give at least one method (or 'all')")
    return methods


def cmd_evaluate(args) -> int:
    from ..devices import select_device
    from ..evaluation import (SELF_EVAL_LABEL, degrade, evaluate_method, format_table,
                             parse_degradation, self_evaluate)

    vol = _read(args.input, args=args)
    if args.self_eval:
        if args.factor is not None and str(args.factor).strip() != "2":
            _fail("--self always evaluates at factor 2 (it keeps every second section); "
                  "drop --factor")
        factor = 2
    else:
        if args.factor is None:
            _fail("evaluate needs --factor F on an isotropic stack (every F-th slice is kept), "
                  "or --self on an anisotropic one")
        f = resolve_factor(args.factor, vol)
        if f.denominator != 1:
            _fail("evaluate needs an integer factor (it keeps every F-th slice)")
        factor = int(f)
    methods = _eval_methods(args.methods)
    params = parse_params(args)
    _refuse_unused(methods, params)
    for m in methods:
        if not get_info(m).needs_checkpoint:
            _check_method(m, _method_params(m, params))
    learned = [m for m in methods if get_info(m).needs_checkpoint]
    if params.get("checkpoint") and len(learned) > 1:
        _fail(f"--checkpoint applies to one learned method, but {', '.join(learned)} are "
              "selected; evaluate them one at a time with --checkpoint")
    try:
        steps = parse_degradation(args.degrade)
        device = select_device(params.get("device", "auto")) if learned else "cpu"
        if args.self_eval:
            validate_volume(vol.data)
    except ValueError as exc:
        _fail(str(exc))
    if args.maps:
        maps_dir = _maps_dir(args, [f"error_{m}_x{factor}.tif" for m in methods])
    if args.json:
        check_output_path_json(Path(args.json), args.overwrite, args.input)
    g = np.asarray(vol.data)
    degradation = ",".join(f"{k}={v:g}" for k, v in steps) or None
    if degradation:
        g = degrade(g, degradation, args.seed)
    what = SELF_EVAL_LABEL if args.self_eval else f"factor {factor}"
    title = f"{what}: mean over restored slices" + (
        f"; degraded copy: {degradation} (seed {args.seed})" if degradation else "")
    scores = {}
    for m in methods:
        check_terminated()  # a SIGTERM whose exception was dropped stops between methods
        note = factor_warning(m, factor, params.get("checkpoint"))
        if note:
            print(f"zup: warning: {note}", file=sys.stderr)
        print(f"zup: evaluating {m} ({what})", file=sys.stderr)
        try:
            if args.self_eval:
                score, _, maps = self_evaluate(g, m, method_params=_method_params(m, params),
                                               error_maps=bool(args.maps))
            else:
                score, _, maps = evaluate_method(g, factor, m,
                                                 method_params=_method_params(m, params),
                                                 error_maps=bool(args.maps))
        except (ValueError, MemoryError) as exc:
            _fail(str(exc))
        scores[m] = score
        if args.maps:
            write_volume(maps_dir / f"error_{m}_x{factor}.tif", maps,
                         vol.voxel_size, vol.unit, overwrite=True,
                         metadata={"what": "|R - G| in [0, 1] units, 0 on knots"})
    print(format_table(scores, factor, title))
    if args.json:
        payload = {m: s.summary() for m, s in scores.items()}
        payload["_protocol"] = {
            "protocol": "self-evaluation" if args.self_eval else "drop-and-restore",
            "label": SELF_EVAL_LABEL if args.self_eval else f"factor {factor}",
            "factor": factor, "degradation": degradation,
            "seed": args.seed if degradation else None, "input": str(args.input),
            "device": device, "napari_zup": __version__}
        _write_text(Path(args.json), json.dumps(payload, indent=2))
        print(f"zup: wrote {args.json}", file=sys.stderr)
    return 0


def check_output_path_json(p: Path, overwrite: bool, source=None) -> None:
    try:
        check_not_input(p, source)
    except ValueError as exc:
        _fail(str(exc))
    if p.is_dir():
        _fail(f"{str(p)!r} is a folder; give a file name for the JSON scores")
    if p.exists() and not overwrite:
        _fail(f"{str(p)!r} already exists; use --overwrite to replace it")
    if not p.parent.exists():
        _fail(f"folder {str(p.parent)!r} does not exist; create it first")


def _maps_dir(args, names: list[str]) -> Path:
    """``--maps DIR``: checked (not a file, not the input, no map replaced without
    --overwrite) before any work, then created."""
    d = Path(args.maps)
    if d.exists() and not d.is_dir():
        _fail(f"--maps {str(d)!r} is an existing file; --maps takes a folder (it is created "
              "when missing)")
    try:
        check_not_input(d, args.input)
        for name in names:
            check_output_path(d / name, args.overwrite, inputs=(args.input,)) \
                if d.is_dir() else None
    except (ValueError, OSError) as exc:
        _fail(f"--maps: {exc}")
    d.mkdir(parents=True, exist_ok=True)
    return d


def _write_text(p: Path, text: str) -> None:
    """Write under a temporary name and rename: an interrupted write leaves no half file."""
    from ..io import atomic_output

    with atomic_output(p) as tmp:
        tmp.write_text(text)


def add_evaluate_parser(sub) -> None:
    """The ``evaluate`` sub-command's options."""
    e = sub.add_parser("evaluate", help="score methods on your data: drop-and-restore on an "
                       "isotropic stack, or --self on an anisotropic one (protocol: "
                       "docs/evaluation.md)")
    e.add_argument("input", help="an isotropic stack (ground truth), or with --self an "
                   "anisotropic stack of real sections")
    e.add_argument("--factor", "-f", default=None, help="integer factor: every F-th slice "
                   "is kept (required without --self; --self always uses 2)")
    e.add_argument("--self", dest="self_eval", action="store_true", help="self-evaluation on "
                   "a real anisotropic stack: keep every second section, restore the others "
                   "and score them against the real ones. Scores are at twice the real "
                   "spacing (2 x s): they rank the methods on your data, they are not the "
                   "quality at the real spacing. Needs >= 5 sections")
    e.add_argument("--methods", default=DEFAULT_EVAL_METHODS,
                   help="comma-separated methods, or 'all' = every method of `zup methods` "
                   "(learned ones with their bundled checkpoints; minutes on a CPU). "
                   f"Default: {DEFAULT_EVAL_METHODS}")
    e.add_argument("--degrade", metavar="SPEC", help="robustness: score on a degraded copy "
                   "made before decimation, e.g. noise=8 (Gaussian sigma, grey levels), "
                   "gamma=0.7,contrast=0.6, brightness=-20, poisson=200 (counts at full "
                   "scale), thick=4 (each slice the mean of 4 z-neighbours)")
    e.add_argument("--seed", type=int, default=0, help="random seed of --degrade (default 0)")
    e.add_argument("--json", help="write scores as JSON here")
    e.add_argument("--maps", help="write per-method error maps |R-G| (TIFF) into this folder")
    e.add_argument("--checkpoint", help="checkpoint for a learned method (one at a time)")
    e.add_argument("--device", default="auto")
    e.add_argument("--param", action="append", metavar="KEY=VALUE")
    e.add_argument("--texture", type=float, default=None, metavar="RATIO",
                   help=TEXTURE_HELP)
    e.add_argument("--overwrite", action="store_true")
    _add_farneback(e)
    _add_voxel_size(e)
