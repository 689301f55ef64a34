"""The trade contract (`TRADES`), the rules a trade must meet, and the reader of a user's backtest export.

A trade row is one detected pattern and what became of it. Prices are quote currency per unit of the
base asset (USDT for the USD-M perpetuals); R multiples are in units of the initial risk
|entry_price - stop_price| per unit, so +2 means "won twice what was risked".

The rules check meaning, not only types (docs/input_errors.md lists each with its message): a trade's
outcome agrees with its fill, its R with its prices and costs, its target and stop lie on the right
sides, every number is finite, and (for an export) its decision_time lies inside the market data the
warehouse holds for its symbol and timeframe and not in the future.

`read_trade_export` refuses a file with bad rows as a whole: it raises one `TradeInputError` naming
every rule broken, the rows (1-based, header excluded, with their trade_id) that break it and the
values seen, and returns nothing, so the stored trades stay as they were. A symbol the warehouse
has no klines for at all is only a warning.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pandera.polars as pa
import polars as pl

from qml_pipeline.errors import InputError
from qml_pipeline.sources.files import TableFile, parse_numbers, parse_times, read_table
from qml_pipeline.store.schemas import FINITE, TRADES, TS
from qml_pipeline.timeutil import INTERVAL_MS, utc_now

DIRECTIONS = ("BULLISH", "BEARISH")
OUTCOMES = ("WIN", "LOSS", "TIMEOUT", "NOT_FILLED", "INVALIDATED")
FILLED_OUTCOMES = ("WIN", "LOSS", "TIMEOUT")
UNFILLED_OUTCOMES = ("NOT_FILLED", "INVALIDATED")
REFERENCE_SOURCE = "reference_detector"

REQUIRED = ("trade_id", "symbol", "timeframe", "direction", "decision_time", "entry_price",
            "stop_price", "outcome")
TIME_COLUMNS = tuple(c.name for c in TRADES.columns if c.dtype == TS)
PRICE_COLUMNS = ("entry_price", "stop_price", "target_price", "exit_price", "ls_price",
                 "head_price", "low_price")
FLOAT_COLUMNS = tuple(c.name for c in TRADES.columns if c.dtype == pl.Float64)

# R arithmetic: gross_r_multiple must equal the price result, and r_multiple the gross result minus
# fees_r and funding_r, within R_TOLERANCE (rounding in the export). When the export leaves fees_r or
# funding_r out, r_multiple may also differ by up to UNITEMISED_COST_R: the costs it does not itemise
# (fees are typically 0.05-0.3 R; funding over a long hold with a tight stop can approach 1 R).
R_TOLERANCE = 0.05
UNITEMISED_COST_R = 1.0


# ---------------------------------------------------------------- the error

@dataclass(frozen=True)
class Problem:
    """One rule broken: its name (docs/input_errors.md), what is wrong and expected, the rows (1-based,
    header excluded) and, per shown row, the values seen."""

    rule: str
    message: str
    rows: list[int] = field(default_factory=list)
    seen: dict[int, str] = field(default_factory=dict)


class TradeInputError(InputError):
    """A trade export broke the contract; nothing of it was read."""

    def __init__(self, source: str, problems: list[Problem], trade_ids: dict[int, str] | None = None):
        self.source = source
        self.problems = problems
        trade_ids = trade_ids or {}
        lines = [f"{source}: {len(problems)} problem(s); nothing was read and the stored trades are unchanged "
                 "(rows are numbered from 1, header excluded: row N is line N+1 of a CSV)"]
        for p in problems:
            if p.rows:
                shown = "; ".join(_row_label(r, trade_ids, p.seen.get(r)) for r in p.rows[:10])
                more = f" and {len(p.rows) - 10} more" if len(p.rows) > 10 else ""
                lines.append(f"  - [{p.rule}] {p.message}: {len(p.rows)} row(s): {shown}{more}")
            else:
                lines.append(f"  - [{p.rule}] {p.message}")
        super().__init__("\n".join(lines))

    def rules(self) -> list[str]:
        return [p.rule for p in self.problems]

    def problem(self, rule: str) -> Problem:
        return next(p for p in self.problems if p.rule == rule)


def _row_label(row: int, trade_ids: dict[int, str], seen: str | None) -> str:
    tid = trade_ids.get(row)
    label = f"row {row}" + (f" (trade_id {tid!r})" if tid is not None else "")
    return label + (f" [seen {seen}]" if seen else "")


# ---------------------------------------------------------------- the row rules

_DIR = pl.col("direction")
_OUTCOME = pl.col("outcome")
_ENTRY, _STOP, _TARGET, _EXIT = (pl.col(c) for c in ("entry_price", "stop_price", "target_price", "exit_price"))
_SIGN = pl.when(_DIR == "BULLISH").then(1.0).when(_DIR == "BEARISH").then(-1.0)
PRICE_R = (_SIGN * (_EXIT - _ENTRY) / (_ENTRY - _STOP).abs()).alias("price_r")
GROSS_R = pl.coalesce(pl.col("gross_r_multiple"), PRICE_R)
_ITEMISED = pl.col("fees_r").is_not_null() & pl.col("funding_r").is_not_null()
EXPECTED_R = (GROSS_R - pl.col("fees_r").fill_null(0.0) - pl.col("funding_r").fill_null(0.0)).alias("expected_r")
_R_TOLERANCE = pl.when(_ITEMISED).then(R_TOLERANCE).otherwise(R_TOLERANCE + UNITEMISED_COST_R)


@dataclass(frozen=True)
class RowRule:
    """`ok` is True where a row meets the rule (NULL counts as met: a required value that is missing
    is a rule of its own). `shown`: the values a message quotes for a breaking row."""

    name: str
    message: str
    ok: pl.Expr
    shown: tuple[str | pl.Expr, ...]


def _filled() -> pl.Expr:
    return _OUTCOME.is_in(FILLED_OUTCOMES)


ROW_RULES: tuple[RowRule, ...] = (
    RowRule("stop_side", "stop on the wrong side of entry (BULLISH stop must be below entry_price, BEARISH above)",
            pl.when(_DIR == "BULLISH").then(_STOP < _ENTRY).when(_DIR == "BEARISH").then(_STOP > _ENTRY),
            ("direction", "entry_price", "stop_price")),
    RowRule("target_side", "target on the wrong side of entry (BULLISH target must be above entry_price, "
            "BEARISH below)",
            pl.when(_DIR == "BULLISH").then(_TARGET > _ENTRY).when(_DIR == "BEARISH").then(_TARGET < _ENTRY),
            ("direction", "entry_price", "target_price")),
    RowRule("exit_before_entry", "exit_time before entry_time",
            pl.col("exit_time") >= pl.col("entry_time"), ("entry_time", "exit_time")),
    RowRule("entry_before_decision", "decision_time after entry_time (a trade cannot fill before the pattern "
            "is known)", pl.col("decision_time") <= pl.col("entry_time"), ("decision_time", "entry_time")),
    RowRule("unfilled_has_fill", "a NOT_FILLED or INVALIDATED trade never filled: entry_time, exit_time and "
            "exit_price must be empty and r_multiple empty or 0",
            ~_OUTCOME.is_in(UNFILLED_OUTCOMES)
            | (pl.col("entry_time").is_null() & pl.col("exit_time").is_null() & _EXIT.is_null()
               & (pl.col("r_multiple").is_null() | (pl.col("r_multiple") == 0))),
            ("outcome", "entry_time", "exit_time", "exit_price", "r_multiple")),
    RowRule("filled_incomplete", "a WIN, LOSS or TIMEOUT trade filled and closed: entry_time, exit_time, "
            "exit_price and r_multiple are all required",
            ~_filled() | (pl.col("entry_time").is_not_null() & pl.col("exit_time").is_not_null()
                          & _EXIT.is_not_null() & pl.col("r_multiple").is_not_null()),
            ("outcome", "entry_time", "exit_time", "exit_price", "r_multiple")),
    RowRule("gross_r_mismatch", f"gross_r_multiple differs from the prices' result, signed (exit_price - "
            f"entry_price) / |entry_price - stop_price|, by more than {R_TOLERANCE} R",
            (pl.col("gross_r_multiple") - PRICE_R).abs() <= R_TOLERANCE,
            ("gross_r_multiple", PRICE_R.round(4))),
    RowRule("r_mismatch", f"r_multiple differs from the gross result minus fees_r and funding_r by more than "
            f"{R_TOLERANCE} R (by more than {R_TOLERANCE + UNITEMISED_COST_R:g} R when the export leaves "
            "fees_r or funding_r out)",
            ~_filled() | ((pl.col("r_multiple") - EXPECTED_R).abs() <= _R_TOLERANCE),
            ("outcome", "r_multiple", EXPECTED_R.round(4), "fees_r", "funding_r")),
    RowRule("win_not_positive", "a WIN (target hit) must have a positive gross result: exit beyond entry in "
            "the trade's direction", (_OUTCOME != "WIN") | (GROSS_R > 0),
            ("outcome", "direction", "entry_price", "exit_price", GROSS_R.round(4).alias("gross_r"))),
    RowRule("loss_not_negative", "a LOSS (stop hit) must have a negative gross result: exit beyond entry "
            "against the trade's direction", (_OUTCOME != "LOSS") | (GROSS_R < 0),
            ("outcome", "direction", "entry_price", "exit_price", GROSS_R.round(4).alias("gross_r"))),
    RowRule("fees_negative", "fees_r is a cost and cannot be negative", pl.col("fees_r") >= 0, ("fees_r",)),
    RowRule("confidence_range", "base_confidence outside 0..1", pl.col("base_confidence").is_between(0.0, 1.0),
            ("base_confidence",)),
)


def _finite_rule(column: str) -> RowRule:
    return RowRule("not_finite", f"a number in {column!r} that is not finite (inf, -inf, NaN, or too large "
                   "for a float such as 1e400)", pl.col(column).is_finite(), (column,))


def _positive_price_rule(column: str) -> RowRule:
    return RowRule("price_not_positive", f"a price in {column!r} that is not positive", pl.col(column) > 0,
                   (column,))


# ---------------------------------------------------------------- pandera schema (any trade frame)

def trades_schema() -> pa.DataFrameSchema:
    """The pandera (polars) schema of TRADES: types, allowed values, finite numbers and the row rules."""
    checks: dict[str, list[pa.Check]] = {c: [FINITE] for c in FLOAT_COLUMNS}
    checks["direction"] = [pa.Check.isin(list(DIRECTIONS))]
    checks["outcome"] = [pa.Check.isin(list(OUTCOMES))]
    checks["timeframe"] = [pa.Check.isin(list(INTERVAL_MS))]
    for p in PRICE_COLUMNS:
        checks[p].append(pa.Check.gt(0.0))
    columns = {c.name: pa.Column(c.dtype, checks=checks.get(c.name, []), nullable=c.nullable)
               for c in TRADES.columns}
    frame_checks = [pa.Check(lambda data, ok=rule.ok: data.lazyframe.select(ok.fill_null(True)), name=rule.name)
                    for rule in ROW_RULES]
    return pa.DataFrameSchema(columns, checks=frame_checks, unique=["trade_id"], strict=True, name=TRADES.name)


def validate_trades(df: pl.DataFrame) -> None:
    """Raise pandera's SchemaErrors unless `df` (already in TRADES shape) meets the contract."""
    trades_schema().validate(df, lazy=True)


