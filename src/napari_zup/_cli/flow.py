"""``zup flow``: Farnebäck flow between consecutive slices, as (dx, dy) fields or
colour-wheel RGB, to TIFF or Zarr."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from ..engine import validate_volume
from ..io import check_not_input, check_output_path
from .common import _add_farneback, _fail, _read, _StderrProgress, parse_params


def cmd_flow(args) -> int:
    from ..flow import FarnebackParams, flow_to_rgb, volume_flows

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
        n, h, w = (int(s) for s in vol.data.shape)
        flows = volume_flows(vol.data, range(n - 1), params)  # refuses NaN/inf, naming how many
    except ValueError as exc:
        _fail(str(exc))
    progress = _StderrProgress(n - 1, "flow")

    def pairs():
        for z, fl in flows:
            progress.update()
            yield z, fl

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

    from ..io import atomic_output

    meta = {"what": "Farnebäck flow z -> z+1, (dx, dy) pixels" if not rgb else
            "Farnebäck flow colour wheel", "farneback": params.as_dict()}
    with atomic_output(out) as tmp:
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


def add_flow_parser(sub) -> None:
    """The ``flow`` sub-command's options."""
    fl = sub.add_parser("flow", help="Farnebäck flow between consecutive slices")
    fl.add_argument("input")
    fl.add_argument("output", help=".tif (Z-1, Y, X, 2) float32 (dx, dy) or .zarr")
    fl.add_argument("--rgb", action="store_true", help="write colour-wheel RGB images instead")
    fl.add_argument("--max-magnitude", type=float, default=None,
                    help="--rgb: flow magnitude shown at full brightness (default: 99th pct)")
    fl.add_argument("--param", action="append", metavar="KEY=VALUE")
    fl.add_argument("--overwrite", action="store_true")
    _add_farneback(fl, backward=False)
