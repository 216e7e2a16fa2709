"""``zup``: the command-line twin of the napari widgets.

    zup methods
    zup reconstruct IN OUT --method of-linear --factor 4
    zup evaluate IN --factor 4 --methods linear,cubic,of-linear,of-cubic --json scores.json
    zup flow IN OUT
    zup train film|tsain|niiv|a2i ...
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

from . import __version__, grid
from .checkpoints import factor_warning
from .engine import Progress, iter_reconstruct, make_plan, validate_volume
from .io import (UNKNOWN_UNIT, Volume, VolumeReadError, check_not_input, check_output_path,
                 is_pixel_unit, output_dtype, output_voxel_size, read_volume, unit_factor,
                 write_volume)
from .methods.base import create_method, get_info, method_infos

#: `zup train METHOD ...` is handed to "module:function"(method, argv) of the learned methods.
TRAINERS = {m: "napari_zup.training.cli:main" for m in ("film", "tsain", "niiv", "a2i")}


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


def _fail(msg: str) -> None:
    raise CLIError(msg)


# -- helpers ----------------------------------------------------------------------------------

def resolve_factor(text: str, volume: Volume, method: str | None = None) -> grid.Fraction:
    """``--factor``: a number, or ``auto`` = z step / xy pixel size from the voxel size
    (:func:`napari_zup.grid.auto_factor`: exact for methods with fractional factors, rounded
    for the others); ``auto`` prints what it chose and the resulting voxel size."""
    if str(text).strip().lower() == "auto":
        fractional = get_info(method).fractional if method else True
        try:
            f = grid.auto_factor(volume.voxel_size, fractional)
        except ValueError as exc:
            name = Path(volume.path).name if volume.path else "the input"
            _fail(f"--factor auto: {name!r}: {exc}" + (
                " (or give --voxel-size Z Y X)" if not volume.voxel_size else ""))
        z, y, x = volume.voxel_size
        ratio = z / x
        how = "" if float(f) == ratio else (f" (z/xy = {ratio:.4g}, rounded: {method} takes "
                                            "integer factors only)")
        print(f"zup: --factor auto: {float(f):g}{how}; voxel size {z:g} x {y:g} x {x:g} -> "
              f"{z / float(f):.4g} x {y:g} x {x:g} {volume.unit} (z, y, x)", file=sys.stderr)
        return f
    try:
        return grid.parse_factor(text)
    except ValueError as exc:
        _fail(f"--factor: {exc}")


def parse_params(args) -> dict:
    params: dict = {}
    for item in args.param or []:
        key, sep, value = item.partition("=")
        if not sep:
            _fail(f"--param expects key=value, got {item!r}")
        try:
            params[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            params[key.strip()] = value
    for name in ("winsize", "levels", "iterations", "poly_n", "poly_sigma", "pyr_scale"):
        value = getattr(args, name, None)
        if value is not None:
            params[name] = value
    if getattr(args, "checkpoint", None):
        params["checkpoint"] = args.checkpoint
    if getattr(args, "device", None) and args.device != "auto":
        params["device"] = args.device
    return params


FARNEBACK_KEYS = ("winsize", "levels", "iterations", "poly_n", "poly_sigma", "pyr_scale",
                  "flags")


def _method_params(method: str, params: dict) -> dict:
    """Keep only the parameters that apply to ``method`` (Farnebäck ones go to of-*)."""
    info = get_info(method)
    out = {}
    for k, v in params.items():
        if k in FARNEBACK_KEYS and not info.name.startswith("of-"):
            continue
        if k in ("checkpoint", "device") and not info.needs_checkpoint:
            continue
        out[k] = v
    return out


def _refuse_unused(methods: list[str], params: dict) -> None:
    """Options that none of ``methods`` takes are refused, not silently dropped."""
    infos = [get_info(m) for m in methods]
    names = ", ".join(methods)
    if params.get("checkpoint") and not any(i.needs_checkpoint for i in infos):
        _fail(f"--checkpoint: {names} {'takes' if len(infos) == 1 else 'take'} no checkpoint "
              f"(learned methods do: "
              f"{', '.join(i.name for i in method_infos() if i.needs_checkpoint)})")
    if params.get("device") and not any(i.needs_checkpoint for i in infos):
        _fail(f"--device: {names} {'runs' if len(infos) == 1 else 'run'} on the CPU only; "
              "--device applies to learned methods")
    used = [k for k in params if k in FARNEBACK_KEYS]
    if used and not any(i.name.startswith("of-") for i in infos):
        _fail(f"Farnebäck parameter {used[0]!r} applies to of-linear and of-cubic, not "
              f"{names}")


def _check_method(method: str, params: dict) -> None:
    """Validate ``params`` against the method's own declaration by building it (before any
    work: a bad value fails here, not after the input was read and the run planned)."""
    try:
        create_method(method, **params).close()
    except (ValueError, TypeError) as exc:
        _fail(f"method {method!r}: {exc}")


def _given_voxel_size(args):
    """``--voxel-size Z Y X`` and ``--unit`` -> (voxel in nm (or pixels), unit), or None."""
    import math

    given = getattr(args, "voxel_size", None)
    unit = getattr(args, "unit", None)
    if not given:
        if unit:
            _fail("--unit goes with --voxel-size Z Y X")
        return None
    if len(given) != 3 or not all(math.isfinite(v) and v > 0 for v in given):
        _fail(f"--voxel-size: three positive numbers Z Y X, got {' '.join(map(str, given))}")
    try:
        to_nm = unit_factor(unit or "nm")
    except VolumeReadError:
        _fail(f"--unit {unit!r}: not a length unit; use nm, um, mm, angstrom (or pixel)")
    if is_pixel_unit(unit):
        return tuple(float(v) for v in given), UNKNOWN_UNIT
    return tuple(float(v) * to_nm for v in given), "nm"


def _read(path: str, level: int = 0, args=None) -> Volume:
    """Read the input; ``--voxel-size Z Y X`` / ``--unit`` in ``args`` replace what the file
    records (or supply what it does not)."""
    given = _given_voxel_size(args)
    if level and not (Path(path).is_dir() or Path(path).suffix.lower() == ".zarr"):
        _fail(f"--input-level {level}: {Path(path).name!r} is not an OME-Zarr store with "
              "levels; leave it out")
    try:
        vol = read_volume(path, level=level)
    except VolumeReadError as exc:
        _fail(str(exc))
    if given:
        voxel, unit = given
        if vol.voxel_size and not np.allclose(vol.voxel_size, voxel):
            print(f"zup: note: --voxel-size {' x '.join(f'{v:g}' for v in voxel)} {unit} "
                  f"replaces the file's {' x '.join(f'{v:g}' for v in vol.voxel_size)} "
                  f"{vol.unit}", file=sys.stderr)
        vol = Volume(vol.data, voxel, unit, vol.metadata, vol.path)
    return vol


def _add_voxel_size(p) -> None:
    p.add_argument("--voxel-size", dest="voxel_size", type=float, nargs=3,
                   metavar=("Z", "Y", "X"), help="input voxel size, for files that record none "
                   "(replaces the file's own when given)")
    p.add_argument("--unit", default=None, help="unit of --voxel-size (default nm)")


class _StderrProgress:
    def __init__(self, total: int, label: str, every: float = 2.0, unit: str = "slices",
                 done: int = 0):
        self.progress = Progress(total, unit, done)
        self.label = label
        self.every = every
        self.last = 0.0

    def update(self, n: int = 1) -> None:
        self.progress.update(n)
        now = time.perf_counter()
        if now - self.last >= self.every or self.progress.done == self.progress.total:
            self.last = now
            print(f"{self.label}: {self.progress}", file=sys.stderr, flush=True)


def _add_farneback(p):
    g = p.add_argument_group("Farnebäck flow (of-linear, of-cubic, flow)")
    g.add_argument("--winsize", type=int, help="averaging window (default 129)")
    g.add_argument("--levels", type=int, help="pyramid levels (default 3)")
    g.add_argument("--iterations", type=int, help="iterations per level (default 3)")
    g.add_argument("--poly-n", dest="poly_n", type=int, help="polynomial neighbourhood 5 or 7 "
                   "(default 7)")
    g.add_argument("--poly-sigma", dest="poly_sigma", type=float, help="default 1.5")
    g.add_argument("--pyr-scale", dest="pyr_scale", type=float, help="default 0.5")


# -- commands ---------------------------------------------------------------------------------

def cmd_methods(args) -> int:
    from .devices import available_devices, likely_devices

    rows = [("name", "kind", "factors", "checkpoint", "devices", "description")]
    # torch takes seconds to import: guess its devices unless asked to probe them.
    here = set(available_devices() if args.probe else likely_devices())
    for info in method_infos():
        factors = "any > 1" if info.fractional else "integer >= 2"
        devices = ", ".join(d for d in info.devices if d in here) or "cpu"
        rows.append((info.name, "interpolates between slices" if info.kind == "pair"
                     else "restores axial planes", factors,
                     "yes" if info.needs_checkpoint else "no", devices, info.description))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:5], widths)) + "  " + r[5])
    return 0


def _choose_auto(args) -> str:
    """``--method auto``: self-evaluate every method on a bounded sample of the input
    (:func:`napari_zup.selection.choose_method`), print the table and the choice with its
    reason, and return the chosen method's name."""
    from .selection import choose_method

    raw = parse_params(args)
    if raw.get("checkpoint"):
        _fail("--method auto scores the bundled checkpoints; to use your own, name the "
              "method: --method NAME --checkpoint FILE")
    try:  # refuse what is wrong with the command before the (slower) choice, not after it
        check_not_input(Path(args.output), args.input)
        if not (getattr(args, "workers", None) or getattr(args, "scheduler", None)):
            check_output_path(Path(args.output), args.overwrite)
        if args.montage:
            from .montage import check_montage_path

            check_montage_path(args.montage, args.overwrite)
    except (ValueError, OSError) as exc:
        _fail(str(exc))
    vol = _read(args.input, args.input_level, args)
    try:
        validate_volume(vol.data)
    except ValueError as exc:
        _fail(str(exc))
    factor = resolve_factor(args.factor, vol)
    names = [i.name for i in method_infos()]
    print(f"zup: --method auto: self-evaluating {len(names)} methods on a sample of the stack "
          "(docs/evaluation.md)", file=sys.stderr)

    def on_progress(done, total, text):
        print(f"zup: {text} ({done}/{total})", file=sys.stderr, flush=True)

    try:
        choice = choose_method(vol.data, factor, method_params={
            m: _method_params(m, raw) for m in names}, on_progress=on_progress,
            budget=args.auto_budget)
    except ValueError as exc:
        _fail(str(exc))
    print(choice.table)
    print(f"auto chose {choice.method}: {choice.reason}", flush=True)
    return choice.method