# ---------------------------------------------------------------- the market data an export is judged against

@dataclass(frozen=True)
class MarketCoverage:
    """The klines the warehouse holds: per (symbol, interval) the first open time and the last close time."""

    spans: dict[tuple[str, str], tuple[datetime, datetime]]

    @classmethod
    def from_frame(cls, df: pl.DataFrame) -> "MarketCoverage":
        """From rows (symbol, interval, first_time, last_time)."""
        return cls({(s, i): (a, b) for s, i, a, b in df.select("symbol", "interval", "first_time", "last_time")
                    .iter_rows()})

    def symbols(self) -> set[str]:
        return {s for s, _ in self.spans}

    def intervals(self, symbol: str) -> list[str]:
        return sorted((i for s, i in self.spans if s == symbol), key=lambda i: INTERVAL_MS.get(i, 0))

    def frame(self) -> pl.DataFrame:
        """symbol, timeframe, _first, _last: one row per (symbol, interval) held."""
        return pl.DataFrame([(s, i, a, b) for (s, i), (a, b) in self.spans.items()],
                            schema={"symbol": pl.Utf8, "timeframe": pl.Utf8, "_first": TS, "_last": TS}, orient="row")

    def stored(self) -> pl.DataFrame:
        """symbol, _stored: the intervals held per symbol, as text."""
        return pl.DataFrame({"symbol": sorted(self.symbols()),
                             "_stored": [", ".join(self.intervals(s)) for s in sorted(self.symbols())]})


