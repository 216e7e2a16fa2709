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
import sys
import threading
from pathlib import Path

from . import __version__
from ._cli.common import TERMINATE, Terminated  # noqa: F401 (Terminated: re-exported)
from ._cli.common import (TEXTURE_HELP, CLIError, _check_method, _fail, _method_params, _read,
                          _refuse_unused, _StderrProgress, oversampling_warning, parse_params,
                          resolve_factor)
from ._cli.common import (FARNEBACK_KEYS, _add_farneback, _add_voxel_size,  # noqa: F401
                          _given_voxel_size)  # (re-exported: the names as they were)
from ._cli.evaluate import DEFAULT_EVAL_METHODS, _eval_methods, cmd_evaluate  # noqa: F401
from ._cli.evaluate import add_evaluate_parser
from ._cli.flow import add_flow_parser, cmd_flow
from .checkpoints import factor_warning
from .engine import ReconstructionCancelled, make_plan, reconstruct_events, validate_volume
from .io import (VolumeReadError, check_not_input, check_output_path, output_dtype,
                 output_voxel_size, read_volume, write_volume)
from .methods.base import create_method, get_info, method_infos


#: `zup train METHOD ...` is handed to "module:function"(method, argv) of the learned methods.
TRAINERS = {m: "napari_zup.training.cli:main" for m in ("film", "tsain", "niiv", "a2i")}


# -- commands (evaluate and flow: napari_zup._cli) ---------------------------------------------

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
    if (note := oversampling_warning(vol, factor)):
        print(f"zup: warning: {note}", file=sys.stderr)
    names = [i.name for i in method_infos()]
    print(f"zup: --method auto: self-evaluating {len(names)} methods on a sample of the stack "
          "(docs/evaluation.md)", file=sys.stderr)

    def on_progress(event):
        print(f"zup: {event.message} ({event.done}/{event.total})", file=sys.stderr, flush=True)

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
    if (note := oversampling_warning(vol, factor)):
        print(f"zup: warning: {note}", file=sys.stderr)
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
    return _reconstruct_local(args, vol, factor, params, voxel, unit, meta, dtype)


def _reconstruct_local(args, vol, factor, params, voxel, unit, meta, dtype) -> int:
    """Stream the reconstruction on this machine into a TIFF or Zarr file."""
    out = Path(args.output)
    try:
        method = create_method(args.method, **params)
    except ValueError as exc:
        _fail(str(exc))
    try:
        plan = make_plan(vol.data, args.method, factor, args.tile_size, method)
        nbytes = plan.out_nbytes
        print(f"zup: {args.method} x{float(factor):g}: {plan.in_shape} -> {plan.out_shape} "
              f"{dtype}, {nbytes / 1e6:.0f} MB -> {out}", file=sys.stderr)
        for line in method.notes():
            print(f"zup: {line}", file=sys.stderr)
        check_output_path(out, args.overwrite, nbytes, inputs=(args.input,))
        progress = _StderrProgress(plan.out_shape[0], "reconstruct")

        def items():
            for event in reconstruct_events(vol.data, method, factor, tile_size=args.tile_size,
                                            workers=args.threads,
                                            value_range=plan.value_range):
                progress.update(event)
                yield event.payload

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
                     title=f"{Path(args.input).name}: {args.method} x{float(factor):g}"
                     + (f", texture {args.texture:g}" if args.texture else ""))
        print(f"zup: montage {args.montage}", file=sys.stderr)
    return 0


def _reconstruct_distributed(args, vol, factor, params, voxel, meta) -> int:
    try:
        from .distributed import iter_reconstruct_to_zarr
    except ImportError as exc:
        _fail(f"distributed runs need the 'distributed' extra ({exc})")
    from .progress import drive

    progress = None
    stats: dict = {}

    def on_progress(event):
        nonlocal progress
        done, total = event.done, event.total
        if progress is None:  # the first report: chunks found finished by a resumed run
            progress = _StderrProgress(total, "reconstruct", unit="chunks", done=done)
            if 0 < done < total:
                print(f"zup: resuming {args.output}: {done} of {total} chunks already "
                      "written", file=sys.stderr)
        progress.update(event)

    try:
        drive(iter_reconstruct_to_zarr(
            args.input, args.output, args.method, factor, method_params=params,
            workers=args.workers, scheduler=args.scheduler, overwrite=args.overwrite,
            resume=not args.no_resume, levels=args.pyramid_levels,
            input_level=args.input_level, chunks=args.chunks, voxel_size=vol.voxel_size,
            unit=vol.unit, stats=stats, cancel=TERMINATE), on_progress)
    except (KeyboardInterrupt, ReconstructionCancelled):
        # ReconstructionCancelled: the runner saw TERMINATE (its cancel event) before the
        # handler's exception arrived, or that exception was dropped (see TERMINATE).
        terminated = TERMINATE.is_set()
        done = f"{progress.progress.done} of {progress.progress.total} chunks" if progress \
            else "before any chunk"
        how = "terminated (SIGTERM)" if terminated else "interrupted"
        print(f"zup: {how} after {done}; {args.output} is marked incomplete and keeps "
              "them: rerun the same command to resume", file=sys.stderr)
        return 143 if terminated else 130
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

    _add_reconstruct_parser(sub)

    add_evaluate_parser(sub)

    add_flow_parser(sub)

    sm = sub.add_parser("sample", help="write the bundled sample volume (real FIB-SEM crop)")
    sm.add_argument("output", help=".tif or .zarr")
    sm.add_argument("--isotropic", action="store_true", help="the 10 nm original instead of "
                    "the anisotropic stack (every 4th slice, 40 nm z step)")
    sm.add_argument("--overwrite", action="store_true")

    t = sub.add_parser("train", help="train a learned method (see `zup train METHOD -h`)",
                       add_help=False)
    t.add_argument("method")
    return p


def _add_reconstruct_parser(sub) -> None:
    """The ``reconstruct`` sub-command's options."""
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
    r.add_argument("--texture", type=float, default=None, metavar="RATIO",
                   help=TEXTURE_HELP)
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


def _on_sigterm(signum, frame):
    TERMINATE.set()  # kept even where Python drops the exception below (see TERMINATE)
    raise Terminated()


def _unraisable_hook(previous):
    """``sys.unraisablehook`` while zup runs: a :class:`Terminated` dropped inside a
    ``__del__`` is not printed as a traceback (TERMINATE has it and the run stops at its next
    progress step); anything else goes to ``previous``."""
    def hook(unraisable):
        if not isinstance(unraisable.exc_value, Terminated):
            previous(unraisable)
    return hook


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
    previous_hook = sys.unraisablehook
    if threading.current_thread() is threading.main_thread():
        TERMINATE.clear()
        sys.unraisablehook = _unraisable_hook(previous_hook)
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
        sys.unraisablehook = previous_hook


def console_main() -> int:
    """The ``zup`` command (and ``python -m napari_zup.cli``): a process of its own that exits
    when done, so freed memory is kept for reuse (:mod:`napari_zup._malloc`: learned methods
    ~1.6x faster on large tiles), then :func:`main`. Python callers use :func:`main`."""
    from ._malloc import keep_freed_memory

    keep_freed_memory()
    return main()


if __name__ == "__main__":
    sys.exit(console_main())
