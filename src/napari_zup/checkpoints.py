"""Checkpoints of the learned methods: one format for all of them.

A checkpoint is a safetensors file: the model's state dict plus JSON metadata stored in the
safetensors header under the key ``"zup"``::

    {"method": "film", "arch": {...hyperparameters...}, "training": {...data, steps...},
     "factor_range": [2, 8], "version": "0.1.0", "tensors_sha256": "..."}

``tensors_sha256`` covers every tensor (name, dtype, shape, bytes), so a corrupted or edited
file is refused. Loading never executes code: safetensors is plain data, and the legacy
``.pt`` path uses ``torch.load(weights_only=True)``.

Default checkpoints ship inside the package (``napari_zup/checkpoints/<method>.safetensors``).
"""
from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message says why and what to do."""


def _tensors_sha256(state_dict) -> str:
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(-1).view(dtype=__import__("torch").uint8).numpy().tobytes())
    return h.hexdigest()


def save_checkpoint(path, state_dict, metadata: dict[str, Any]) -> Path:
    """Write ``state_dict`` and ``metadata`` (must contain ``"method"``) to ``path``.

    Written to a temporary name and renamed, so an interrupted save never leaves a file that
    looks complete.
    """
    from safetensors.torch import save_file

    from . import __version__

    if "method" not in metadata:
        raise ValueError("checkpoint metadata must name its 'method'")
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    meta = dict(metadata)
    meta.setdefault("version", __version__)
    meta["format"] = FORMAT_VERSION
    meta["tensors_sha256"] = _tensors_sha256(tensors)
    tmp = path.with_name(path.name + ".partial")
    save_file(tensors, str(tmp), metadata={"zup": json.dumps(meta)})
    tmp.replace(path)
    return path


def load_checkpoint(path, method: str | None = None, device: str = "cpu"):
    """Return ``(state_dict, metadata)`` from a checkpoint file, checked.

    Raises :class:`CheckpointError` for a missing, truncated or corrupted file, a pickle that
    would run code, or a checkpoint of another method than ``method``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist; pick an existing file")
    if path.suffix in (".pt", ".pth", ".ckpt"):
        state_dict, meta = _load_torch(path, device)
    else:
        state_dict, meta = _load_safetensors(path, device)
    if method is not None and meta.get("method") != method:
        raise CheckpointError(
            f"checkpoint {path.name!r} is for method {meta.get('method')!r}, not {method!r}; "
            f"choose a {method} checkpoint (or the bundled default)"
        )
    expected = meta.get("tensors_sha256")
    if expected is not None and _tensors_sha256(state_dict) != expected:
        raise CheckpointError(
            f"checkpoint {path.name!r} is corrupted (its tensors do not match the stored "
            "sha256); download or train it again"
        )
    return state_dict, meta


def _load_safetensors(path: Path, device: str):
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            header = f.metadata() or {}
            state_dict = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises several types for broken files
        raise CheckpointError(
            f"checkpoint {path.name!r} is not a readable safetensors file ({exc}); "
            "it may be truncated or of another format"
        ) from None
    if "zup" not in header:
        raise CheckpointError(
            f"checkpoint {path.name!r} has no napari-zup metadata; it was not written by "
            "napari_zup.checkpoints.save_checkpoint"
        )
    return state_dict, _parse_metadata(path, header["zup"])


def _parse_metadata(path: Path, meta) -> dict[str, Any]:
    """The checkpoint's metadata as a dict, or :class:`CheckpointError` naming what is wrong."""
    if isinstance(meta, (str, bytes)):
        try:
            meta = json.loads(meta)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(
                f"checkpoint {path.name!r} has metadata that is not valid JSON ({exc}); the "
                "file was edited or damaged: use the bundled model or train it again") from None
    if not isinstance(meta, dict):
        raise CheckpointError(
            f"checkpoint {path.name!r} has metadata that is a JSON {type(meta).__name__}, not "
            "an object; the file was not written by napari_zup.checkpoints.save_checkpoint: "
            "use the bundled model or train it again")
    return meta


