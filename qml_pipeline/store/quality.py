"""Data-quality report of the raw tables: coverage, missing rows, duplicates, zero values, gaps and
freshness, one row per table, symbol and series (the kline interval; '' for funding and OI).

Expected cadence, per row, judged against the row before it in the same series:
- funding_rates: the row's `funding_interval_hours` (the interval in force for that settlement);
- open_interest: the modal spacing of the row's source for that symbol (the archive and REST serve
  5-minute rows; the bundled sample one row an hour), or its `period_minutes` when a source has a
  single row;
- klines: the interval (close_time - event_time).

A spacing of k steps means k - 1 missing rows. A gap is the time without rows between two rows
(spacing - step); gaps of at least `gap_threshold` are counted, and the longest is reported with
the stamp where it starts (the first missing stamp). Duplicates are rows beyond the first per key.

Across venues (`compare_venues`, the table venue_divergence): at every whole UTC hour h, each venue's open
interest (coins) is its newest row stamped at or before h, if at most `max_age_minutes` old; its change over
a window is (value at h / value at h - window - 1) * 100. Where two or more venues have a change for the
same hour and window, each is compared with the median of those changes (its own included) and flagged
when it differs by more than the window's threshold (percentage points). With three or more venues the
median is a well-behaved venue's change, so only the odd one is flagged; with two the median is their
mean, so both are flagged, each by half the gap: two venues cannot tell which one is wrong.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import duckdb
import polars as pl

from qml_pipeline.store import schemas
from qml_pipeline.formats import fmt_age
from qml_pipeline.markdown import cell, markdown_table
from qml_pipeline.store.schemas import DATA_QUALITY, VENUE_DIVERGENCE, VENUES
from qml_pipeline.timeutil import HOUR_MS, utc_now
from qml_pipeline.store.warehouse import frame

REPORT_SQL = """
WITH all_rows AS (
    SELECT 'funding_rates' AS table_name, venue, symbol, '' AS series, source, event_time, available_at,
           funding_interval_hours * 3600.0 AS fixed_step_s, NULL::DOUBLE AS period_s,
           NULL::BOOLEAN AS nonpos, NULL::BOOLEAN AS nonpos_value, revision
    FROM funding_rates
    UNION ALL
    SELECT 'open_interest', venue, symbol, '', source, event_time, available_at,
           NULL, period_minutes * 60.0, open_interest <= 0, open_interest_value <= 0, revision
    FROM open_interest
    UNION ALL
    SELECT 'klines', 'binance', symbol, "interval", source, event_time, available_at,
           epoch(close_time) - epoch(event_time), NULL, least(open, high, low, close) <= 0, volume <= 0, revision
    FROM klines
),
revised AS (
    SELECT table_name, venue, symbol, series, count(*) AS revised_rows
    FROM all_rows WHERE revision > 0 GROUP BY ALL
),
src AS (SELECT * EXCLUDE (revision) FROM all_rows WHERE revision = 0),
per_source AS (
    SELECT *, epoch(event_time) - epoch(lag(event_time) OVER (
               PARTITION BY table_name, venue, symbol, series, source ORDER BY event_time)) AS source_spacing_s
    FROM src
),
modal AS (
    SELECT table_name, venue, symbol, series, source,
           mode(source_spacing_s) FILTER (WHERE source_spacing_s > 0) AS modal_s
    FROM per_source GROUP BY ALL
),
stepped AS (
    SELECT s.*, coalesce(s.fixed_step_s, m.modal_s, s.period_s) AS step_s
    FROM src s JOIN modal m USING (table_name, venue, symbol, series, source)
),
pairs AS (
    SELECT *,
           lag(event_time) OVER w AS prev_time,
           epoch(event_time) - epoch(lag(event_time) OVER w) AS spacing_s
    FROM stepped
    WINDOW w AS (PARTITION BY table_name, venue, symbol, series ORDER BY event_time)
),
holes AS (
    SELECT *,
           CASE WHEN spacing_s > step_s THEN greatest(round(spacing_s / step_s) - 1, 0) ELSE 0 END AS missing,
           CASE WHEN spacing_s > step_s THEN spacing_s - step_s END AS hole_s,
           CASE WHEN spacing_s > step_s THEN prev_time + to_seconds(step_s) END AS hole_start
    FROM pairs
)
SELECT
    table_name, venue, symbol, series,
    string_agg(DISTINCT source, ',' ORDER BY source) AS sources,
    count(*) AS "rows",
    min(event_time) AS first_event_time,
    max(event_time) AS last_event_time,
    mode(step_s) / 60.0 AS expected_step_minutes,
    count(DISTINCT event_time) + sum(missing) AS expected_rows,
    sum(missing) AS missing_rows,
    count(DISTINCT event_time) / (count(DISTINCT event_time) + sum(missing)) AS completeness,
    count(*) - count(DISTINCT event_time) AS duplicate_rows,
    CASE WHEN table_name = 'funding_rates' THEN NULL ELSE count(*) FILTER (WHERE nonpos) END AS zero_rows,
    CASE WHEN table_name = 'funding_rates' THEN NULL ELSE count(*) FILTER (WHERE nonpos_value) END
        AS zero_value_rows,
    ? / 60.0 AS gap_threshold_minutes,
    count(*) FILTER (WHERE hole_s >= ?) AS gaps,
    max(hole_s) / 60.0 AS longest_gap_minutes,
    arg_max(hole_start, hole_s) AS longest_gap_start,
    max(available_at) AS last_available_at,
    (epoch(?::TIMESTAMPTZ) - epoch(max(available_at))) / 60.0 AS freshness_minutes,
    ?::TIMESTAMPTZ AS as_of,
    coalesce(any_value(r.revised_rows), 0) AS revised_rows
