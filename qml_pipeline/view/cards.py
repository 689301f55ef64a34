"""The researcher's view: the seed's command-bar context cards and pattern cards ("Dashboard Integration").

Context cards, one row per symbol at an `as_of` instant (point in time: only rows with
available_at <= as_of; a liquidation snapshot counts as available at its snapshot_time):

- FUNDING: the latest settlement, shown per its own interval ('+0.021% / 8h'). Its status word is
  judged on the 8h-equivalent rate (`overlay.funding_8h_expr`, the overlay's own rule), thresholds in
  `CardConfig` (fractions per 8h): High when >= funding_high_8h (0.02%/8h, the overlay's "crowded
  longs" level); Negative when <= funding_negative_8h (-0.01%/8h: shorts pay as much as longs
  usually do); Low when < funding_low_8h (0.005%/8h, under half the usual 0.01% baseline);
  Neutral otherwise. Stale when older than its interval + funding_grace_minutes (a newer settlement
  should exist).
- OI: percent change of open interest over `features.oi_change_short_hours` (24h), the trade
  feature's rule (qml_pipeline/features/point_in_time.py): the value known at as_of vs the value known at
  as_of - 24h, where "the value known at t" is the row with the latest event_time among rows with
  available_at <= t; rows with open_interest <= 0 (or NULL) are missing data (Binance archive
  defect), never a real zero, and are dropped first; a stamp served twice keeps its earliest
  available_at copy (then the larger value). The 24h-ago value is NULL (change missing) when older
  than the feature's staleness limit, max(oi_stale_periods * period_minutes, oi_stale_min_minutes)
  minutes since its event_time. Rising when > +oi_flat_pct, Falling when < -oi_flat_pct, Flat
  otherwise. Stale when the current value became available more than oi_max_age_minutes ago.
  Beside it, where open_interest_aggregate holds two or more venues at as_of, the same 24h change of the
  USD open interest summed across venues (`oi_agg_change_24h`, the trade feature's rule:
  qml_pipeline/features/aggregate.py; NULL when the venues present differ between the two instants).
- LIQ: the nearest estimated liquidation cluster of either side in the newest liquidation-map
  snapshot: long clusters lie below the price (longs are liquidated on the way down), short clusters
  above. A bin is a cluster by the liquidation map's own rule (`liq_map`, a `LiqMapConfig`): its
  notional (base units) is at least cluster_min_share_of_oi of the map's open interest and, if
  cluster_quantile is set, at least that quantile of the non-empty bins on the same side of the same
  map. Its price is the bin's notional-weighted liquidation price. 'Near' when within liq_near_pct
  percent of the price (the
  newest kline close, else the snapshot's reference price), 'Far' otherwise. Stale when the snapshot
  is older than liq_max_age_minutes.

A stale value keeps its number and age but its status word is 'stale'; a value that does not exist
has status 'missing' (liquidations: 'none' when the map has no cluster on either side).

Pattern cards (one per trade, from the overlay's rule columns): pattern_cards.py.

The cards are stored as warehouse tables (context_cards, pattern_cards, pattern_card_adjustments:
`context_card_rows`, `pattern_card_rows`), and every view renders those rows: the markdown of card_text.py
(Dagster metadata), the HTML report (report.py) and the JSON export (export.py). docs/cards.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import polars as pl

from qml_pipeline.features.liquidation_map import LiqMapConfig
from qml_pipeline.features.point_in_time import FeatureConfig
from qml_pipeline.formats import fmt_pct, fmt_usd
from qml_pipeline.research.overlay import REFERENCE_INTERVAL_HOURS, funding_8h_expr
from qml_pipeline.store.schemas import TS


FUNDING_WORDS = ("High", "Neutral", "Low", "Negative")
OI_WORDS = ("Rising", "Flat", "Falling")
LIQ_WORDS = ("Near", "Far")
STALE, MISSING, NO_CLUSTER = "stale", "missing", "none"


@dataclass(frozen=True)
class CardConfig:
    """Status rules and staleness limits of the context cards, each with its unit."""

    # funding status, on the 8h-equivalent rate, FRACTION PER 8h (0.0001 = 0.01% per 8h)
    funding_high_8h: float = 0.0002       # >= : High (crowded longs)
    funding_low_8h: float = 0.00005       # <  : Low (below half the usual 0.01% baseline)
    funding_negative_8h: float = -0.0001  # <= : Negative (crowded shorts)
    # a settlement older than its interval + this many minutes is stale (a newer one should exist)
    funding_grace_minutes: float = 60.0
    # open interest: |24h change| <= this many PERCENT is Flat
    oi_flat_pct: float = 1.0
    # the current OI value is stale when it became available more than this many minutes ago
    oi_max_age_minutes: float = 120.0
    # 'Near' within this many PERCENT of the price
    liq_near_pct: float = 2.0
    liq_max_age_minutes: float = 360.0
    # a kline close older than this is not used as the price (the snapshot's reference price is)
    price_max_age_minutes: float = 180.0
    # the trade features' OI rules: change window (oi_change_short_hours) and the staleness of the past value
    features: FeatureConfig = field(default_factory=FeatureConfig)
    # the liquidation map's cluster rule (cluster_min_share_of_oi, cluster_quantile)
    liq_map: LiqMapConfig = field(default_factory=LiqMapConfig)

    def __post_init__(self) -> None:
        if not self.funding_negative_8h < self.funding_low_8h < self.funding_high_8h:
            raise ValueError("CardConfig: need funding_negative_8h < funding_low_8h < funding_high_8h, got "
                             f"{self.funding_negative_8h}, {self.funding_low_8h}, {self.funding_high_8h}")
        for name in ("funding_grace_minutes", "oi_flat_pct", "oi_max_age_minutes", "liq_near_pct",
                     "liq_max_age_minutes", "price_max_age_minutes"):
            if getattr(self, name) < 0:
                raise ValueError(f"CardConfig.{name} must be >= 0, got {getattr(self, name)}")


CONTEXT_CARD_SCHEMA = pl.Schema({
    "symbol": pl.Utf8, "as_of": TS,
    "price": pl.Float64, "price_time": TS,
    "funding_rate": pl.Float64, "funding_interval_hours": pl.Int16, "funding_rate_8h": pl.Float64,
    "funding_event_time": TS, "funding_age_minutes": pl.Float64, "funding_value": pl.Utf8,
    "funding_status": pl.Utf8,
    "oi": pl.Float64, "oi_event_time": TS, "oi_24h_event_time": TS, "oi_change_24h": pl.Float64,
    "oi_age_minutes": pl.Float64, "oi_value": pl.Utf8, "oi_status": pl.Utf8,
    "oi_agg_change_24h": pl.Float64, "oi_agg_venues": pl.Utf8, "oi_agg_value": pl.Utf8,
    "liq_snapshot_time": TS, "liq_age_minutes": pl.Float64, "liq_cluster_side": pl.Utf8,
    "liq_cluster_price": pl.Float64, "liq_cluster_notional_usd": pl.Float64, "liq_distance_pct": pl.Float64,
    "liq_value": pl.Utf8, "liq_status": pl.Utf8,
})


# ---------------------------------------------------------------- formatting

def _funding_text(rate: float, hours: int, rate_8h: float) -> str:
    text = f"{rate * 100:+.3f}% / {hours}h"
    if hours != REFERENCE_INTERVAL_HOURS:
        text += f" ({rate_8h * 100:+.3f}% / 8h)"
    return text


def _map_rows(df: pl.DataFrame, cols: Sequence[str], fn: Callable[..., str | None], name: str) -> pl.DataFrame:
    """A text column from a few value columns (presentation only; cards are a handful of rows)."""
    values = [fn(*row) if all(v is not None for v in row) else None for row in df.select(cols).iter_rows()]
    return df.with_columns(pl.Series(name, values, dtype=pl.Utf8))


# ---------------------------------------------------------------- context cards

def _latest(df: pl.DataFrame, time_col: str) -> pl.DataFrame:
    return df.sort("symbol", time_col).group_by("symbol", maintain_order=True).last()


def minutes_between(later: pl.Expr, earlier: pl.Expr) -> pl.Expr:
    return (later - earlier).dt.total_milliseconds().cast(pl.Float64) / 60_000


def _default_as_of(*frames: tuple[pl.DataFrame | None, str]) -> datetime | None:
    times = [f[c].max() for f, c in frames if f is not None and f.height and c in f.columns]
    times = [t for t in times if t is not None]
    return max(times) if times else None


def _funding_part(funding: pl.DataFrame, as_of: pl.Expr, c: CardConfig) -> pl.DataFrame:
    df = funding.filter(pl.col("available_at") <= as_of)
    if "funding_interval_hours" not in df.columns:
        df = df.with_columns(pl.lit(REFERENCE_INTERVAL_HOURS, dtype=pl.Int16).alias("funding_interval_hours"))
    df = _latest(df.select("symbol", "event_time", "available_at", "funding_rate", "funding_interval_hours"),
                 "event_time")
    f8 = pl.col("funding_rate_8h")
    df = df.with_columns(funding_8h_expr().alias("funding_rate_8h")).with_columns(
        # the interval the 8h-equivalent was scaled from (NULL / non-positive -> 8h, as funding_8h_expr)
        pl.when(pl.col("funding_interval_hours") > 0).then(pl.col("funding_interval_hours"))
        .otherwise(REFERENCE_INTERVAL_HOURS).cast(pl.Int16).alias("funding_interval_hours"),
        minutes_between(as_of, pl.col("available_at")).alias("funding_age_minutes"),
    ).with_columns(
        (pl.col("funding_interval_hours").cast(pl.Float64) * 60 + c.funding_grace_minutes).alias("_limit"),
    ).with_columns(
        pl.when(pl.col("funding_age_minutes") > pl.col("_limit")).then(pl.lit(STALE))
        .when(f8 >= c.funding_high_8h).then(pl.lit("High"))
        .when(f8 <= c.funding_negative_8h).then(pl.lit("Negative"))
        .when(f8 < c.funding_low_8h).then(pl.lit("Low"))
        .otherwise(pl.lit("Neutral")).alias("funding_status"),
    )
    df = _map_rows(df, ["funding_rate", "funding_interval_hours", "funding_rate_8h"], _funding_text,
                   "funding_value")
    return df.select("symbol", pl.col("event_time").alias("funding_event_time"), "funding_rate",
                     "funding_interval_hours", "funding_rate_8h", "funding_age_minutes", "funding_value",
                     "funding_status")


def _oi_rows(open_interest: pl.DataFrame) -> pl.DataFrame:
    """features.py's OI rows: open_interest <= 0 / NULL dropped, one row per (symbol, event_time) (the
    earliest available_at, then the largest value, then the largest period)."""
    period = pl.col("period_minutes") if "period_minutes" in open_interest.columns else pl.lit(None)
    return (open_interest
            .filter(pl.col("open_interest") > 0)
            .select("symbol", "event_time", "available_at", pl.col("open_interest").cast(pl.Float64),
                    period.cast(pl.Float64).alias("period_minutes"))
            .sort("symbol", "event_time", "available_at", "open_interest", "period_minutes",
                  descending=[False, False, False, True, True], nulls_last=True)
            .unique(["symbol", "event_time"], keep="first", maintain_order=True))


def _oi_known_at(rows: pl.DataFrame, at: pl.Expr) -> pl.DataFrame:
    """Per symbol, the value known at `at`: the latest event_time among `_oi_rows` available by then."""
    return _latest(rows.filter(pl.col("available_at") <= at), "event_time")


def _oi_part(open_interest: pl.DataFrame, as_of: pl.Expr, c: CardConfig) -> pl.DataFrame:
    rows = _oi_rows(open_interest)
    back = as_of - pl.duration(hours=c.features.oi_change_short_hours)
    now = _oi_known_at(rows, as_of)
    past_age = minutes_between(back, pl.col("event_time"))
    past_limit = pl.max_horizontal(c.features.oi_stale_periods * pl.col("period_minutes"),
                                   pl.lit(c.features.oi_stale_min_minutes))
    past = _oi_known_at(rows, back).select(
        "symbol", pl.col("event_time").alias("oi_24h_event_time"),
        pl.when(past_age <= past_limit).then(pl.col("open_interest")).alias("_oi_24h"))
    joined = now.join(past, on="symbol", how="left")
    # rounded so that a change of exactly the threshold is not pushed over it by float error
    change = ((pl.col("open_interest") / pl.col("_oi_24h") - 1) * 100).round(9)
    df = joined.with_columns(
        change.alias("oi_change_24h"),
        minutes_between(as_of, pl.col("available_at")).alias("oi_age_minutes"),
    ).with_columns(
        pl.when(pl.col("oi_age_minutes") > c.oi_max_age_minutes).then(pl.lit(STALE))
        .when(pl.col("oi_change_24h").is_null()).then(pl.lit(MISSING))
        .when(pl.col("oi_change_24h") > c.oi_flat_pct).then(pl.lit("Rising"))
        .when(pl.col("oi_change_24h") < -c.oi_flat_pct).then(pl.lit("Falling"))
        .otherwise(pl.lit("Flat")).alias("oi_status"),
    )
    df = _map_rows(df, ["oi_change_24h"], fmt_pct, "oi_value")
    return df.sort("symbol").select("symbol", pl.col("open_interest").alias("oi"),
                                    pl.col("event_time").alias("oi_event_time"), "oi_24h_event_time",
                                    "oi_change_24h", "oi_age_minutes", "oi_value", "oi_status")


def _price_part(klines: pl.DataFrame, as_of: pl.Expr, c: CardConfig) -> pl.DataFrame:
    when = "available_at" if "available_at" in klines.columns else "close_time"
    df = klines.filter(pl.col(when) <= as_of)
    order = [when, "close_time"] if when != "close_time" and "close_time" in df.columns else [when]
    df = df.sort("symbol", *order).group_by("symbol", maintain_order=True).last()
    return (df.filter(minutes_between(as_of, pl.col(when)) <= c.price_max_age_minutes)
            .select("symbol", pl.col("close").cast(pl.Float64).alias("price"),
                    pl.col(when).alias("price_time")))


def _is_cluster(base: pl.Expr, config: LiqMapConfig) -> pl.Expr:
    """liquidation_map's cluster rule for the non-empty bins of one side of a snapshot, per symbol:
    base >= cluster_min_share_of_oi * the map's OI and >= the cluster_quantile of those bins."""
    rule = pl.lit(True)
    if config.cluster_min_share_of_oi is not None:
        rule &= base >= config.cluster_min_share_of_oi * pl.col("open_interest")
    if config.cluster_quantile is not None:
        rule &= base >= base.quantile(config.cluster_quantile, "linear").over("symbol")
    return rule


