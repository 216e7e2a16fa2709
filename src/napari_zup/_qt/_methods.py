"""Method picker of the Compare and Evaluate widgets: one check box per registered method
(``methods.method_infos()``, learned ones included) and, for each learned method, its
checkpoint (the bundled one or a file) with the factor range it was trained for."""
from __future__ import annotations

from pathlib import Path

from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QGridLayout,
    QGroupBox,
    QLabel,
)

from ..checkpoints import CheckpointError, default_checkpoint, factor_warning, peek_metadata
from ..methods import method_infos

BUNDLED = "bundled"
CHOOSE_FILE = "choose a file…"


def checkpoint_summary(method: str, path=None, short: bool = False) -> str:
    """One line on a checkpoint: trained factor range and what it was trained or adapted on
    (``short``: the factor range, and "adapted" when it was adapted to a stack)."""
    path = path or default_checkpoint(method)
    if path is None:
        return "no bundled checkpoint: choose a file (zup train)"
    try:
        meta = peek_metadata(path)  # header only: no torch import in the GUI thread
    except (CheckpointError, OSError) as exc:
        return f"unreadable checkpoint: {exc}"
    parts = []
    rng = meta.get("factor_range")
    if rng and len(rng) == 2:
        lo, hi = float(rng[0]), float(rng[1])
        parts.append(f"trained ×{lo:g}" if lo == hi else f"trained ×{lo:g}–×{hi:g}")
    adapted = meta.get("adapted_on")
    if adapted and short:
        parts.append("adapted")
    elif adapted:
        where = adapted.get("file", "a stack") if isinstance(adapted, dict) else adapted
        parts.append(f"adapted on {where}")
    elif not short:
        data = (meta.get("training") or {}).get("data") if isinstance(
            meta.get("training"), dict) else None
        if data:
            first = data[0] if isinstance(data, (list, tuple)) and data else data
            parts.append(f"on {str(first).split(' ')[0]}")
    return ", ".join(parts) or "no training metadata"


class MethodPicker(QGroupBox):
    """Check boxes for every registered method; learned methods get a checkpoint choice."""

    def __init__(self, title="Methods", checked=("linear", "cubic", "of-linear"),
                 parent=None):
        super().__init__(title, parent)
        lay = QGridLayout(self)
        lay.setContentsMargins(6, 4, 6, 4)
        self.boxes: dict[str, QCheckBox] = {}
        self.checkpoint_combos: dict[str, QComboBox] = {}
        self.checkpoint_labels: dict[str, QLabel] = {}
        self._files: dict[str, str] = {}
        infos = method_infos()
        plain = [i for i in infos if not i.needs_checkpoint]
        learned = [i for i in infos if i.needs_checkpoint]
        for n, info in enumerate(plain):
            box = self._box(info, checked)
            lay.addWidget(box, n // 3, n % 3)
        row = (len(plain) + 2) // 3
        for info in learned:
            box = self._box(info, checked)
            combo = QComboBox()
            combo.setToolTip(f"weights of {info.name}: the checkpoint shipped with napari-zup "
                             "or a file of yours (zup train)")
            label = QLabel()
            label.setStyleSheet("color: #a0a0a0")
            self.checkpoint_combos[info.name] = combo
            self.checkpoint_labels[info.name] = label
            self._fill(info.name)
            combo.activated.connect(lambda i, m=info.name: self._chosen(m, i))
            lay.addWidget(box, row, 0)
            lay.addWidget(combo, row, 1)
            lay.addWidget(label, row, 2)
            row += 1

    def _box(self, info, checked):
        box = QCheckBox(info.name)
        box.setToolTip(info.description)
        box.setChecked(info.name in checked)
        self.boxes[info.name] = box
        return box

    def _fill(self, method: str) -> None:
        combo = self.checkpoint_combos[method]
        combo.blockSignals(True)
        combo.clear()
        if default_checkpoint(method) is not None:
            combo.addItem(BUNDLED)
        if method in self._files:
            combo.addItem(Path(self._files[method]).name, self._files[method])
        combo.addItem(CHOOSE_FILE)
        if method in self._files:
            combo.setCurrentIndex(combo.count() - 2)
        combo.blockSignals(False)
        self._describe(method)

    def _chosen(self, method: str, index: int) -> None:
        text = self.checkpoint_combos[method].itemText(index)
        if text != CHOOSE_FILE:
            self._describe(method)
            return
        path, _ = QFileDialog.getOpenFileName(self, f"{method} checkpoint", "",
                                              "Checkpoints (*.safetensors *.pt)")
        if path:
            self.set_checkpoint(method, path)
        else:
            self._fill(method)

    def _describe(self, method: str) -> None:
        path = self.checkpoint(method) if self.checkpoint_combos[method].count() else None
        label = self.checkpoint_labels[method]
        label.setText(checkpoint_summary(method, path, short=True))
        label.setToolTip(checkpoint_summary(method, path))

    def set_checkpoint(self, method: str, path) -> None:
        """Use the checkpoint file ``path`` for ``method`` (None: the bundled one)."""
        if path is None:
            self._files.pop(method, None)
        else:
            self._files[method] = str(path)
        self._fill(method)
        if path is None and self.checkpoint_combos[method].count():
            self.checkpoint_combos[method].setCurrentIndex(0)

    def checkpoint(self, method: str) -> str | None:
        """The file chosen for ``method``, or None for the bundled checkpoint."""
        combo = self.checkpoint_combos.get(method)
        if combo is None or combo.currentText() == BUNDLED:
            return None
        return combo.currentData()

    def selected(self) -> list[str]:
        return [n for n, b in self.boxes.items() if b.isChecked()]

    def set_selected(self, names) -> None:
        for n, b in self.boxes.items():
            b.setChecked(n in names)

    def params(self, method: str) -> dict | None:
        """``method_params`` for ``method``: the chosen checkpoint file, if any.

        Raises ValueError (with what to do) when a learned method has no usable checkpoint.
        """
        if method not in self.checkpoint_combos:
            return None
        combo = self.checkpoint_combos[method]
        if combo.currentText() == CHOOSE_FILE:
            raise ValueError(f"{method} needs a checkpoint: choose a file next to it or "
                             "uncheck it")
        path = self.checkpoint(method)
        if path is None:
            return None
        if not Path(path).is_file():
            raise ValueError(f"{method}: checkpoint {path!r} does not exist; choose another")
        return {"checkpoint": path}

    def label(self, method: str) -> str:
        """Name of ``method`` in layer names: with the checkpoint file when not bundled."""
        path = self.checkpoint(method)
        return f"{method} [{Path(path).stem}]" if path else method

    def factor_notes(self, methods, factor) -> list[str]:
        """Warnings for the checked learned methods used outside their trained factors."""
        notes = []
        for m in methods:
            if m in self.checkpoint_combos:
                note = factor_warning(m, factor, self.checkpoint(m))
                if note:
                    notes.append(note)
        return notes