def _context_rules(coverage: MarketCoverage | None, now: datetime) -> list[RowRule]:
    rules = [RowRule("time_in_future", f"{c} in the future (after {now.isoformat()})", pl.col(c) <= now, (c,))
             for c in TIME_COLUMNS]
    if coverage is None:
        return rules
    known = pl.col("symbol").is_in(list(coverage.symbols()))
    return rules + [
        RowRule("timeframe_without_klines", "the warehouse holds klines for the symbol but not in this timeframe "
                "(its features, e.g. ATR, would all be NULL): add the timeframe to QML_KLINE_INTERVALS and "
                "materialize klines, or correct the timeframe",
                ~known | pl.col("_first").is_not_null(),
                ("symbol", "timeframe", pl.col("_stored").alias("stored timeframes"))),
        RowRule("decision_outside_market_data", "decision_time outside the market data the warehouse holds for "
                "the symbol and timeframe (its context features would be NULL): materialize that range, or "
                "correct the time",
                pl.col("decision_time").is_between(pl.col("_first"), pl.col("_last")),
                ("decision_time", pl.format("{} .. {}", pl.col("_first").dt.to_string("%Y-%m-%dT%H:%M%:z"),
                                            pl.col("_last").dt.to_string("%Y-%m-%dT%H:%M%:z")).alias("klines"))),
    ]