FROM holes LEFT JOIN revised r USING (table_name, venue, symbol, series)
GROUP BY table_name, venue, symbol, series
ORDER BY table_name, venue, symbol, series
"""


def data_quality_report(con: duckdb.DuckDBPyConnection, now: datetime | None = None,
                        gap_threshold: timedelta = timedelta(hours=1)) -> pl.DataFrame:
    """The DATA_QUALITY frame over the views funding_rates, open_interest and klines in `con`
    (e.g. `Warehouse.connect()`); `now` (default: the current time) is what freshness is measured from."""
    as_of = now or utc_now()
    threshold_s = gap_threshold.total_seconds()
    df = frame(con, REPORT_SQL, [threshold_s, threshold_s, as_of, as_of])
    if df.height == 0:
        return schemas.empty(DATA_QUALITY)
    return schemas.conform(DATA_QUALITY, df)


def data_quality_markdown(df: pl.DataFrame) -> str:
    """A markdown table of a data_quality_report frame, for Dagster metadata and reports."""
    if df.height == 0:
        return "_no rows in funding_rates, open_interest or klines_"
    header = ["table", "venue", "symbol", "series", "sources", "rows", "first", "last", "step", "missing",
              "complete", "duplicates", "revisions", "zero OI/price", "zero value/volume", "gaps", "longest gap",
              "longest gap starts", "fresh (age)"]
    shown = df.select(
        "table_name", "venue", "symbol", "series", "sources", "rows", "first_event_time", "last_event_time",
        pl.col("expected_step_minutes").map_elements(fmt_age, return_dtype=pl.Utf8),
        "missing_rows", (pl.col("completeness") * 100).round(2).cast(pl.Utf8) + "%",
        "duplicate_rows", "revised_rows", "zero_rows", "zero_value_rows", "gaps",
        pl.col("longest_gap_minutes").map_elements(fmt_age, return_dtype=pl.Utf8),
        "longest_gap_start", pl.col("freshness_minutes").map_elements(fmt_age, return_dtype=pl.Utf8))
    threshold = fmt_age(df["gap_threshold_minutes"][0])
    return (markdown_table(shown, max_rows=1000, header=header)
            + f"\n\ngaps: times without rows of at least {threshold}; missing: absent stamps on each "
              f"series' expected grid; freshness measured at {cell(df['as_of'][0])} UTC.")


# ---------------------------------------------------------------- across venues



@dataclass(frozen=True)
class DivergenceConfig:
    """When one venue's open-interest change is out of line with the other venues'."""

    # (window in HOURS, threshold in PERCENTAGE POINTS of |change - median of the venues' changes|)
    window_thresholds: tuple[tuple[int, float], ...] = ((1, 3.0), (24, 10.0))
    # a venue's value at an hour is its newest row stamped at most this many MINUTES before it
    max_age_minutes: float = 120.0

    def __post_init__(self) -> None:
        if not self.window_thresholds or any(h <= 0 or p <= 0 for h, p in self.window_thresholds):
            raise ValueError(f"DivergenceConfig.window_thresholds {self.window_thresholds}: expected (hours > 0, "
                             "points > 0) pairs")


def compare_venues_sql(venues: Sequence[str], config: DivergenceConfig) -> str:
    unknown = sorted(set(venues) - set(VENUES))
    if unknown:
        raise ValueError(f"venues {unknown}: expected some of {VENUES}")
    names = ", ".join(f"('{v}')" for v in sorted(set(venues)))
    windows = ", ".join(f"({int(h)}, {float(p)})" for h, p in config.window_thresholds)
    return f"""