def _liq_part(liq_map: pl.DataFrame, prices: pl.DataFrame, as_of: pl.Expr, c: CardConfig) -> pl.DataFrame:
    snap = liq_map.filter(pl.col("snapshot_time") <= as_of)
    snap = snap.filter(pl.col("snapshot_time") == pl.col("snapshot_time").max().over("symbol"))
    heads = (snap.group_by("symbol").agg(pl.col("snapshot_time").first(), pl.col("reference_price").first())
             .join(prices, on="symbol", how="left")
             .with_columns(pl.coalesce("price", "reference_price").alias("_price"),
                           minutes_between(as_of, pl.col("snapshot_time")).alias("liq_age_minutes")))
    sides = []
    for side, base, usd in (("long", "long_liq_notional", "long_liq_notional_usd"),
                            ("short", "short_liq_notional", "short_liq_notional_usd")):
        sides.append(snap.filter(pl.col(base) > 0).filter(_is_cluster(pl.col(base), c.liq_map))
                     .select("symbol", pl.lit(side).alias("liq_cluster_side"),
                             (pl.col(usd) / pl.col(base)).alias("liq_cluster_price"),
                             pl.col(usd).alias("liq_cluster_notional_usd")))
    clusters = (pl.concat(sides).join(heads.select("symbol", "_price"), on="symbol")
                # longs liquidate below the price, shorts above; a cluster the price has passed is gone
                .filter(pl.when(pl.col("liq_cluster_side") == "long")
                        .then(pl.col("liq_cluster_price") < pl.col("_price"))
                        .otherwise(pl.col("liq_cluster_price") > pl.col("_price")))
                .with_columns(((pl.col("liq_cluster_price") - pl.col("_price")).abs() / pl.col("_price") * 100)
                              .alias("liq_distance_pct"))
                .sort("symbol", "liq_distance_pct", "liq_cluster_side")
                .group_by("symbol", maintain_order=True).first()
                .drop("_price"))
    df = heads.join(clusters, on="symbol", how="left").with_columns(
        pl.when(pl.col("liq_age_minutes") > c.liq_max_age_minutes).then(pl.lit(STALE))
        .when(pl.col("liq_cluster_price").is_null()).then(pl.lit(NO_CLUSTER))
        .when(pl.col("liq_distance_pct") <= c.liq_near_pct).then(pl.lit("Near"))
        .otherwise(pl.lit("Far")).alias("liq_status"))
    df = _map_rows(df, ["liq_cluster_price"], fmt_usd, "liq_value")
    return df.select("symbol", pl.col("snapshot_time").alias("liq_snapshot_time"), "liq_age_minutes",
                     "liq_cluster_side", "liq_cluster_price", "liq_cluster_notional_usd", "liq_distance_pct",
                     "liq_value", "liq_status")


