"""Open interest and funding across venues, point in time, in DuckDB SQL (definitions: docs/venues.md).

`open_interest_aggregate` (a derived table, `build_open_interest_aggregate`): per symbol, at every
5-minute instant t from the first moment any configured venue's row was known until the build's time
(`until`, the moment it is built) or until every venue's last row has gone stale, if earlier; each
venue's newest row known at t: among its rows with `available_at <= t` (revision 0, `open_interest` and
`open_interest_value` > 0), the one with the latest `event_time`. It counts while fresh (t - event_time
within the open-interest staleness limit of `FeatureConfig`, the Binance features' rule); a venue without
a fresh row is listed in `venues_missing`, its columns NULL, never a zero in the sum. Every value at t
uses rows available by t only, so appending rows that become available after t never changes the row
at t; and no row lies after the build's time, so none is ever computed before its instant.

Features (`aggregate_features`), per probe (a trade at its decision_time, or a card at its as_of), from
the aggregate row at the probe's 5-minute instant (t floored to the grid) and the funding rows:
- oi_agg_change_24h / _7d: percent change of `oi_usd_total` against the row at t - 24h / t - 7d, only
  when the same venues (two or more) are present at both instants: a venue joining or leaving is not a
  change in open interest;
- oi_agg_percentile_30d: among the hourly rows in (t - 30d, t] with the same venues, the share whose total
  is <= the total at t (percent), with at least `oi_percentile_min_points` rows;
- oi_binance_share: Binance's USD share at t;
- funding_spread_8h: Binance's last settled rate known at t scaled to 8h minus the mean of the other
  venues' (each scaled to 8h; each stale after `funding_stale_factor` intervals).
Every one is NULL unless another venue beside Binance (two venues for the OI features) is known at t.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import duckdb
import polars as pl

from qml_pipeline.features.point_in_time import FeatureConfig
from qml_pipeline.store import schemas
from qml_pipeline.store.schemas import OPEN_INTEREST_AGGREGATE, VENUES
from qml_pipeline.timeutil import DAY_MS, HOUR_MS, to_ms

STEP_MS = 5 * 60_000
MAX_MS = 9223372036854775807
AGGREGATE_FEATURES = ("oi_agg_change_24h", "oi_agg_change_7d", "oi_agg_percentile_30d", "oi_binance_share",
                      "oi_agg_venues", "funding_spread_8h", "funding_spread_venues")


def _run(con: duckdb.DuckDBPyConnection, sql: str) -> pl.DataFrame:
    # DuckDB plans an ASOF JOIN whose left side it expects to be small (an unnested range) as a nested loop:
    # minutes instead of a second on years of 5-minute instants. Warehouse connections set this already.
    con.execute("SET asof_loop_join_threshold = 0")
    return con.sql(sql).pl()


def _venue_values(venues: Sequence[str]) -> str:
    unknown = sorted(set(venues) - set(VENUES))
    if unknown or not venues:
        raise ValueError(f"venues {list(venues)}: expected one or more of {VENUES}")
    return ", ".join(f"('{v}')" for v in sorted(set(venues)))


def _newest_known(rows_sql: str) -> str:
    """The rows (columns venue, symbol, ev, av in epoch ms) that are at some instant their venue's newest
    known one: published before every later-stamped row of the same venue and symbol. After this, `av`
    rises with `ev`, so an ASOF join on `av <= t` finds the latest stamp known at t."""
    return f"""SELECT * FROM ({rows_sql})
    QUALIFY av < coalesce(min(av) OVER (PARTITION BY venue, symbol ORDER BY ev
                                        ROWS BETWEEN 1 FOLLOWING AND UNBOUNDED FOLLOWING), {MAX_MS})"""


def aggregate_sql(venues: Sequence[str] = VENUES, config: FeatureConfig = FeatureConfig(),
                  until: datetime | None = None) -> str:
    """The SELECT behind open_interest_aggregate, over the `open_interest` table of a connection: one ASOF
    join per configured venue (a venue not configured has NULL columns); no instant after `until`."""
    until_ms = MAX_MS if until is None else to_ms(until)
    configured = sorted(set(venues))
    joins = "\n".join(f"ASOF LEFT JOIN (SELECT * FROM known WHERE venue = '{v}') {v} "
                       f"ON {v}.symbol = i.symbol AND {v}.av <= i.t" for v in configured)
    fresh = {v: f"coalesce(i.t - {v}.ev <= {v}.limit_ms, false)" for v in configured}
    per_venue = ",\n".join(
        f"CASE WHEN {fresh[v]} THEN {v}.usd END AS {v}_oi_usd, CASE WHEN {fresh[v]} THEN {v}.coins END AS {v}_coins, "
        f"CASE WHEN {fresh[v]} THEN {v}.ev END AS {v}_ev" if v in fresh else
        f"NULL::DOUBLE AS {v}_oi_usd, NULL::DOUBLE AS {v}_coins, NULL::BIGINT AS {v}_ev" for v in VENUES)
    present = [f"CASE WHEN {v}_ev IS NOT NULL THEN '{v}' END" for v in configured]
    missing = [f"CASE WHEN {v}_ev IS NULL THEN '{v}' END" for v in configured]
    count = " + ".join(f"({v}_ev IS NOT NULL)::INTEGER" for v in configured)
    usd = ", ".join(f"{v}_oi_usd" for v in configured)
    coins = ", ".join(f"{v}_coins" for v in configured)
    per_venue_out = ",\n".join(
        f"{v}_oi_usd, {v}_oi_usd / list_sum([{usd}]) AS {v}_share, make_timestamptz({v}_ev * 1000) AS {v}_event_time"
        for v in VENUES)
    return f"""
