"""The universe benchmark end to end on a tiny synthetic mirror: the symbols come from the fake exchangeInfo
through the sensor, the real raw assets backfill from the archive-shaped mirror and the REST server, the daily
refresh fetches the new day, and every sampled partition's metadata equals what the lake holds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_universe_benchmark_runs_end_to_end_on_a_small_mirror(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-W", "ignore", str(ROOT / "benchmarks" / "bench_universe.py"), "--symbols", "2",
         "--years", "0.05", "--mirror", str(tmp_path / "mirror"), "--work", str(tmp_path / "work"),
         "--symbols-per-run", "1", "--refresh-symbols-per-run", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "adding 2 symbol(s)" in proc.stderr + out
    assert "per-partition metadata vs the lake" in out and "all equal" in out
    rows = [line for line in out.splitlines() if line.startswith("| 2 |")]
    backfill, refresh = rows[-2].split("|"), rows[-1].split("|")
    assert backfill[2].strip() == "backfill" and backfill[3].strip() == "2"  # one run per symbol
    assert refresh[2].strip() == "daily refresh" and refresh[3].strip() == "1"
    assert int(backfill[6].replace(",", "")) > 2 * 8000  # two symbols' month of 5-minute OI, klines, funding
    assert int(refresh[7].replace(",", "")) > 0  # the refresh fetched the new day
    assert "FAILED" not in out
