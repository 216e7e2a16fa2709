"""`zup --help` and `zup methods` start without importing torch (issue #15: it took ~3 s)."""
import json
import subprocess
import sys

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
