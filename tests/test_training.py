"""The learned-model framework: anchored outputs (flat stays flat), checkpoint and training-state
errors, the one training session for every learned method, adaptation, augmentation."""
import json
import pickle
import struct

import numpy as np
import pytest
import torch

from napari_zup.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from napari_zup.engine import reconstruct
from napari_zup.methods import method_names


@pytest.fixture(scope="module", autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# -- flat input stays flat, for every registered method (shipped checkpoints) ---------------

@pytest.mark.parametrize("value,dtype", [(7, np.uint8), (1234, np.uint16), (250, np.uint8)])
@pytest.mark.parametrize("method", method_names())
def test_flat_input_stays_flat(method, value, dtype):
    vol = np.full((4, 40, 44), value, dtype)
    out = reconstruct(vol, method, 4, method_params={"device": "cpu"} if method in (
        "film", "tsain", "niiv", "a2i") else None)
    assert out.shape == (13, 40, 44) and out.dtype == vol.dtype
    dev = np.abs(out.astype(np.int64) - value)
    assert dev.max() <= 1, (method, int(out.min()), int(out.max()))


def test_learned_outputs_stay_within_the_local_range_of_their_inputs():
    """The anchor itself: a step edge is not overshot by more than its own two levels."""
    from napari_zup.methods._torch_common import bound_to_local_range

    a = torch.zeros(1, 1, 8, 8)
    a[..., 4:] = 1.0
    wild = torch.randn(1, 1, 8, 8) * 5
    out = bound_to_local_range(wild, (a, a), radius=1)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    # far from the edge (more than the radius) the range is a single value
    assert torch.equal(out[..., :2], torch.zeros(1, 1, 8, 2))
    assert torch.equal(out[..., 6:], torch.ones(1, 1, 8, 2))


# -- checkpoint metadata and files -----------------------------------------------------------

def _write_raw_safetensors(path, header_meta: str):
    """A safetensors file with one float tensor and a hand-written "zup" metadata string."""
    header = {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
              "__metadata__": {"zup": header_meta}}
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + np.zeros(2, np.float32).tobytes())


@pytest.mark.parametrize("meta,words", [
    ("{not json", "not valid JSON"),
    ("[1, 2, 3]", "JSON list, not an object"),
    ('"film"', "JSON str, not an object"),
])
def test_bad_checkpoint_metadata_is_one_clear_error(tmp_path, meta, words):
    p = tmp_path / "bad.safetensors"
    _write_raw_safetensors(p, meta)
    with pytest.raises(CheckpointError, match=words) as exc:
        load_checkpoint(p, method="film")
    assert "bad.safetensors" in str(exc.value) and "\n" not in str(exc.value)


def test_pt_checkpoint_with_non_object_metadata_refused(tmp_path):
    p = tmp_path / "m.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "metadata": "[1]"}, p)
    with pytest.raises(CheckpointError, match="not an object"):
        load_checkpoint(p)
    torch.save({"state_dict": {"w": torch.zeros(2)}, "metadata": "{oops"}, p)
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(p)


def test_corrupted_tensor_bytes_refused(tmp_path):
    p = tmp_path / "ok.safetensors"
    save_checkpoint(p, {"w": torch.arange(64, dtype=torch.float32)}, {"method": "film"})
    raw = bytearray(p.read_bytes())
    raw[-5] ^= 0xFF
    p.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="corrupted"):
        load_checkpoint(p, method="film")
