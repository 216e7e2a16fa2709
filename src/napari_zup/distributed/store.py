"""The output store of a cluster run: its layout (one zarr array per pyramid level, a group of
per-chunk done markers), the run *signature* that decides whether an existing store is resumed
or refused, and the status that says ``"complete"`` only once every chunk is written."""
from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path

import numpy as np

from .. import __version__, io

#: Name of the group (inside the store) that holds the per-chunk done markers during a run.
DONE_GROUP = "zup_done"
SIGNATURE_FORMAT = 1


class OutputConflict(FileExistsError):
    """The output store exists and belongs to another run (or to no zup run at all)."""


# -- done markers (written by the worker tasks, read by the client on resume) --------------------

def _marker(path: str, level: int, index) -> str:
    return os.path.join(path, DONE_GROUP, str(level), ".".join(map(str, index)))


def _mark_done(path: str, level: int, index) -> None:
    with open(_marker(path, level, index), "wb"):
        pass


def _done_markers(out: Path, level: int) -> set:
    d = out / DONE_GROUP / str(level)
    try:
        names = os.listdir(d)
    except FileNotFoundError:
        return set()
    done = set()
    for n in names:
        try:
            done.add(tuple(int(v) for v in n.split(".")))
        except ValueError:
            continue
    return done


# -- signature -----------------------------------------------------------------------------------

def _fingerprint(arr) -> str:
    """Content fingerprint from a few small patches (first, middle, last slice), with shape
    and dtype: cheap even for terabyte inputs, and catches a different file at the same path."""
    h = hashlib.sha256(f"{tuple(arr.shape)}|{np.dtype(arr.dtype).str}".encode())
    if len(arr.shape) != 3:
        return h.hexdigest()
    z, hh, ww = (int(s) for s in arr.shape)
    for zi in sorted({0, z // 2, z - 1}):
        for yc, xc in ((0, 0), (hh // 2, ww // 2), (max(hh - 64, 0), max(ww - 64, 0))):
            patch = arr[zi, yc:yc + 64, xc:xc + 64]
            if hasattr(patch, "compute"):
                patch = patch.compute(scheduler="sync")
            h.update(np.ascontiguousarray(patch).tobytes())
    return h.hexdigest()


def _file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _checkpoint_identity(name: str, info, params: dict):
    ckpt = params.get("checkpoint")
    if ckpt is None and info.needs_checkpoint:
        from ..checkpoints import default_checkpoint

        ckpt = default_checkpoint(name)
    if ckpt is None:
        return None
    p = Path(ckpt)
    if not p.is_file():
        return {"path": str(ckpt), "sha256": None}
    return {"path": p.name, "sha256": _file_sha256(p)}


def _run_signature(*, name: str, params: dict, info, factor, in_shape, dtype, input_level: int,
                   fingerprint: str, value_range, chunks, levels: int) -> dict:
    """Everything that makes two runs write the same bytes; stored in the store's attributes."""
    return {
        "format": SIGNATURE_FORMAT,
        "zup_version": __version__,
        "method": name,
        "method_params": params,
        "checkpoint": _checkpoint_identity(name, info, params),
        "factor": str(factor),
        "input": {"shape": list(in_shape), "dtype": dtype.str,
                  "level": int(input_level),
                  "fingerprint": fingerprint},
        "value_range": [float(value_range[0]), float(value_range[1])],
        "chunks": list(chunks),
        "levels": levels,
    }


def _read_zup_attrs(out: Path):
    import zarr

    try:
        return dict(zarr.open_group(str(out), mode="r").attrs).get("zup")
    except Exception:
        return None


def _describe_difference(old: dict, new: dict) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys[:4])


# -- an existing store: resume, refuse or replace ---------------------------------------------

def _check_existing(out: Path, existing, signature: dict, *, overwrite: bool,
                    resume: bool) -> bool:
    """For an ``out`` that exists: True when it already holds this run, complete (nothing to
    do); raise OutputConflict when it may not be touched; delete it when ``overwrite``;
    otherwise (False) it is resumed."""
    if existing is None or "signature" not in existing:
        if not overwrite:
            raise OutputConflict(
                f"output {str(out)!r} exists and was not written by a zup distributed run; "
                "choose another name or pass overwrite=True (--overwrite) to replace it")
    elif existing["signature"] != signature:
        if not overwrite:
            raise OutputConflict(
                f"output {str(out)!r} holds a run with other settings "
                f"({_describe_difference(existing['signature'], signature)}); choose "
                "another name or pass overwrite=True (--overwrite) to replace it")
    elif existing.get("status") == "complete" and not overwrite:
        return True
    elif not resume and not overwrite:
        raise OutputConflict(
            f"output {str(out)!r} holds an unfinished run with the same settings; pass "
            "resume=True (--resume) to finish it or overwrite=True to start again")
    if overwrite:
        if out.is_dir():
            shutil.rmtree(out)
        else:
            out.unlink()
    return False


def _create_store(out: Path, *, shapes, chunks, dtype, signature: dict, source_path,
                  voxel_size, unit: str, factor) -> str:
    """A new, empty store for this run (status "incomplete"); returns its run id."""
    import zarr

    levels = len(shapes)
    nbytes = sum(int(np.prod(s)) for s in shapes) * dtype.itemsize
    io.check_output_path(out, overwrite=False, nbytes=nbytes)
    run_id = uuid.uuid4().hex
    vox_out, unit = io.output_voxel_size(voxel_size, unit, factor)  # unknown: pixels, no unit
    zup = {"status": "incomplete", "run_id": run_id, "signature": signature,
           "source": source_path, "voxel_size_known": voxel_size is not None}
    root = zarr.open_group(str(out), mode="w", zarr_format=2)
    for lv, s in enumerate(shapes):
        root.create_array(str(lv), shape=s, chunks=tuple(min(c, n) for c, n in zip(chunks, s)),
                          dtype=dtype, fill_value=0)
    done_group = root.create_group(DONE_GROUP)
    done_group.attrs["note"] = ("per-chunk done markers of an unfinished zup run; removed "
                                "when the run completes")
    for lv in range(levels):
        (out / DONE_GROUP / str(lv)).mkdir()
    root.attrs.update(io.ome_zarr_attrs(shapes[0], vox_out, unit, zup, n_levels=levels))
    return run_id


def _reopen_store(out: Path, existing: dict, levels: int) -> str:
    """An unfinished store of this run, ready to resume; returns its run id."""
    (out / DONE_GROUP).mkdir(exist_ok=True)
    for lv in range(levels):
        (out / DONE_GROUP / str(lv)).mkdir(exist_ok=True)
    return existing["run_id"]


def _mark_complete(out: Path) -> None:
    """All chunks written: only now does the store say so (and the done markers go)."""
    import zarr

    root = zarr.open_group(str(out), mode="r+", zarr_format=2)
    attrs = dict(root.attrs)
    zup = dict(attrs.get("zup", {}))
    zup["status"] = "complete"
    attrs["zup"] = zup
    root.attrs.update(attrs)
    shutil.rmtree(out / DONE_GROUP, ignore_errors=True)
