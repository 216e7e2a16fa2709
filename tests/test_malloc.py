"""The `zup` command keeps freed memory for reuse (napari_zup._malloc); Python callers of
cli.main() and napari's process keep glibc's defaults. Page faults, not timings, are checked:
the speed it buys is measured in benchmarks/bench_malloc.py."""
import json
import subprocess
import sys
from importlib.metadata import entry_points

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")

FAULTS = r"""
import ctypes, json, resource, sys
how = sys.argv[1]
if how == "zup":
    from napari_zup._malloc import keep_freed_memory
    assert keep_freed_memory()
elif how == "main":  # a Python caller of the CLI: the allocator is left alone
    from napari_zup import cli, _malloc
    assert cli.main(["methods"]) == 0
    assert not _malloc._applied
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]

def block():  # 64 MB, beyond glibc's largest mmap threshold: allocated, written, freed
    p = libc.malloc(64 << 20)
    ctypes.memset(p, 1, 64 << 20)
    libc.free(p)

block()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    block()
print(json.dumps({"faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _faults(how):
    out = subprocess.run([sys.executable, "-c", FAULTS, how], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])["faults"]


def test_kept_memory_is_reused_without_page_faults():
    """Five 64 MB blocks one after the other: with glibc's defaults each one is a fresh mmap,
    faulted in page by page (16 k faults each); kept memory is reused (next to none)."""
    pages = (64 << 20) // 4096
    default, main, zup = _faults("default"), _faults("main"), _faults("zup")
    assert default >= 4 * pages and main >= 4 * pages, (default, main)
    assert zup < pages // 4, zup


def test_the_zup_command_is_the_console_main():
    (ep,) = [e for e in entry_points(group="console_scripts") if e.name == "zup"]
    assert ep.value == "napari_zup.cli:console_main"
