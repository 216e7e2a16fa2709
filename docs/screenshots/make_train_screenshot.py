"""Real screenshot of the Train widget during a training (a real napari window under Xvfb)::

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/screenshots/make_train_screenshot.py

Trains niiv on the anisotropic FIB-SEM sample shipped with the plugin (one torch thread) and
writes train.png next to this script while the training runs; the checkpoint goes to a
temporary folder.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_screenshots import dock, new_viewer, pump, shot, wait  # noqa: E402


def train(min_step=150):
    torch.set_num_threads(1)
    viewer = new_viewer()
    w = dock(viewer, "Train")
    w.method_combo.setCurrentText("niiv")
    w.minutes_spin.setValue(3.0)
    w.eval_every = 25
    tmp = tempfile.mkdtemp(prefix="zup-shot-")
    w.path_edit.setText(str(Path(tmp) / "FIB-SEM_aniso_40nm-niiv.safetensors"))
    from napari_zup._qt._compare import set_orientation

    set_orientation(viewer, "xz")  # the anisotropic plane the model learns to restore
    viewer.dims.set_point(1, 10.0 * 96)
    viewer.reset_view()
    w.start()
    wait(lambda: w.steps and w.steps[-1] >= min_step and w.preview is not None, timeout=900)
    pump(0.8)
    shot(viewer, "train.png")
    w.stop()
    wait(lambda: not w.running)
    pump()
    viewer.close()


if __name__ == "__main__":
    train(*(int(a) for a in sys.argv[1:]))
