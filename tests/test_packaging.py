"""The package declares what its code uses, and uses what it declares."""
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "napari_zup"
#: distribution name -> import name, where they differ
IMPORT_NAME = {"opencv-python-headless": "cv2", "scikit-image": "skimage", "dask": "dask",
               "ome-zarr-models": "ome_zarr_models", "ome-zarr": "ome_zarr"}


def _requirements(extra=None):
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = meta["dependencies"] if extra is None else meta["optional-dependencies"][extra]
    return [re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0] for r in reqs]


def _imported_modules() -> set[str]:
    found = set()
    for f in SRC.rglob("*.py"):
        for m in re.finditer(r"^\s*(?:from|import)\s+([A-Za-z_][\w]*)", f.read_text(), re.M):
            found.add(m.group(1))
    return found


def test_every_runtime_dependency_is_imported_by_the_package():
    used = _imported_modules()
    for dist in _requirements() + _requirements("napari") + _requirements("distributed"):
        name = IMPORT_NAME.get(dist, dist.replace("-", "_"))
        assert name in used, f"{dist} is declared in pyproject.toml but never imported"


def test_no_qt_binding_is_forced_on_users():
    for extra in (None, "napari"):
        reqs = {r.lower() for r in _requirements(extra)}
        assert not reqs & {"pyqt5", "pyqt6", "pyside2", "pyside6"}, reqs


def test_zarr_3_api_is_declared():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    zarr_req = next(r for r in meta["dependencies"] if r.startswith("zarr"))
    assert ">=3" in zarr_req.replace(" ", "")
    assert meta["requires-python"].strip().startswith(">=3.11")
