"""Locations of the real shared data (../shared/data beside the checkout).

CI always has ../shared beside the checkout: there a missing file is a failure. On a bare
checkout (a contributor's clone without ../shared) the tests that need these stacks skip with
the reason, and the rest run on the bundled FlyEM crop (CC-BY, in the package).
"""
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SAMPLE1 = DATA / "fibsem_flyem_medulla_10nm_sample1_250.tif"
SAMPLE2 = DATA / "fibsem_flyem_medulla_10nm_sample2_250.tif"
ISBI = DATA / "sstem_isbi2012_train_4x4x50nm.tif"
VNC = DATA / "sstem_drosophila_vnc_stack1_4.6x4.6x50nm.tif"


def need(path: Path) -> Path:
    if path.exists():
        return path
    if not DATA.is_dir():
        pytest.skip(f"needs {path.name} from ../shared/data, which is not beside this checkout")
    pytest.fail(f"shared data missing: {path} (../shared/data exists but lacks it)")