def context_cards(funding: pl.DataFrame, open_interest: pl.DataFrame, liq_map: pl.DataFrame | None,
                  klines: pl.DataFrame, as_of: datetime | None = None,
                  config: CardConfig = CardConfig()) -> pl.DataFrame:
    """One row per symbol (columns CONTEXT_CARD_SCHEMA) as of `as_of` (default: the latest
    available_at in the data). Rules, units and staleness: this module's docstring."""
    c = config
    if as_of is None:
        as_of = _default_as_of((funding, "available_at"), (open_interest, "available_at"),
                               (klines, "available_at"), (liq_map, "snapshot_time"))
    if as_of is None:
        return pl.DataFrame(schema=CONTEXT_CARD_SCHEMA)
    at = pl.lit(as_of).cast(TS)
    symbols = pl.concat([f.select(pl.col("symbol").cast(pl.Utf8)) for f in (funding, open_interest, klines, liq_map)
                         if f is not None and "symbol" in f.columns]).unique().sort("symbol")
    prices = _price_part(klines, at, c)
    out = (symbols
           .join(prices, on="symbol", how="left")
           .join(_funding_part(funding, at, c), on="symbol", how="left")
           .join(_oi_part(open_interest, at, c), on="symbol", how="left"))
    if liq_map is not None and liq_map.height:
        out = out.join(_liq_part(liq_map, prices, at, c), on="symbol", how="left")
    missing = [pl.lit(None, dtype=t).alias(n) for n, t in CONTEXT_CARD_SCHEMA.items() if n not in out.columns]
    out = out.with_columns(missing) if missing else out
    out = out.with_columns(at.alias("as_of"),
                           *[pl.col(f"{k}_status").fill_null(MISSING) for k in ("funding", "oi", "liq")])
    return out.select([pl.col(n).cast(t) for n, t in CONTEXT_CARD_SCHEMA.items()])


