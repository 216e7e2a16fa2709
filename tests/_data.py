"""Locations of the real shared data (../shared/data beside the checkout)."""
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SAMPLE1 = DATA / "fibsem_flyem_medulla_10nm_sample1_250.tif"
SAMPLE2 = DATA / "fibsem_flyem_medulla_10nm_sample2_250.tif"
ISBI = DATA / "sstem_isbi2012_train_4x4x50nm.tif"
VNC = DATA / "sstem_drosophila_vnc_stack1_4.6x4.6x50nm.tif"


def need(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"shared data missing: {path} (tests need ../shared/data beside the repo)")
    return path