def cmd_reconstruct(args) -> int:
    if args.auto_budget is not None and args.method != "auto":
        _fail("--auto-budget applies to --method auto only")
    if args.auto_budget is not None and not args.auto_budget > 0:
        _fail(f"--auto-budget must be a fraction > 0 (e.g. 0.2 or 1), got {args.auto_budget}")
    if args.method == "auto":  # choose by self-evaluation on a sample, then run the winner
        args.method = _choose_auto(args)
    # Everything that can be checked without reading the data is checked first.
    try:
        info = get_info(args.method)
    except ValueError as exc:
        _fail(str(exc))
    out = Path(args.output)
    distributed = bool(args.workers or args.scheduler)
    if distributed:
        if out.suffix.lower() != ".zarr":
            _fail("--workers/--scheduler write OME-Zarr: give an output name ending in .zarr")
        try:
            import distributed as _  # noqa: F401
        except ImportError:
            _fail("--workers/--scheduler need the 'distributed' extra: "
                  "pip install 'napari-zup[distributed]'")
    else:
        unused = [o for o, v in (("--chunks", args.chunks), ("--pyramid-levels",
                                 args.pyramid_levels), ("--no-resume", args.no_resume)) if v]
        if unused:
            _fail(f"{unused[0]} applies to cluster runs only (--workers N or --scheduler)")
    raw = parse_params(args)
    _refuse_unused([args.method], raw)
    params = _method_params(args.method, raw)
    if args.montage:
        from .montage import check_montage_path

        try:
            check_montage_path(args.montage, args.overwrite)
        except (ValueError, OSError) as exc:
            _fail(str(exc))
    try:
        check_not_input(out, args.input)
        if not distributed:  # the cluster runner resumes, or refuses, an existing store itself
            check_output_path(out, args.overwrite)
    except (ValueError, OSError) as exc:
        _fail(str(exc))
    if not info.needs_checkpoint:  # cheap to build; a learned model is built once, below
        _check_method(args.method, params)
    vol = _read(args.input, args.input_level, args)
    try:
        validate_volume(vol.data, info.min_slices, args.method)
        dtype, dtype_note = output_dtype(out, vol.data.dtype)
    except ValueError as exc:
        _fail(str(exc))
    factor = resolve_factor(args.factor, vol, args.method)
    if dtype_note:
        print(f"zup: note: {dtype_note}", file=sys.stderr)
    voxel, unit = output_voxel_size(vol.voxel_size, vol.unit, factor)
    meta = {"method": args.method, "factor": str(factor), "params": params,
            "source": str(Path(args.input).name), "napari_zup": __version__}
    note = factor_warning(args.method, factor, params.get("checkpoint"))
    if note:
        print(f"zup: warning: {note}", file=sys.stderr)
    if distributed:
        return _reconstruct_distributed(args, vol, factor, params, voxel, meta)
    try:
        method = create_method(args.method, **params)
    except ValueError as exc:
        _fail(str(exc))
    try:
        plan = make_plan(vol.data, args.method, factor, args.tile_size, method)
        nbytes = plan.out_nbytes
        print(f"zup: {args.method} x{float(factor):g}: {plan.in_shape} -> {plan.out_shape} "
              f"{dtype}, {nbytes / 1e6:.0f} MB -> {out}", file=sys.stderr)
        check_output_path(out, args.overwrite, nbytes, inputs=(args.input,))
        progress = _StderrProgress(plan.out_shape[0], "reconstruct")

        def items():
            for z, sl in iter_reconstruct(vol.data, method, factor, tile_size=args.tile_size,
                                          workers=args.threads, value_range=plan.value_range):
                progress.update()
                yield z, sl

        write_volume(out, items(), voxel, unit, shape=plan.out_shape, dtype=plan.dtype,
                     overwrite=args.overwrite, metadata=meta, inputs=(args.input,))
    except (ValueError, OSError, MemoryError) as exc:
        _fail(str(exc))
    finally:
        method.close()
    print(f"zup: wrote {out} in {progress.progress.elapsed:.1f} s", file=sys.stderr)
    if args.montage:
        from .montage import save_montage

        save_montage(args.montage, vol.data, read_volume(out).data, factor,
                     title=f"{Path(args.input).name}: {args.method} x{float(factor):g}")
        print(f"zup: montage {args.montage}", file=sys.stderr)
    return 0