def with_oi_aggregate(cards: pl.DataFrame, across: pl.DataFrame) -> pl.DataFrame:
    """`cards` with the 24h change across venues filled in from `across` (features/aggregate.py's
    `aggregate_features` for probes named by symbol, at each card's as_of)."""
    agg = across.select(pl.col("trade_id").alias("symbol"), pl.col("oi_agg_change_24h").alias("_change"),
                        pl.col("oi_agg_venues").alias("_venues"))
    out = cards.join(agg, on="symbol", how="left").with_columns(
        pl.col("_change").alias("oi_agg_change_24h"),
        pl.when(pl.col("_change").is_not_null()).then(pl.col("_venues")).alias("oi_agg_venues"))
    texts = [None if c is None else f"{fmt_pct(c)} ({v.replace(',', ', ')})"
             for c, v in out.select("oi_agg_change_24h", "oi_agg_venues").iter_rows()]
    out = out.with_columns(pl.Series("oi_agg_value", texts, dtype=pl.Utf8))
    return out.select([pl.col(n).cast(t) for n, t in CONTEXT_CARD_SCHEMA.items()])


# ---------------------------------------------------------------- the card tables (what every view renders)

def _sign_word(value: pl.Expr) -> pl.Expr:
    return (pl.when(value > 0).then(pl.lit("up")).when(value < 0).then(pl.lit("down"))
            .when(value == 0).then(pl.lit("flat")).otherwise(pl.lit(None, dtype=pl.Utf8)))


