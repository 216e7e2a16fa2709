"""`zup --help` and `zup methods` start without importing torch (issue #15: it took ~3 s)."""
import json
import subprocess
import sys

import pytest

CHECK = """
import sys, json, io, contextlib
from napari_zup.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    try:
        rc = main({argv!r})
    except SystemExit as e:
        rc = e.code
print(json.dumps({{"rc": rc, "torch": "torch" in sys.modules}}))
"""


def _run(argv):
    out = subprocess.run([sys.executable, "-c", CHECK.format(argv=argv)], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_help_and_methods_do_not_import_torch():
    for argv in (["--help"], ["methods"], ["reconstruct", "--help"], ["evaluate", "--help"]):
        res = _run(argv)
        assert res["rc"] == 0, argv
        assert not res["torch"], f"zup {' '.join(argv)} imported torch"


def test_guessed_devices_match_torch():
    code = ("import json; from napari_zup.devices import likely_devices, available_devices;"
            "g = likely_devices(); print(json.dumps([g, available_devices()]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    guessed, probed = json.loads(out.strip().splitlines()[-1])
    assert guessed == probed


TORCH_LIBS = r"""
import json, sys
from napari_zup.devices import load_torch_libraries

def mapped():
    return open("/proc/self/maps").read().count("libtorch_cpu")

before = mapped()
first = load_torch_libraries()
after, imported = mapped(), "torch" in sys.modules
from napari_zup.methods import create_method
m = create_method("film")  # a learned method: imports torch, which finds the libraries loaded
import torch
print(json.dumps({"before": before, "first": first, "after": after, "imported": imported,
                  "again": load_torch_libraries(), "sum": float(torch.ones(3).sum()),
                  "method": type(m).__name__}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_torch_libraries_load_ahead_of_torch_and_torch_then_works():
    """load_torch_libraries() maps libtorch_cpu without importing torch; torch and a learned
    method then work as usual (the stall it removes is measured in benchmarks/)."""
    out = subprocess.run([sys.executable, "-c", TORCH_LIBS], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["before"] == 0 and r["first"] is True and r["after"] > 0
    assert r["imported"] is False and r["again"] is True
    assert r["sum"] == 3.0 and r["method"] == "Film"