# ---------------------------------------------------------------- column maps

def parse_column_map(text: str) -> tuple[dict[str, str], list[str]]:
    """'Entry=entry_price,Side=direction' -> ({file column: contract column}, problems)."""
    pairs, problems = [], []
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        if "=" not in item:
            problems.append(f"{item!r} lacks '=': write file_column=contract_column, e.g. Entry=entry_price")
            continue
        src, dst = (x.strip() for x in item.split("=", 1))
        pairs.append((src, dst))
    problems += column_map_problems(pairs)
    return dict(pairs), problems


def column_map_problems(pairs: list[tuple[str, str]]) -> list[str]:
    """What is wrong with (file column, contract column) pairs: empty names, a target that is not a
    contract column (with the closest contract column, never the typo), two sources for one target,
    one source mapped twice."""
    problems = []
    by_target: dict[str, list[str]] = {}
    by_source: dict[str, list[str]] = {}
    for src, dst in pairs:
        if not src or not dst:
            problems.append(f"{src}={dst}: both sides need a column name")
            continue
        by_target.setdefault(dst, []).append(src)
        by_source.setdefault(src, []).append(dst)
        if dst not in TRADES.names:
            close = difflib.get_close_matches(dst, TRADES.names, 1, 0.6)
            hint = f"did you mean {close[0]!r}?" if close else f"the contract's columns are {TRADES.names}"
            problems.append(f"{src!r} is mapped to {dst!r}, which is not a trade contract column ({hint})")
    for dst, srcs in by_target.items():
        if len(srcs) > 1:
            problems.append(f"{srcs} are all mapped to {dst!r}: map exactly one file column to each contract column")
    for src, dsts in by_source.items():
        if len(dsts) > 1:
            problems.append(f"{src!r} is mapped more than once ({dsts}): map it to one contract column")
    return problems


# ---------------------------------------------------------------- the export reader

