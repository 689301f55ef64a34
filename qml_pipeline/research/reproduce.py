"""Rebuild the phase 9 and 10 verdicts as of a warehouse snapshot, and set them beside the ones stored then.

    python -m qml_pipeline.research.reproduce --snapshot N [--warehouse DIR] [--timeout-as loss]

The trades and per-trade features are read as they were at snapshot N (DuckLake time travel, read-only), the
phases run again with the same code and settings, and each gate part is printed with the value stored at N.
Nothing is written to the warehouse (the review export goes to a temporary folder).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import polars as pl

from qml_pipeline.config import Settings
from qml_pipeline.research.phase9 import AnalysisConfig
from qml_pipeline.research.phases import Phase10Settings, gate_rows, run_phase9, run_phase10
from qml_pipeline.store import schemas
from qml_pipeline.store.warehouse import Warehouse


def reproduce(wh: Warehouse, snapshot: int, timeout_as: str = "loss") -> pl.DataFrame:
    """Per gate part: the value and verdict rebuilt from snapshot `snapshot`, and those stored at it."""
    past = wh.at_snapshot(snapshot)
    trades, features = past.read(schemas.TRADES), past.read(schemas.TRADE_CONTEXT_FEATURES)
    if trades.is_empty():
        raise ValueError(f"snapshot {snapshot} holds no trades: pick one written after the trades asset "
                         "(Warehouse.snapshots() lists them with their runs)")
    with tempfile.TemporaryDirectory() as tmp:
        p9 = run_phase9(trades, features, Path(tmp), AnalysisConfig(timeout_as=timeout_as))
        p10 = run_phase10(trades, features, None, Phase10Settings(timeout_as=timeout_as))
    rebuilt = pl.concat([gate_rows("phase9", p9.gate), gate_rows("phase10", p10.gate)])
    stored = past.read(schemas.RESEARCH_GATES).select(
        "gate", "part", pl.col("value").alias("stored_value"), pl.col("passed").alias("stored_passed"),
        pl.col("evaluated_at").alias("stored_evaluated_at"))
    return (rebuilt.select("gate", "part", "value", "passed", "gate_passed")
            .join(stored, on=["gate", "part"], how="full", coalesce=True)
            .with_columns(((pl.col("value") - pl.col("stored_value")).abs() <= 1e-9).alias("same_value"))
            .sort("gate", "part"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--snapshot", type=int, required=True, help="the warehouse snapshot id")
    parser.add_argument("--warehouse", default=None, help="warehouse folder (default: QML_WAREHOUSE_DIR)")
    parser.add_argument("--timeout-as", default="loss", help="timeout label policy used by that run")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    wh = Warehouse(args.warehouse or settings.warehouse_dir, catalog=settings.warehouse_catalog,
                   data_path=settings.warehouse_data_path)
    table = reproduce(wh, args.snapshot, args.timeout_as)
    with pl.Config(tbl_rows=100, tbl_width_chars=180, fmt_str_lengths=60):
        print(table)
    differing = table.filter(~pl.col("same_value").fill_null(False))
    print(f"\n{table.height - differing.height} of {table.height} gate parts reproduce the value stored at "
          f"snapshot {args.snapshot}" + (f"; differing: {', '.join(differing['part'].to_list())}" if differing.height
                                         else ""))
    return 0 if differing.is_empty() else 1


if __name__ == "__main__":
    sys.exit(main())