def _reconstruct_distributed(args, vol, factor, params, voxel, meta) -> int:
    try:
        from .distributed import reconstruct_to_zarr
    except ImportError as exc:
        _fail(f"distributed runs need the 'distributed' extra ({exc})")
    progress = None
    stats: dict = {}

    def on_progress(done, total):
        nonlocal progress
        if progress is None:  # the first report: chunks found finished by a resumed run
            progress = _StderrProgress(total, "reconstruct", unit="chunks", done=done)
            if 0 < done < total:
                print(f"zup: resuming {args.output}: {done} of {total} chunks already "
                      "written", file=sys.stderr)
        progress.update(done - progress.progress.done)

    try:
        reconstruct_to_zarr(args.input, args.output, args.method, factor, method_params=params,
                            workers=args.workers, scheduler=args.scheduler,
                            overwrite=args.overwrite, resume=not args.no_resume,
                            levels=args.pyramid_levels, input_level=args.input_level,
                            chunks=args.chunks,
                            voxel_size=vol.voxel_size, unit=vol.unit, progress=on_progress,
                            stats=stats)
    except KeyboardInterrupt as exc:
        done = f"{progress.progress.done} of {progress.progress.total} chunks" if progress \
            else "before any chunk"
        how = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        print(f"zup: {how} after {done}; {args.output} is marked incomplete and keeps "
              "them: rerun the same command to resume", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    except (ValueError, OSError, ConnectionError, TimeoutError, RuntimeError) as exc:
        _fail(str(exc))
    if stats.get("already_complete"):
        print(f"zup: {args.output} is already complete with these settings; nothing to do "
              "(--overwrite recomputes it)", file=sys.stderr)
    else:
        print(f"zup: wrote {args.output} ({stats.get('total_chunks', 0)} chunks, "
              f"{stats.get('skipped', 0)} of them from an earlier run, "
              f"{stats.get('seconds', 0.0):.1f} s)", file=sys.stderr)
    return 0


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
    from .devices import select_device
    from .evaluation import (SELF_EVAL_LABEL, degrade, evaluate_method, format_table,
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
    from .io import _partial_name, remove_stale_partials

    remove_stale_partials(p)
    tmp = _partial_name(p)
    try:
        tmp.write_text(text)
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)


def cmd_flow(args) -> int:
    from .flow import FarnebackParams, estimate_flow, flow_to_rgb

    from .engine import volume_value_range

    out = Path(args.output)
    if args.max_magnitude is not None and not args.rgb:
        _fail("--max-magnitude sets the colour scale of --rgb; add --rgb or leave it out")
    given = parse_params(args)
    unknown = sorted(set(given) - set(FarnebackParams.__dataclass_fields__))
    if unknown:
        _fail(f"flow: unknown parameter {unknown[0]!r}; Farnebäck parameters are "
              f"{', '.join(FarnebackParams.__dataclass_fields__)}")
    try:
        params = FarnebackParams(**given)
        check_not_input(out, args.input)
        check_output_path(out, args.overwrite)
    except (ValueError, OSError) as exc:
        _fail(str(exc))
    vol = _read(args.input)
    try:
        validate_volume(vol.data)
        vr = volume_value_range(vol.data)  # refuses NaN/inf voxels, naming how many
    except ValueError as exc:
        _fail(str(exc))
    data = vol.data
    n, h, w = (int(s) for s in data.shape)
    progress = _StderrProgress(n - 1, "flow")

    def pairs():
        prev = np.asarray(data[0])
        for z in range(n - 1):
            nxt = np.asarray(data[z + 1])
            fl = estimate_flow(prev, nxt, params, vr)
            progress.update()
            yield z, fl
            prev = nxt

    if args.rgb:
        def items():
            for z, fl in pairs():
                yield z, flow_to_rgb(fl, args.max_magnitude)
        shape, dtype = (n - 1, h, w, 3), np.uint8
    else:
        items, shape, dtype = pairs, (n - 1, h, w, 2), np.float32
    try:
        check_output_path(out, args.overwrite, int(np.prod(shape)) * np.dtype(dtype).itemsize,
                          inputs=(args.input,))
        _write_4d(out, items(), shape, dtype, vol, params, args.overwrite, rgb=args.rgb)
    except (ValueError, OSError) as exc:
        _fail(str(exc))
    print(f"zup: wrote {out} ({n - 1} flow fields, (dx, dy) in pixels, from slice z to z+1)",
          file=sys.stderr)
    return 0


def _write_4d(out: Path, items, shape, dtype, vol, params, overwrite, rgb):
    """Flow fields: TIFF (ImageJ, axes ZYXS) or Zarr, written under a temporary name."""
    import tifffile

    from .io import _commit, _partial_name, _remove, remove_stale_partials

    remove_stale_partials(out)
    tmp = _partial_name(out)
    meta = {"what": "Farnebäck flow z -> z+1, (dx, dy) pixels" if not rgb else
            "Farnebäck flow colour wheel", "farneback": params.as_dict()}
    try:
        if out.suffix.lower() == ".zarr":
            import zarr

            arr = zarr.open_array(str(tmp), mode="w", shape=shape, dtype=dtype,
                                  chunks=(1,) + shape[1:], zarr_format=2)
            for z, fl in items:
                arr[z] = fl
            arr.attrs["zup"] = meta
        else:
            def planes():
                for _, fl in items:
                    yield fl
            kw = {"photometric": "rgb"} if rgb else {"photometric": "minisblack",
                                                    "planarconfig": "contig"}
            tifffile.imwrite(tmp, data=planes(), shape=shape, dtype=dtype,
                             description=json.dumps(meta), **kw)
        _commit(tmp, out)
    except BaseException:
        _remove(tmp)
        raise


def cmd_sample(args) -> int:
    """Write the bundled sample (FlyEM FIB-SEM crop, CC-BY) to a file."""
    from ._sample_data import ATTRIBUTION, SAMPLE_FACTOR, _read

    vol = _read()
    data, voxel = vol.data, vol.voxel_size
    if not args.isotropic:
        data = data[::SAMPLE_FACTOR]
        voxel = (voxel[0] * SAMPLE_FACTOR, voxel[1], voxel[2])
    try:
        write_volume(args.output, data, voxel, vol.unit, overwrite=args.overwrite,
                     metadata={"attribution": ATTRIBUTION}, inputs=(vol.path,))
    except (ValueError, OSError) as exc:
        _fail(str(exc))
    print(f"zup: wrote {args.output} {data.shape} voxel {voxel} nm. {ATTRIBUTION}",
          file=sys.stderr)
    return 0


def cmd_train(args, rest) -> int:
    target = TRAINERS.get(args.method)
    if target is None:
        _fail(f"train: unknown method {args.method!r}; trainable: {', '.join(TRAINERS)}")
    module_name, _, func = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        _fail(f"train {args.method}: the training module is not available ({exc})")
    return int(getattr(module, func)(args.method, rest) or 0)


# -- parser -----------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zup", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"napari-zup {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    mt = sub.add_parser("methods", help="list the reconstruction methods")
    mt.add_argument("--probe", action="store_true", help="ask torch which devices work here "
                    "(slower; without it: a CUDA build of torch and an NVIDIA driver = cuda)")

    r = sub.add_parser("reconstruct", help="make an anisotropic stack isotropic")
    r.add_argument("input", help="TIFF stack (ImageJ/OME metadata) or Zarr/OME-Zarr")
    r.add_argument("output", help="output .tif (ImageJ hyperstack; BigTIFF when large) or "
                   ".zarr (OME-Zarr)")
    r.add_argument("--method", "-m", default="of-linear", help="see `zup methods`, or "
                   "'auto' = self-evaluate every method on a sample of the stack (a few "
                   "crops and sections, <= ~20%% of the run's time), print the scores and "
                   "the choice, then run the winner (default of-linear)")
    r.add_argument("--auto-budget", type=float, default=None, metavar="FRACTION",
                   help="--method auto: most time for the choice as a fraction of the "
                   "estimated reconstruction (default 0.2); learned candidates predicted not to "
                   "fit are skipped, saying so. E.g. 1 to let them be scored on a short run")
    r.add_argument("--factor", "-f", default="auto", help="z upsampling factor: a number "
                   "> 1 (e.g. 4 or 2.5) or 'auto' = z step / pixel size (exact where the method "
                   "takes fractional factors, else rounded; default)")
    r.add_argument("--input-level", type=int, default=0, help="OME-Zarr input: multiscale "
                   "level to read (0 = full resolution)")
    r.add_argument("--tile-size", type=int, default=None, help="y/x tile edge in pixels "
                   "(default: the input's chunks, or 2048)")
    r.add_argument("--threads", type=int, default=None, help="worker threads (default: all "
                   "cores)")
    r.add_argument("--checkpoint", help="learned methods: checkpoint file (default: bundled)")
    r.add_argument("--device", default="auto", help="learned methods: auto, cpu, cuda, mps")
    r.add_argument("--param", action="append", metavar="KEY=VALUE",
                   help="extra method parameter (repeatable)")
    _add_farneback(r)
    _add_voxel_size(r)
    r.add_argument("--overwrite", action="store_true", help="replace an existing output")
    r.add_argument("--montage", metavar="PNG", help="also save a PNG montage (xy, xz, yz "
                   "views of input and output)")
    d = r.add_argument_group("distributed (.zarr output)")
    d.add_argument("--workers", type=int, help="run on a dask LocalCluster with N processes")
    d.add_argument("--scheduler", help="run on an existing dask scheduler (tcp://host:8786)")
    d.add_argument("--pyramid-levels", dest="pyramid_levels", type=int, default=None,
                   help="OME-Zarr pyramid levels")
    d.add_argument("--chunks", type=int, nargs=3, metavar=("Z", "Y", "X"),
                   help="output chunk shape, one task each (default 16 x 512 x 512; "
                   "1024 x 1024 in y/x for of-linear/of-cubic)")
    d.add_argument("--no-resume", action="store_true", help="do not reuse finished chunks")

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
    e.add_argument("--overwrite", action="store_true")
    _add_farneback(e)
    _add_voxel_size(e)

    fl = sub.add_parser("flow", help="Farnebäck flow between consecutive slices")
    fl.add_argument("input")
    fl.add_argument("output", help=".tif (Z-1, Y, X, 2) float32 (dx, dy) or .zarr")
    fl.add_argument("--rgb", action="store_true", help="write colour-wheel RGB images instead")
    fl.add_argument("--max-magnitude", type=float, default=None,
                    help="--rgb: flow magnitude shown at full brightness (default: 99th pct)")
    fl.add_argument("--param", action="append", metavar="KEY=VALUE")
    fl.add_argument("--overwrite", action="store_true")
    _add_farneback(fl)

    sm = sub.add_parser("sample", help="write the bundled sample volume (real FIB-SEM crop)")
    sm.add_argument("output", help=".tif or .zarr")
    sm.add_argument("--isotropic", action="store_true", help="the 10 nm original instead of "
                    "the anisotropic stack (every 4th slice, 40 nm z step)")
    sm.add_argument("--overwrite", action="store_true")

    t = sub.add_parser("train", help="train a learned method (see `zup train METHOD -h`)",
                       add_help=False)
    t.add_argument("method")
    return p


class Terminated(KeyboardInterrupt):
    """SIGTERM (a cluster scheduler's kill, ``kill PID``): raised in the main thread so that
    it takes the same path as Ctrl-C: temporary files removed, stores left resumable."""


def _on_sigterm(signum, frame):
    raise Terminated()


#: Errors the user can act on: one line, exit status 2. Anything else is a bug: traceback.
EXPECTED_ERRORS = (CLIError, VolumeReadError, OSError, MemoryError)
REPORT = ("zup: this is a bug in napari-zup, not in your input; please report it with the "
          "command line and the traceback above (issue tracker: see README.md, 'Reporting "
          "problems')")


def main(argv=None) -> int:
    import signal

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv[:1] == ["train"]:
        args, rest = parser.parse_known_args(argv)
        run = (lambda: cmd_train(args, rest)) if args.command == "train" else None
    else:
        run = None
    if run is None:
        args = parser.parse_args(argv)
        handlers = {"methods": cmd_methods, "reconstruct": cmd_reconstruct,
                    "evaluate": cmd_evaluate, "flow": cmd_flow, "sample": cmd_sample}
        run = lambda: handlers[args.command](args)  # noqa: E731
    # SIGTERM cleans up as Ctrl-C does. SIGINT is left as Python set it up: when the process
    # was started with SIGINT ignored (nohup, or `cmd &` from a script: the POSIX way of
    # asking a background job not to die on Ctrl-C) we honour that rather than re-arm it.
    # An interactive shell's `&` does not ignore SIGINT (job control uses process groups), so
    # Ctrl-C on a foreground zup always works.
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        from .checkpoints import CheckpointError

        try:
            return run()
        except (*EXPECTED_ERRORS, CheckpointError) as exc:
            print(f"zup: error: {exc}", file=sys.stderr)
            return 2
        except Terminated:
            print("zup: terminated (SIGTERM); no output was written (temporary files removed)",
                  file=sys.stderr)
            return 143
        except KeyboardInterrupt:
            print("zup: interrupted; no output was written", file=sys.stderr)
            return 130
        except Exception:
            import traceback

            traceback.print_exc()
            print(REPORT, file=sys.stderr)
            return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