def _load_torch(path: Path, device: str):
    import pickle

    import torch

    try:
        obj = torch.load(str(path), map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"checkpoint {path.name!r} was refused: it contains Python objects that would run "
            f"code when loaded ({str(exc).splitlines()[0]}); only plain tensors are accepted"
        ) from None
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint {path.name!r} could not be read ({exc}); it may be truncated"
        ) from None
    if not isinstance(obj, dict) or "state_dict" not in obj or "metadata" not in obj:
        raise CheckpointError(
            f"checkpoint {path.name!r} is not a napari-zup checkpoint "
            "(expected a dict with 'state_dict' and 'metadata')"
        )
    state = obj["state_dict"]
    if not isinstance(state, dict) or not all(hasattr(v, "detach") for v in state.values()):
        raise CheckpointError(f"checkpoint {path.name!r} has a 'state_dict' that is not a "
                              "mapping of tensors; it is not a napari-zup checkpoint")
    return state, _parse_metadata(path, obj["metadata"])


def load_model(method: str, build_model, checkpoint=None):
    """The one loader of the learned methods: ``(model, metadata, path)`` on the CPU, eval mode.

    ``checkpoint``: a path, or None for the bundled one; ``build_model(arch)`` makes the
    network from the metadata's ``arch``. Every problem is a :class:`CheckpointError` that
    names the file and what to do. Changes no global state (threads, seeds).
    """
    if checkpoint is None:
        checkpoint = default_checkpoint(method)
        if checkpoint is None:
            raise CheckpointError(
                f"no bundled {method} checkpoint is installed; pass checkpoint=PATH (train one "
                f"with: zup train {method} --data STACK --from-scratch --out {method}.safetensors)")
    state, meta = load_checkpoint(checkpoint, method=method, device="cpu")
    arch = meta.get("arch")
    if not isinstance(arch, dict):
        raise CheckpointError(f"checkpoint {str(checkpoint)!r} has no 'arch' metadata; it was "
                              "not written by napari_zup.training")
    try:
        model = build_model(arch)
        model.load_state_dict(state, strict=True)
    except (TypeError, ValueError, RuntimeError, KeyError) as exc:
        raise CheckpointError(
            f"checkpoint {str(checkpoint)!r} does not fit the {method} architecture "
            f"({str(exc).splitlines()[0]}); retrain it with this version") from None
    return model.eval(), meta, str(checkpoint)


def default_checkpoint(method: str) -> Path | None:
    """Path of the checkpoint shipped with the package for ``method``, or None."""
    path = Path(str(resources.files("napari_zup") / "checkpoints" / f"{method}.safetensors"))
    return path if path.is_file() else None


def read_metadata(path) -> dict[str, Any]:
    """Metadata of a checkpoint, checked like :func:`load_checkpoint` (its tensors are read and
    hashed: a model card never describes a corrupted file)."""
    return load_checkpoint(path)[1]


def peek_metadata(path) -> dict[str, Any]:
    """Metadata of a safetensors checkpoint from its header alone: no tensors read or hashed,
    no torch import (milliseconds; for the factor-range check before anything runs). The
    tensors are checked when the method loads the file (:func:`load_checkpoint`). Other
    formats fall back to :func:`read_metadata`."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return read_metadata(path)
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            header = f.metadata() or {}
    except Exception as exc:  # safetensors raises several types for broken files
        raise CheckpointError(
            f"checkpoint {path.name!r} is not a readable safetensors file ({exc}); "
            "it may be truncated or of another format") from None
    if "zup" not in header:
        raise CheckpointError(f"checkpoint {path.name!r} has no napari-zup metadata; it was "
                              "not written by napari_zup.checkpoints.save_checkpoint")
    return _parse_metadata(path, header["zup"])


def factor_warning(method: str, factor, checkpoint=None) -> str | None:
    """A warning when ``factor`` lies outside the factors ``checkpoint`` (default: the bundled
    one) was trained for, else None. Methods without checkpoints, or checkpoints that do not
    record a range, give None. Reads only the header (:func:`peek_metadata`)."""
    path = checkpoint or default_checkpoint(method)
    if path is None:
        return None
    try:
        meta = peek_metadata(path)
    except CheckpointError:
        return None  # the method itself reports a broken file when it loads it
    rng = meta.get("factor_range")
    if not rng or len(rng) != 2:
        return None
    lo, hi = float(rng[0]), float(rng[1])
    f = float(factor)
    if lo - 1e-9 <= f <= hi + 1e-9:
        return None
    trained = f"×{lo:g}" if lo == hi else f"×{lo:g} to ×{hi:g}"
    return (f"the {method} checkpoint {Path(path).name!r} was trained for factors {trained}; "
            f"at ×{f:g} it runs outside that range and may blur or invent structure. Check it "
            f"on your data (Evaluate / zup evaluate) or train one for this factor "
            f"(zup train {method} --factor {round(f)} ...)")
