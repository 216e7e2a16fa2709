"""Where the benchmarks find the real shared data: ../shared/data beside the checkout (read
only), else /work/shared/data (where the shared folder lives on these machines, e.g. for a
clone in another place)."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
if not DATA.is_dir():
    DATA = Path("/work/shared/data")
