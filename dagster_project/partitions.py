"""Raw assets are partitioned by symbol and UTC year: keys look like `BTCUSDT|2024`.

- Symbols are data, not code: a dynamic partition set (`symbols`) that the `symbol_universe` sensor fills
  from the configured universe (QML_SYMBOLS or Binance's USD-M perpetuals); adding a symbol adds its
  partitions, nothing else changes, and none is ever removed by the pipeline.
- Years, because Dagster's bookkeeping is paid per partition: every partition a run covers costs a planned
  event, a materialisation and a completeness check evaluation, each several catalog commits (measured in
  docs/scale.md: about 0.1-0.25 s per partition on SQLite, a few times the work of ingesting a month of one
  symbol's 5-minute open interest). Month partitions made that bookkeeping more than half of a universe
  backfill; years make it a small share. Inside a partition the work is still planned, fetched and measured
  month by month (`ingest.month_windows`): only months with missing stamps are fetched, from their first
  missing stamp, so the current year's partition is the live edge and the daily refresh fetches a day of
  data, not a year. The partition's metadata sums its months and lists each one.
- Partitions end where the configured source's data ends: the bundled sample's last year, or the current
  year for a live source, so a complete warehouse shows as complete. The first year starts at
  QML_START_DATE (months before it are not fetched).

The symbol dimension sorts first; a run covers a rectangle of symbols (consecutive in the `symbols`
partitions' order) x years, from `range_tags`: a backfill or the scheduled refresh is one run per
symbol-range.
"""

from collections.abc import Iterable, Sequence
from datetime import date, datetime, timedelta

import dagster as dg

from dagster_project.resources import DEFINITIONS_SETTINGS
from qml_pipeline.timeutil import UTC, month_starts

SYMBOLS = dg.DynamicPartitionsDefinition(name="symbols")
YEAR_FORMAT = "%Y"


def _source_end() -> datetime | None:
    """The end of the configured source's data (the sample's last row), None for a live source."""
    if DEFINITIONS_SETTINGS.source != "sample":
        return None
    from qml_pipeline.sources.sample import SampleSource

    try:
        return SampleSource(DEFINITIONS_SETTINGS.sample_dir).data_end()
    except (FileNotFoundError, ValueError):  # a bad QML_SAMPLE_DIR is reported when a run reads it
        return None


def years_definition() -> dg.TimeWindowPartitionsDefinition:
    """UTC years from QML_START_DATE's year to the source's last year (the current year when live)."""
    start = str(date.fromisoformat(DEFINITIONS_SETTINGS.start_date).year)
    end = _source_end()
    if end is None:
        return dg.TimeWindowPartitionsDefinition(cron_schedule="0 0 1 1 *", fmt=YEAR_FORMAT, start=start,
                                                 end_offset=1, timezone="UTC")
    last = (end - timedelta(milliseconds=1)).year
    return dg.TimeWindowPartitionsDefinition(cron_schedule="0 0 1 1 *", fmt=YEAR_FORMAT, start=start,
                                             end=str(last + 1), timezone="UTC")


YEARS = years_definition()
RAW_PARTITIONS = dg.MultiPartitionsDefinition({"symbol": SYMBOLS, "utc_year": YEARS})


def year_key(day: str | date) -> str:
    """The year partition holding `day` (ISO date)."""
    d = date.fromisoformat(day) if isinstance(day, str) else day
    return f"{d.year}"


def partition_months(year: str, start_date: str) -> list[datetime]:
    """The months of a year partition the pipeline fills: from `start_date` (ISO date; QML_START_DATE) on."""
    first = date.fromisoformat(start_date)
    lo = max(datetime(int(year), 1, 1, tzinfo=UTC), datetime(first.year, first.month, 1, tzinfo=UTC))
    return month_starts(lo, datetime(int(year) + 1, 1, 1, tzinfo=UTC))


def months_by_symbol(partition_keys: Iterable[str], start_date: str) -> dict[str, list[datetime]]:
    """`SYMBOL|YYYY` keys -> per symbol, the months of its years from `start_date` on (sorted)."""
    months: dict[str, set[datetime]] = {}
    for key in partition_keys:
        symbol, year = str(key).split("|")
        months.setdefault(symbol, set()).update(partition_months(year, start_date))
    return {s: sorted(m) for s, m in sorted(months.items())}


def partition_key(symbol: str, month: datetime) -> str:
    """The partition holding `symbol`'s `month`."""
    return f"{symbol}|{month.year}"


def new_symbols(instance: dg.DagsterInstance, symbols: Iterable[str]) -> list[str]:
    """`symbols` the dynamic `symbols` partitions do not hold yet, in the given order."""
    have = set(instance.get_dynamic_partitions(SYMBOLS.name))
    return [s for s in dict.fromkeys(symbols) if s not in have]


def sync_symbols(instance: dg.DagsterInstance, symbols: Iterable[str]) -> list[str]:
    """Add `symbols` to the dynamic `symbols` partitions (never removes: a delisted symbol keeps its history);
    returns the ones added."""
    new = new_symbols(instance, symbols)
    if new:
        instance.add_dynamic_partitions(SYMBOLS.name, new)
    return new


def range_tags(symbol: str, first_day: str, last_day: str, last_symbol: str | None = None) -> dict[str, str]:
    """Run tags that make one run cover `symbol` (through `last_symbol`, in the `symbols` partitions' order)
    over the years holding `first_day` .. `last_day`: a rectangle of symbol-years."""
    return {
        "dagster/asset_partition_range_start": f"{symbol}|{year_key(first_day)}",
        "dagster/asset_partition_range_end": f"{last_symbol or symbol}|{year_key(last_day)}",
    }


def symbol_chunks(symbols: Sequence[str], per_run: int) -> list[list[str]]:
    """`symbols` (in partition order) cut into consecutive runs of at most `per_run`."""
    symbols = list(symbols)
    return [symbols[i:i + per_run] for i in range(0, len(symbols), max(1, per_run))]


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
