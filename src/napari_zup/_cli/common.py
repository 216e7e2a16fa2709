"""What every ``zup`` sub-command shares: the one user-error type, reading the input (with
``--voxel-size``), ``--factor``, method parameters and the options that carry them, and
progress on stderr."""
from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import numpy as np

from .. import grid
from ..progress import Meter, Progress
from ..io import UNKNOWN_UNIT, Volume, VolumeReadError, is_pixel_unit, read_volume, unit_to_nm
from ..methods.base import create_method, get_info, method_infos


#: --texture's help, for every command that takes it.
TEXTURE_HELP = ("film, tsain: add real section texture back so that restored slices have RATIO "
                "x the nearest knot's high-frequency energy (film: both knots warped to the "
                "slice by its flows; tsain: the nearest knot) (e.g. 0.8: no banding in xz/yz; "
                "costs PSNR, see docs/learned-interpolation.md). Default: off, the most "
                "faithful output")


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


def oversampling_warning(volume: Volume, factor) -> str | None:
    """:func:`grid.oversampling_note` for a file: what its voxel size is, then the note."""
    note = grid.oversampling_note(volume.voxel_size, factor, volume.unit)
    if note is None:
        return None
    z, y, x = volume.voxel_size
    return f"the file says {z:g} x {y:g} x {x:g} {volume.unit} (z, y, x); {note}"


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
    if getattr(args, "backward_flow", None):
        params["backward"] = args.backward_flow
    if getattr(args, "checkpoint", None):
        params["checkpoint"] = args.checkpoint
    if getattr(args, "texture", None) is not None:
        params["texture"] = args.texture
    if getattr(args, "device", None) and args.device != "auto":
        params["device"] = args.device
    return params


FARNEBACK_KEYS = ("winsize", "levels", "iterations", "poly_n", "poly_sigma", "pyr_scale",
                  "flags", "backward")


def _method_params(method: str, params: dict) -> dict:
    """Keep only the parameters that apply to ``method`` (Farnebäck ones go to of-*)."""
    info = get_info(method)
    out = {}
    for k, v in params.items():
        if k in FARNEBACK_KEYS and not info.has_flows:
            continue
        if k == "texture" and not info.texture:
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
    if used and not any(i.has_flows for i in infos):
        _fail(f"Farnebäck parameter {used[0]!r} applies to "
              f"{', '.join(i.name for i in method_infos() if i.has_flows)}, not {names}")
    if params.get("texture") is not None and not any(i.texture for i in infos):
        _fail(f"--texture: {names} {'takes' if len(infos) == 1 else 'take'} no texture option "
              f"({', '.join(i.name for i in method_infos() if i.texture)} do)")


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
        to_nm = unit_to_nm(unit or "nm")
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


class Terminated(KeyboardInterrupt):
    """SIGTERM (a cluster scheduler's kill, ``kill PID``): raised in the main thread so that
    it takes the same path as Ctrl-C: temporary files removed, stores left resumable."""


#: Set by the CLI's SIGTERM handler. The handler also raises :class:`Terminated`, but Python
#: runs signal handlers between any two bytecodes of the main thread, also inside a
#: ``__del__`` or a weakref callback, where an exception is printed and dropped ("Exception
#: ignored in ..."). So the request is also kept here, and every progress update and the
#: cluster runner's cancel poll honour it: a SIGTERM is never lost.
TERMINATE = threading.Event()


def check_terminated() -> None:
    """Raise :class:`Terminated` if a SIGTERM came (even one whose exception was dropped)."""
    if TERMINATE.is_set():
        raise Terminated()


class _StderrProgress:
    """The CLI's progress line: ``label: done/total unit, rate, elapsed, ETA`` on stderr at
    most every ``every`` seconds (and at the end), from :class:`napari_zup.progress.Progress`
    events (or counts)."""

    def __init__(self, total: int, label: str, every: float = 2.0, unit: str = "slices",
                 done: int = 0):
        self.progress = Meter(total, unit, done)
        self.label = label
        self.every = every
        self.last = 0.0

    def update(self, event: Progress | int = 1) -> None:
        check_terminated()
        self.progress.update(event)
        now = time.perf_counter()
        if now - self.last >= self.every or self.progress.done == self.progress.total:
            self.last = now
            print(f"{self.label}: {self.progress}", file=sys.stderr, flush=True)


def _add_farneback(p, backward: bool = True):
    """The Farnebäck options; ``backward``: also ``--backward-flow`` (of-linear/of-cubic
    warp both knots of a pair; the ``flow`` command computes forward flows only)."""
    g = p.add_argument_group("Farnebäck flow (of-linear, of-cubic, flow)")
    if backward:
        from ..methods.optical_flow import BACKWARD

        g.add_argument("--backward-flow", dest="backward_flow", choices=BACKWARD, help=(
            "how of-linear/of-cubic get the flow from the second knot of a pair back to the "
            "first: 'inverse' inverts the forward flow (default; half the Farnebäck calls, "
            "same quality, docs/benchmarks.md), 'farneback' runs Farnebäck again in that "
            "direction (the paper's exact method)"))
    g.add_argument("--winsize", type=int, help="averaging window (default 129)")
    g.add_argument("--levels", type=int, help="pyramid levels (default 3)")
    g.add_argument("--iterations", type=int, help="iterations per level (default 2; the "
                   "paper: 3)")
    g.add_argument("--poly-n", dest="poly_n", type=int, help="polynomial neighbourhood 5 or 7 "
                   "(default 7)")
    g.add_argument("--poly-sigma", dest="poly_sigma", type=float, help="default 1.5")
    g.add_argument("--pyr-scale", dest="pyr_scale", type=float, help="default 0.5")