def read_trade_export(path: str | Path, column_map: dict[str, str] | None = None,
                      coverage: MarketCoverage | None = None,
                      now: datetime | None = None) -> tuple[pl.DataFrame, list[str]]:
    """Read a user's trade export (CSV, Parquet or Feather, by suffix) into the TRADES shape.

    `column_map` maps the file's column names to TRADES names ({"Entry": "entry_price"}). Times: ISO-8601
    with an offset, epoch seconds or milliseconds, tz-aware timestamps or dates (sources/files.py);
    converted to UTC. `coverage`: the klines the warehouse holds; trades outside it are refused, symbols
    absent from it only warned about. `now`: the moment no time may lie after (default: the clock).
    Returns (frame conforming to TRADES, warnings). Raises FileInputError for an unreadable or empty
    file and TradeInputError naming every broken rule.
    """
    table = read_table(path, what="trade export")
    label = table.path.name
    raw = table.frame
    warnings: list[str] = []

    column_map = dict(column_map or {})
    problems = [Problem("column_map", p) for p in column_map_problems(list(column_map.items()))]
    for src in column_map:
        if src not in raw.columns:
            problems.append(Problem("column_map", f"column_map names column {src!r}, which the file does not "
                                    f"have{_suggest(src, raw.columns)}"))
    for src, dst in column_map.items():
        if src in raw.columns and dst in raw.columns and src != dst:
            problems.append(Problem("column_map", f"column_map maps {src!r} to {dst!r}, but the file already "
                                    f"has {dst!r}"))
    if problems:
        raise TradeInputError(label, problems)
    renamed = raw.rename({s: t for s, t in column_map.items() if s in raw.columns})
    known = set(TRADES.names)
    unknown = [c for c in renamed.columns if c not in known]
    for name in REQUIRED:
        if name not in renamed.columns:
            close = difflib.get_close_matches(name, unknown, 1, 0.6)
            fix = f" (did you mean {close[0]!r}? pass column_map={{{close[0]!r}: {name!r}}})" if close else ""
            problems.append(Problem("missing_column", f"missing required column {name!r}{fix}; the file's "
                                    f"columns: {raw.columns}"))
    matched_unknown = set()
    for col in unknown:
        close = difflib.get_close_matches(col, [n for n in known if n not in renamed.columns], 1, 0.8)
        if close and close[0] not in REQUIRED:
            matched_unknown.add(col)
            problems.append(Problem("unknown_column", f"unknown column {col!r} (did you mean {close[0]!r}? rename "
                                    f"it or pass column_map={{{col!r}: {close[0]!r}}})"))
    if problems:
        raise TradeInputError(label, problems)
    ignored = [c for c in unknown if c not in matched_unknown]
    if ignored:
        warnings.append(f"ignored {len(ignored)} column(s) not in the trade contract: {ignored}")

    df = renamed.select([c for c in renamed.columns if c in known])
    df, problems, unreadable = _parse_columns(df, table)
    trade_ids = {i + 1: t for i, t in enumerate(df["trade_id"].to_list()) if t is not None}
    df = df.with_columns([pl.lit(None, dtype=c.dtype).alias(c.name) for c in TRADES.columns
                          if c.name not in df.columns])
    df = df.with_columns(pl.col("direction").str.to_uppercase(), pl.col("outcome").str.to_uppercase())
    df = df.select([pl.col(c.name).cast(c.dtype) for c in TRADES.columns]).with_row_index("_row", offset=1)

    for name in REQUIRED:  # a value that could not be read is reported once, by its own problem
        rows = [r for r in df.filter(pl.col(name).is_null())["_row"].to_list() if r not in unreadable.get(name, [])]
        if rows:
            problems.append(Problem("missing_value", f"missing value in required column {name!r}", rows))
    problems += _rule_problems(df, unreadable, coverage, now or utc_now())
    if problems:
        raise TradeInputError(label, problems, trade_ids)

    out = df.drop("_row").with_columns(pl.col("source").fill_null(f"user_export:{label}"))
    if coverage is not None:
        counts = (out.filter(~pl.col("symbol").is_in(list(coverage.symbols())))
                  .group_by("symbol").len().sort("symbol"))
        for sym, n in counts.iter_rows():
            warnings.append(f"symbol {sym!r}: {n} trade(s), but the warehouse has no klines for it "
                            "(their context features will be empty)")
    try:
        validate_trades(out)
    except pa.errors.SchemaErrors as exc:  # a contract rule the explicit checks above do not cover
        found: dict[str, list[int]] = {}
        for check, column, index in exc.failure_cases.select("check", "column", "index").iter_rows():
            rule = f"{check}" + (f" in {column!r}" if column and column != TRADES.name else "")
            found.setdefault(rule, [])
            if index is not None:
                found[rule].append(int(index) + 1)
        raise TradeInputError(label, [Problem("contract", r, rows) for r, rows in found.items()], trade_ids) from None
    return out, warnings