WITH
v(venue) AS (VALUES {_venue_values(venues)}),
known AS ({_newest_known(f'''
    SELECT venue, symbol, epoch_ms(event_time) AS ev, epoch_ms(available_at) AS av,
           open_interest AS coins, open_interest_value AS usd,
           CAST(greatest({config.oi_stale_periods} * period_minutes, {config.oi_stale_min_minutes}) * 60000 AS BIGINT)
               AS limit_ms
    FROM open_interest
    WHERE revision = 0 AND open_interest > 0 AND open_interest_value > 0 AND venue IN (SELECT venue FROM v)''')}),
instants AS (
    -- from the first row known to the build's time, or to when the last row goes stale
    SELECT symbol, unnest(range((min(av) + {STEP_MS - 1}) // {STEP_MS} * {STEP_MS},
                                least(max(ev + limit_ms), {until_ms}) // {STEP_MS} * {STEP_MS} + 1, {STEP_MS})) AS t
    FROM known GROUP BY symbol
),
at_instants AS (
    SELECT i.symbol, i.t,
           {per_venue}
    FROM instants i
    {joins}
)
SELECT symbol, make_timestamptz(t * 1000) AS event_time, make_timestamptz(t * 1000) AS available_at,
       {count} AS venue_count,
       concat_ws(',', {', '.join(present)}) AS venues_present,
       concat_ws(',', {', '.join(missing)}) AS venues_missing,
       list_sum([{usd}])::DOUBLE AS oi_usd_total,
       list_sum([{coins}])::DOUBLE AS oi_coins_total,
       {per_venue_out}
FROM at_instants ORDER BY symbol, t
"""


def build_open_interest_aggregate(con: duckdb.DuckDBPyConnection, venues: Sequence[str] = VENUES,
                                  config: FeatureConfig = FeatureConfig(), until: datetime | None = None) -> pl.DataFrame:
    """The OPEN_INTEREST_AGGREGATE rows from the `open_interest` table of `con` (every venue's rows visible:
    `Warehouse.connect()` without a venue), up to `until` (the pipeline passes the time of the build)."""
    df = _run(con, aggregate_sql(venues, config, until))
    return schemas.conform(OPEN_INTEREST_AGGREGATE, df) if df.height else schemas.empty(OPEN_INTEREST_AGGREGATE)


def aggregate_features_sql(venues: Sequence[str] = VENUES, config: FeatureConfig = FeatureConfig(),
                           probes: str = "trades") -> str:
    """The SELECT behind `aggregate_features`: one row per probe (columns trade_id, symbol, decision_time of
    the relation `probes`)."""
    c = config
    pct_win = c.oi_percentile_window_days * DAY_MS
    return f"""
WITH
v(venue) AS (VALUES {_venue_values(venues)}),
t AS (SELECT trade_id, symbol, epoch_ms(decision_time) AS t_ms FROM {probes}),
agg AS (
    SELECT symbol, epoch_ms(event_time) AS g, venue_count AS n, venues_present AS vs, oi_usd_total AS total,
           binance_share
    FROM open_interest_aggregate
),
o_at AS (
    SELECT t.trade_id, w.k, a.n, a.vs, a.total, a.binance_share
    FROM t CROSS JOIN (VALUES (0, 0), (1, {c.oi_change_short_hours * HOUR_MS}),
                              (2, {c.oi_change_long_days * DAY_MS})) w(k, back)
    LEFT JOIN agg a ON a.symbol = t.symbol AND a.g = (t.t_ms - w.back) // {STEP_MS} * {STEP_MS}
),
o_wide AS (
    SELECT trade_id,
           any_value(n) FILTER (WHERE k = 0) AS n0, any_value(vs) FILTER (WHERE k = 0) AS vs0,
           any_value(total) FILTER (WHERE k = 0) AS total0, any_value(binance_share) FILTER (WHERE k = 0) AS share0,
           any_value(vs) FILTER (WHERE k = 1) AS vs1, any_value(total) FILTER (WHERE k = 1) AS total1,
           any_value(vs) FILTER (WHERE k = 2) AS vs2, any_value(total) FILTER (WHERE k = 2) AS total2
    FROM o_at GROUP BY trade_id
),
o_pct AS (
    -- the window's hourly rows, found through the UTC days the window touches
    SELECT q.trade_id, count(*) AS n, count(*) FILTER (WHERE a.total <= q.total0) AS n_le
    FROM (SELECT o.trade_id, t.symbol, t.t_ms, o.vs0, o.total0,
                 unnest(range((t.t_ms - {pct_win}) // {DAY_MS}, t.t_ms // {DAY_MS} + 1)) AS day
          FROM o_wide o JOIN t USING (trade_id) WHERE o.n0 >= 2) q
    JOIN (SELECT *, g // {DAY_MS} AS day FROM agg WHERE g % {HOUR_MS} = 0 AND n >= 2) a
      ON a.symbol = q.symbol AND a.day = q.day AND a.vs = q.vs0
    WHERE a.g > q.t_ms - {pct_win} AND a.g <= q.t_ms
    GROUP BY q.trade_id
),
fr AS ({_newest_known('''
    SELECT venue, symbol, epoch_ms(event_time) AS ev, epoch_ms(available_at) AS av, funding_rate AS rate,
           funding_interval_hours AS h
    FROM funding_rates
    WHERE revision = 0 AND funding_rate IS NOT NULL AND venue IN (SELECT venue FROM v)''')}),
f_at AS (
    SELECT p.trade_id, p.venue,
           CASE WHEN p.t_ms - f.ev <= {c.funding_stale_factor} * f.h * {HOUR_MS} THEN f.rate * 8.0 / f.h END AS rate_8h
    FROM (SELECT * FROM t CROSS JOIN v) p
    ASOF LEFT JOIN fr f ON f.venue = p.venue AND f.symbol = p.symbol AND f.av <= p.t_ms
),
f_wide AS (
    SELECT trade_id,
           any_value(rate_8h) FILTER (WHERE venue = 'binance') AS binance_8h,
           avg(rate_8h) FILTER (WHERE venue <> 'binance') AS others_8h,
           string_agg(venue, ',' ORDER BY venue) FILTER (WHERE venue <> 'binance' AND rate_8h IS NOT NULL) AS others
    FROM f_at GROUP BY trade_id
)
SELECT t.trade_id,
       CASE WHEN o.n0 >= 2 AND o.vs1 = o.vs0 THEN (o.total0 / o.total1 - 1) * 100 END AS oi_agg_change_24h,
       CASE WHEN o.n0 >= 2 AND o.vs2 = o.vs0 THEN (o.total0 / o.total2 - 1) * 100 END AS oi_agg_change_7d,
       CASE WHEN p.n >= {c.oi_percentile_min_points} THEN 100.0 * p.n_le / p.n END AS oi_agg_percentile_30d,
       CASE WHEN o.n0 >= 2 THEN o.share0 END AS oi_binance_share,
       o.vs0 AS oi_agg_venues,
       f.binance_8h - f.others_8h AS funding_spread_8h,
       CASE WHEN f.binance_8h IS NOT NULL THEN f.others END AS funding_spread_venues
FROM t
LEFT JOIN o_wide o USING (trade_id)
LEFT JOIN o_pct p USING (trade_id)
LEFT JOIN f_wide f USING (trade_id)
ORDER BY t.trade_id
"""


def aggregate_features(con: duckdb.DuckDBPyConnection, venues: Sequence[str] = VENUES,
                       config: FeatureConfig = FeatureConfig(), probes: str = "trades") -> pl.DataFrame:
    """trade_id plus AGGREGATE_FEATURES (units: TRADE_CONTEXT_FEATURES) for each row of `probes`, from the
    tables open_interest_aggregate and funding_rates (every venue's rows visible) of `con`."""
    df = _run(con, aggregate_features_sql(venues, config, probes))
    table = schemas.TRADE_CONTEXT_FEATURES
    return df.select(pl.col("trade_id").cast(pl.Utf8),
                     *[pl.col(name).cast(table.column(name).dtype) for name in AGGREGATE_FEATURES])
