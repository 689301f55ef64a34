"""The main job on the bundled sample: build a fresh warehouse offline and print what was built.

    python -m dagster_project.demo [--first-day 2021-12-01] [--last-day 2024-12-05] [--keep]

Runs are recorded in DAGSTER_HOME (default: .dagster_home in the project), so `dagster dev` shows
them afterwards.
"""

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from qml_pipeline.config import PROJECT_ROOT

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--first-day", default=None, help="first UTC day (default: QML_START_DATE)")
    parser.add_argument("--last-day", default="2024-12-05", help="last UTC day (default: the sample's end)")
    parser.add_argument("--keep", action="store_true", help="keep the existing warehouse instead of a fresh one")
    parser.add_argument("--respect-gates", action="store_true",
                        help="stop at a failed research gate instead of overriding it (the default in the demo)")
    args = parser.parse_args(argv)

    os.environ.setdefault("DAGSTER_HOME", str(PROJECT_ROOT / ".dagster_home"))
    home = Path(os.environ["DAGSTER_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():  # the project's instance settings (pools, run monitoring)
        shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")

    import dagster as dg

    from dagster_project.definitions import RESEARCH_ASSETS, RESEARCH_CHECKS
    from dagster_project.defs.view import research_report
    from dagster_project.defs.raw_market_data import RAW_ASSETS, RAW_CHECKS
    from dagster_project.partitions import range_tags, sync_symbols
    from dagster_project.resources import DEFINITIONS_SETTINGS as SETTINGS, ResearchResource, default_resources
    from qml_pipeline.sources.sample import SampleSource
    from qml_pipeline.store.warehouse import restore_aside, set_aside

    if SETTINGS.source != "sample":
        print(f"QML_SOURCE={SETTINGS.source}: the demo runs on the bundled sample only; unset QML_SOURCE.")
        return 2
    if SETTINGS.venues != ("binance",):
        print(f"QML_VENUES={','.join(SETTINGS.venues)}: the bundled sample is Binance only (no other venue's public "
              "history can be bundled, and the demo invents none); unset QML_VENUES.")
        return 2
    first_day = args.first_day or SETTINGS.start_date
    try:  # every input is read and checked before any warehouse is touched
        SampleSource(SETTINGS.sample_dir).check_inputs(SETTINGS.symbols, SETTINGS.kline_intervals)
    except (OSError, ValueError) as exc:
        print(f"the bundled sample cannot be read, so the warehouse was left as it is:\n{exc}", file=sys.stderr)
        return 2
    resources = default_resources(SETTINGS)
    wh = resources["warehouse"].get()
    previous = None
    if not args.keep:
        if not wh.location.is_sqlite or SETTINGS.warehouse_data_path:
            print("a fresh demo warehouse needs the default layout (SQLite catalog and data in QML_WAREHOUSE_DIR); "
                  "run with --keep to add to the configured one", file=sys.stderr)
            return 2
        previous = set_aside(wh.root)
        print(f"fresh warehouse at {wh.root}" + (f" (the previous one is kept in {previous} until this run "
                                                 "succeeds)" if previous else ""))

    instance = dg.DagsterInstance.get()
    sync_symbols(instance, SETTINGS.symbols)
    checks: list[tuple[str, str, bool, str]] = []
    started = time.monotonic()
    for symbol in SETTINGS.symbols:
        t0 = time.monotonic()
        result = dg.materialize([*RAW_ASSETS, *RAW_CHECKS], instance=instance, resources=resources,
                                tags=range_tags(symbol, first_day, args.last_day), raise_on_error=False,
                                run_config=QUIET)
        checks += [(e.asset_key.to_user_string(), f"{e.check_name} ({symbol})", e.passed, e.description or "")
                   for e in result.get_asset_check_evaluations() if e.partition is None]
        print(f"raw market data {symbol} {first_day}..{args.last_day}: "
              f"{'ok' if result.success else 'FAILED'} in {time.monotonic() - t0:.1f}s")
        if not result.success:
            return _fail(result, wh.root, previous)
    if not args.respect_gates:
        print("note: the demo runs every phase with QML_OVERRIDE_GATES=1 so each asset is built; where a gate "
              "fails (see the checks below), results past it are not evidence. --respect-gates stops there.")
        resources["research"] = ResearchResource(override_gates=True)
    # the report last: it depends on phase 9 only (a closed gate does not stop it) and shows what the warehouse
    # holds, so it runs once this build's pattern cards are stored
    first = [a for a in RESEARCH_ASSETS if a is not research_report]
    runs = (("research assets", dg.AssetSelection.assets(*first) | dg.AssetSelection.checks(*RESEARCH_CHECKS)),
            ("report", dg.AssetSelection.assets(research_report)))
    for label, selection in runs:
        t0 = time.monotonic()
        result = dg.materialize([*RAW_ASSETS, *RESEARCH_ASSETS, *RESEARCH_CHECKS], instance=instance,
                                resources=resources, raise_on_error=False, run_config=QUIET, selection=selection)
        checks += [(e.asset_key.to_user_string(), e.check_name, e.passed, (e.description or "")[:80])
                   for e in result.get_asset_check_evaluations() if e.partition is None]
        print(f"{label}: {'ok' if result.success else 'FAILED'} in {time.monotonic() - t0:.1f}s")
        if not result.success:
            return _fail(result, wh.root, previous)

    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)
    _print_summary(wh, checks, SETTINGS.symbols)
    print(f"\ndone in {time.monotonic() - started:.1f}s. Query it (read-only, never blocks the pipeline): "
          "bash scripts/sql.sh")
    return 0


def _fail(result, root: Path, previous: Path | None) -> int:
    from qml_pipeline.store.warehouse import restore_aside

    for event in result.all_events:
        if event.is_failure:
            print(event.message, file=sys.stderr)
    if previous is not None:
        failed = restore_aside(root, previous)
        print(f"the previous warehouse was put back; this run's partial one is in {failed}", file=sys.stderr)
    return 1


def _print_summary(wh, checks, symbols) -> None:
    import polars as pl

    from dagster_project.resources import DEFINITIONS_SETTINGS as SETTINGS
    from qml_pipeline.store import schemas
    from qml_pipeline.sources.sample import SampleSource

    with pl.Config(tbl_rows=100, tbl_hide_dataframe_shape=True, tbl_width_chars=160):
        print(f"\ntables ({wh.location.describe()}; snapshot {wh.current_snapshot()})")
        print(wh.summary())
        print("\nasset checks")
        print(pl.DataFrame(checks, schema=["asset", "check", "passed", "says"], orient="row"))
    gates = wh.read(schemas.RESEARCH_GATES)
    if gates.height:
        print("\nresearch gates (the seed's decision checklist)")
        for row in gates.iter_rows(named=True):
            print(f"  {row['gate']:8} {'PASS' if row['passed'] else 'FAIL'}  {row['message']}")
    report = wh.root / "reports" / "report.html"
    if report.exists():
        print(f"\nreport (open in a browser, works offline): {report}")
    missing_oi = SampleSource(SETTINGS.sample_dir).symbols_without_open_interest(list(symbols))
    if missing_oi:
        print(f"\nnote: the bundled sample has no real open interest for {', '.join(missing_oi)}; "
              "their OI-based features stay NULL (nothing is invented).")


if __name__ == "__main__":
    sys.exit(main())
