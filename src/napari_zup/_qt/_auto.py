"""The Reconstruct widget's "auto" entry: its name and description in the method list, the
box that shows the choice's table, and the worker function that makes the choice
(:func:`napari_zup.selection.choose_method`)."""
from __future__ import annotations

from qtpy.QtWidgets import QPlainTextEdit

#: Method-list entry that self-evaluates the methods on a sample and runs the winner.
AUTO = "auto"
AUTO_DESCRIPTION = (
    "Self-evaluates every method on a small sample of this stack (a few sections and tiles: "
    "keep every second section, restore the others), shows the table, then reconstructs "
    "with the winner. A learned method is chosen only when it beats the best classical / "
    "optical-flow one in PSNR and SSIM.")


def choice_table() -> QPlainTextEdit:
    """The box for the choice's table, hidden until a choice is made: monospace, scrolls
    sideways instead of widening the dock."""
    table = QPlainTextEdit()
    table.setReadOnly(True)
    table.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
    table.setStyleSheet("font-family: monospace; font-size: 8pt")
    table.setMinimumWidth(10)
    table.setFixedHeight(14 * table.fontMetrics().height() + 12)
    table.setVisible(False)
    return table


def choose(volume, factor, candidates, params, cancel, on_progress):
    """Worker side of "auto": :func:`napari_zup.selection.choose_method` (its progress events
    to ``on_progress``); None when cancelled."""
    from ..engine import ReconstructionCancelled
    from ..selection import choose_method

    try:
        return choose_method(volume, factor, candidates=candidates, method_params=params,
                             cancel=cancel, on_progress=on_progress)
    except ReconstructionCancelled:
        return None
