"""Two writer processes and three readers on one lake, side by side on the SQLite and PostgreSQL catalogs.

    .venv/bin/python benchmarks/bench_lake_concurrency.py [--seconds 20]

Prints, per catalog: commits per writer, commit retries, loud failures, reads per reader and reader errors.
PostgreSQL comes from scripts/postgres.sh (Debian's package, started on a private port).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.lake_stress import run  # noqa: E402


def postgres_catalog() -> str:
    out = subprocess.run(["bash", str(ROOT / "scripts" / "postgres.sh"), "start"], check=True, capture_output=True,
                         text=True).stdout.strip().splitlines()[-1]
    import psycopg2

    name = f"qml_bench_{uuid.uuid4().hex[:8]}"
    con = psycopg2.connect(out)
    con.autocommit = True
    con.cursor().execute(f"CREATE DATABASE {name}")
    con.close()
    return "postgres:" + out.replace("dbname=qml", f"dbname={name}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    print(f"{'catalog':10} {'writer commits':>16} {'retries':>8} {'failures':>9} {'reads per reader':>22} "
          f"{'reader errors':>14}")
    for label, catalog in (("sqlite", ""), ("postgres", postgres_catalog())):
        with tempfile.TemporaryDirectory() as tmp:
            reports = run(Path(tmp), catalog, writers=2, readers=3, seconds=args.seconds)
        writers = [r for r in reports if r["role"] == "writer"]
        readers = [r for r in reports if r["role"] == "reader"]
        print(f"{label:10} {'/'.join(str(w['commits']) for w in writers):>16} "
              f"{sum(w['retries'] for w in writers):>8} {sum(w['failures'] for w in writers):>9} "
              f"{'/'.join(str(r['reads']) for r in readers):>22} {sum(r['errors'] for r in readers):>14}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
