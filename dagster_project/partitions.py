"""Raw assets are partitioned by symbol and UTC month: keys look like `BTCUSDT|2024-01-01`.

- Symbols are data, not code: a dynamic partition set (`symbols`) that the pipeline fills from the
  configured universe (`sync_symbols`); adding a symbol adds its partitions, nothing else changes.
- Months keep Dagster's bookkeeping small (one materialisation per symbol and month, not per day); the
  current month is the live edge, refreshed incrementally (only stamps not yet stored are fetched).
- Partitions end where the configured source's data ends: the bundled sample's last month, or the current
  month for a live source, so a complete warehouse shows as complete.

The symbol dimension sorts first, so a key range `BTCUSDT|2024-01-01...BTCUSDT|2024-12-01` is one symbol's
months: a backfill or the scheduled refresh runs one run per symbol-range.
"""

from collections.abc import Iterable
from datetime import date, datetime, timedelta

import dagster as dg

from dagster_project.resources import SETTINGS

SYMBOLS = dg.DynamicPartitionsDefinition(name="symbols")


def _month_start(d: date) -> str:
    return f"{d:%Y-%m}-01"


def _source_end() -> datetime | None:
    """The end of the configured source's data (the sample's last row), None for a live source."""
    if SETTINGS.source != "sample":
        return None
    from qml_pipeline.sources.sample import SampleSource

    try:
        return SampleSource(SETTINGS.sample_dir).data_end()
    except (FileNotFoundError, ValueError):  # a bad QML_SAMPLE_DIR is reported when a run reads it
        return None


def months_definition() -> dg.MonthlyPartitionsDefinition:
    start = _month_start(date.fromisoformat(SETTINGS.start_date))
    end = _source_end()
    if end is None:
        return dg.MonthlyPartitionsDefinition(start_date=start, end_offset=1, timezone="UTC")
    last = (end - timedelta(milliseconds=1)).date()
    following = date(last.year + (last.month == 12), last.month % 12 + 1, 1)
    return dg.MonthlyPartitionsDefinition(start_date=start, end_date=following.isoformat(), timezone="UTC")


MONTHS = months_definition()
RAW_PARTITIONS = dg.MultiPartitionsDefinition({"symbol": SYMBOLS, "utc_month": MONTHS})


def sync_symbols(instance: dg.DagsterInstance, symbols: Iterable[str]) -> list[str]:
    """Add `symbols` to the dynamic `symbols` partitions (never removes: a delisted symbol keeps its history);
    returns the ones added."""
    have = set(instance.get_dynamic_partitions(SYMBOLS.name))
    new = [s for s in dict.fromkeys(symbols) if s not in have]
    if new:
        instance.add_dynamic_partitions(SYMBOLS.name, new)
    return new


def month_key(day: str | date) -> str:
    """The month partition holding `day` (ISO date)."""
    d = date.fromisoformat(day) if isinstance(day, str) else day
    return _month_start(d)


def range_tags(symbol: str, first_day: str, last_day: str) -> dict[str, str]:
    """Run tags that make one run cover `symbol` over the months holding `first_day` .. `last_day`."""
    return block_tags(symbol, symbol, first_day, last_day)


def block_tags(first_symbol: str, last_symbol: str, first_day: str, last_day: str) -> dict[str, str]:
    """Run tags that make one run cover every symbol from `first_symbol` to `last_symbol` (in the order of the
    dynamic `symbols` partitions) over the months holding `first_day` .. `last_day`: a range of a two-dimension
    partition set is the product of its dimensions' ranges."""
    return {
        "dagster/asset_partition_range_start": f"{first_symbol}|{month_key(first_day)}",
        "dagster/asset_partition_range_end": f"{last_symbol}|{month_key(last_day)}",
    }


def symbol_blocks(symbols: Iterable[str], known: list[str]) -> list[tuple[str, str]]:
    """`symbols` as the fewest (first, last) runs of consecutive keys of `known` (the dynamic partitions in
    their order), so block ranges cover exactly `symbols`; a symbol not in `known` raises ValueError."""
    wanted = set(symbols)
    if unknown := sorted(wanted - set(known)):
        raise ValueError(f"symbols {unknown} are not among the 'symbols' partitions: add them (sync_symbols)")
    blocks: list[tuple[str, str]] = []
    run: list[str] = []
    for key in [*known, None]:
        if key is not None and key in wanted:
            run.append(key)
        elif run:
            blocks.append((run[0], run[-1]))
            run = []
    return blocks