def _suggest(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, 1, 0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _parse_columns(df: pl.DataFrame, table: TableFile) -> tuple[pl.DataFrame, list[Problem], dict[str, list[int]]]:
    """Cast each known column to its contract type; collect the rows whose values cannot be read
    (also returned per column, as 1-based rows)."""
    problems: list[Problem] = []
    unreadable: dict[str, list[int]] = {}
    columns: list[pl.Series] = []
    for col in df.columns:
        series = df[col]
        if col in TIME_COLUMNS:
            parsed, found = parse_times(series)
            rule = "unreadable_time"
        elif col in FLOAT_COLUMNS:
            parsed, found = parse_numbers(series, table.decimal_comma)
            rule = "unreadable_number"
        else:
            text = pl.DataFrame({col: series.cast(pl.Utf8).str.strip_chars()})
            parsed, found, rule = text.select(pl.when(pl.col(col) != "").then(pl.col(col))).to_series(), [], ""
        for what, mask in found:
            rows = (mask.arg_true() + 1).to_list()
            seen = {r: f"{col}={series[r - 1]!r}" for r in rows[:10]}
            problems.append(Problem(rule, f"{what} in {col!r}", rows, seen))
            unreadable.setdefault(col, []).extend(rows)
        columns.append(parsed.alias(col))
    return pl.DataFrame(columns), problems, unreadable


def _rule_problems(df: pl.DataFrame, unreadable: dict[str, list[int]], coverage: MarketCoverage | None,
                   now: datetime) -> list[Problem]:
    """Every row rule with the rows breaking it. `df` has every TRADES column and a 1-based `_row`.

    A value that could not be read or is not finite is reported by its own rule only: the other rules
    skip the rows where a column they look at holds such a value."""
    rules: list[RowRule] = [
        RowRule("unknown_direction", f"unknown direction (expected one of {list(DIRECTIONS)})",
                _DIR.is_in(DIRECTIONS), ("direction",)),
        RowRule("unknown_outcome", f"unknown outcome (expected one of {list(OUTCOMES)})",
                _OUTCOME.is_in(OUTCOMES), ("outcome",)),
        RowRule("unknown_timeframe", "unknown timeframe (Binance notation: 1m, 5m, 15m, 1h, 4h, 1d, ...)",
                pl.col("timeframe").is_in(list(INTERVAL_MS)), ("timeframe",)),
        *(_finite_rule(c) for c in FLOAT_COLUMNS),
        *(_positive_price_rule(c) for c in PRICE_COLUMNS),
        *ROW_RULES,
        *_context_rules(coverage, now),
    ]
    masked = df.with_columns(  # values another rule reports: not finite, or a price that is not positive
        *[(~pl.col(c).is_finite() | (pl.col(c) <= 0 if c in PRICE_COLUMNS else pl.lit(False)))
          .fill_null(False).alias(f"_masked_{c}") for c in FLOAT_COLUMNS],
        *[pl.lit(False).alias(f"_masked_{c}") for c in TRADES.names if c not in FLOAT_COLUMNS])
    masked = masked.with_columns(pl.col(f"_masked_{c}") | pl.col("_row").is_in(rows) for c, rows in unreadable.items())
    if coverage is not None:
        masked = (masked.join(coverage.frame(), on=["symbol", "timeframe"], how="left")
                  .join(coverage.stored(), on="symbol", how="left"))
    problems = [p for rule in rules if (p := _broken(masked, rule))]
    duplicated = df.filter(pl.col("trade_id").is_not_null() & pl.col("trade_id").is_duplicated())["_row"].to_list()
    if duplicated:
        problems.append(Problem("duplicate_trade_id", "duplicate trade_id (each trade needs its own id)", duplicated))
    return problems


def _broken(df: pl.DataFrame, rule: RowRule) -> Problem | None:
    """The rows of `df` breaking `rule`, skipping rows where a column the rule reads is masked (its
    value is reported by another rule), unless the rule is that column's own finiteness rule."""
    roots = [c for c in dict.fromkeys(rule.ok.meta.root_names()) if c in TRADES.names]
    skip = [pl.col(f"_masked_{c}") for c in roots] if rule.name not in ("not_finite", "price_not_positive") else []
    bad_expr = ~rule.ok.fill_null(True)
    if skip:
        bad_expr = bad_expr & ~pl.any_horizontal(skip)
    bad = df.filter(bad_expr)
    if not bad.height:
        return None
    shown = bad.head(10).select(pl.col("_row"), *[pl.col(s) if isinstance(s, str) else s for s in rule.shown])
    seen = {row["_row"]: ", ".join(f"{k}={_value(v)}" for k, v in row.items() if k != "_row")
            for row in shown.iter_rows(named=True)}
    return Problem(rule.name, rule.message, bad["_row"].to_list(), seen)


def _value(v: object) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, datetime):
        return v.isoformat()
    return str(v)