def _pct8h(fraction: float) -> str:
    return f"{fraction * 100:+.4f}%/8h"


def _status_rules(c: CardConfig) -> dict[str, dict[str, str]]:
    """Per card, status word -> the rule that produces it, with the thresholds of `c`."""
    m = c.liq_map
    cluster = (f"a bin with >= {m.cluster_min_share_of_oi * 100:g}% of the map's OI"
               if m.cluster_min_share_of_oi is not None else "any non-empty bin")
    if m.cluster_quantile is not None:
        cluster += f" and >= the {m.cluster_quantile:g} quantile of its side's bins"
    return {
        "funding": {
            STALE: f"age > its interval + funding_grace_minutes ({c.funding_grace_minutes:g} min): a newer "
                   "settlement should exist",
            "High": f"8h-equivalent rate >= funding_high_8h ({_pct8h(c.funding_high_8h)})",
            "Negative": f"8h-equivalent rate <= funding_negative_8h ({_pct8h(c.funding_negative_8h)})",
            "Low": f"8h-equivalent rate < funding_low_8h ({_pct8h(c.funding_low_8h)})",
            "Neutral": f"funding_low_8h ({_pct8h(c.funding_low_8h)}) <= 8h-equivalent rate < funding_high_8h "
                       f"({_pct8h(c.funding_high_8h)})",
            MISSING: "no settlement known at as_of",
        },
        "oi": {
            STALE: f"the current value became available more than oi_max_age_minutes ({c.oi_max_age_minutes:g} min) "
                   "before as_of",
            "Rising": f"24h change > +oi_flat_pct ({c.oi_flat_pct:g}%)",
            "Falling": f"24h change < -oi_flat_pct ({c.oi_flat_pct:g}%)",
            "Flat": f"|24h change| <= oi_flat_pct ({c.oi_flat_pct:g}%)",
            MISSING: "no open interest known at as_of, or none known 24h before it within the features' "
                     f"staleness limit (max({c.features.oi_stale_periods:g} periods, "
                     f"{c.features.oi_stale_min_minutes:g} min))",
        },
        "liq": {
            STALE: f"the map snapshot is older than liq_max_age_minutes ({c.liq_max_age_minutes:g} min)",
            "Near": f"the nearest cluster ({cluster}) lies within liq_near_pct ({c.liq_near_pct:g}%) of the price",
            "Far": f"the nearest cluster ({cluster}) lies farther than liq_near_pct ({c.liq_near_pct:g}%) from the "
                   "price",
            NO_CLUSTER: f"no cluster ({cluster}) on the side of the price where it could still be hit",
            MISSING: "no liquidation map snapshot at as_of",
        },
    }


def context_card_rows(cards: pl.DataFrame, config: CardConfig = CardConfig()) -> pl.DataFrame:
    """`context_cards` output with what the context_cards table adds per card: the rule that produced each
    status, the direction of each value (up / down / flat), funding's unit and the price's age."""
    rules = _status_rules(config)
    words = {k: pl.col(f"{k}_status").cast(pl.Utf8).replace_strict(v, default=None, return_dtype=pl.Utf8)
             for k, v in rules.items()}
    return cards.with_columns(
        pl.when(pl.col("funding_rate").is_not_null())
        .then(pl.format("fraction per {}h", pl.col("funding_interval_hours"))).alias("funding_unit"),
        _sign_word(pl.col("funding_rate")).alias("funding_direction"),
        words["funding"].alias("funding_rule"),
        _sign_word(pl.col("oi_change_24h")).alias("oi_direction"),
        words["oi"].alias("oi_rule"),
        pl.col("liq_cluster_side").cast(pl.Utf8).replace_strict({"long": "down", "short": "up"}, default=None,
                                                                return_dtype=pl.Utf8).alias("liq_direction"),
        words["liq"].alias("liq_rule"),
        minutes_between(pl.col("as_of"), pl.col("price_time")).alias("price_age_minutes"),
    )