WITH
v(venue) AS (VALUES {names}),
w(window_hours, threshold) AS (VALUES {windows}),
oi AS (
    SELECT venue, symbol, epoch_ms(event_time) AS ev, open_interest AS coins
    FROM open_interest WHERE revision = 0 AND open_interest > 0 AND venue IN (SELECT venue FROM v)
),
hours AS (
    SELECT symbol, unnest(range((min(ev) + {HOUR_MS - 1}) // {HOUR_MS} * {HOUR_MS}, max(ev) + 1, {HOUR_MS})) AS h
    FROM oi GROUP BY symbol
),
value_at AS MATERIALIZED (
    SELECT p.symbol, p.h, p.venue, CASE WHEN p.h - o.ev <= {config.max_age_minutes * 60_000} THEN o.coins END AS coins
    FROM (SELECT * FROM hours CROSS JOIN v) p
    ASOF LEFT JOIN oi o ON o.venue = p.venue AND o.symbol = p.symbol AND o.ev <= p.h
),
changes AS (
    SELECT cur.symbol, cur.h, cur.venue, cur.window_hours, cur.threshold, cur.coins,
           (cur.coins / ago.coins - 1) * 100 AS change_pct
    FROM (SELECT *, h - window_hours * {HOUR_MS} AS ago_h FROM value_at CROSS JOIN w WHERE coins IS NOT NULL) cur
    JOIN value_at ago ON ago.symbol = cur.symbol AND ago.venue = cur.venue AND ago.h = cur.ago_h
    WHERE ago.coins IS NOT NULL
),
per_hour AS (
    SELECT symbol, h, window_hours, median(change_pct) AS median_pct, list(venue) AS venues
    FROM changes GROUP BY symbol, h, window_hours HAVING count(*) >= 2
)
SELECT c.venue, c.symbol, make_timestamptz(c.h * 1000) AS event_time, c.window_hours, c.change_pct,
       p.median_pct, c.change_pct - p.median_pct AS deviation_points, c.threshold AS threshold_points,
       array_to_string(list_sort(list_filter(p.venues, lambda x: x <> c.venue)), ',') AS other_venues,
       c.coins AS open_interest
FROM changes c JOIN per_hour p USING (symbol, h, window_hours)
ORDER BY c.symbol, c.h, c.window_hours, c.venue
"""


def compare_venues(con: duckdb.DuckDBPyConnection, venues: Sequence[str] = VENUES,
                   config: DivergenceConfig = DivergenceConfig()) -> pl.DataFrame:
    """Every (venue, symbol, hour, window) whose change could be compared with another venue's, in the
    VENUE_DIVERGENCE shape, over the `open_interest` table of `con` (all venues visible)."""
    con.execute("SET asof_loop_join_threshold = 0")  # else a nested loop over the hours (features/aggregate.py)
    df = frame(con, compare_venues_sql(venues, config))
    return schemas.conform(VENUE_DIVERGENCE, df) if df.height else schemas.empty(VENUE_DIVERGENCE)


def divergent(compared: pl.DataFrame) -> pl.DataFrame:
    """The comparisons beyond their window's threshold: the venue_divergence table."""
    return compared.filter(pl.col("deviation_points").abs() > pl.col("threshold_points"))


@dataclass(frozen=True)
class SeriesRules:
    """When one symbol's raw series (its data_quality rows) is acceptable."""

    min_completeness: float = 0.99               # share of the expected grid stamps stored
    max_age: timedelta = timedelta(hours=26)     # live sources: the daily refresh runs once a day, plus a margin


def series_problems(rows: pl.DataFrame, live: bool, rules: SeriesRules = SeriesRules()) -> list[str]:
    """What is wrong with one series' data_quality `rows` (empty when nothing): completeness below the rule,
    duplicates, and for a live source a newest row older than `rules.max_age`."""
    worst = rows.sort("completeness").row(0, named=True)
    problems = []
    if worst["completeness"] < rules.min_completeness:
        problems.append(f"{worst['series'] or worst['table_name']} only {worst['completeness']:.2%} complete")
    if duplicates := int(rows["duplicate_rows"].sum()):
        problems.append(f"{duplicates} duplicate rows")
    age = timedelta(minutes=float(rows["freshness_minutes"].max()))
    if live and age > rules.max_age:
        problems.append(f"stale: newest row is {age} old")
    return problems
