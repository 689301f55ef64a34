"""The trade contract (`TRADES`) and the reader for a user's backtest export (CSV or Parquet).

A trade row is one detected pattern and what became of it. Prices are quote currency per unit of the
base asset (USDT for the USD-M perpetuals); R multiples are in units of the initial risk
|entry_price - stop_price| per unit, so +2 means "won twice what was risked".

`read_trade_export` refuses a file with bad rows as a whole: it raises one `TradeInputError` naming
every rule broken and the rows (1-based, header excluded, with their trade_id) that break it, and
returns nothing. Symbols the warehouse has no data for are only warnings.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import pandera.polars as pa
import polars as pl

from qml_pipeline.store.schemas import TRADES, TS
from qml_pipeline.timeutil import INTERVAL_MS

DIRECTIONS = ("BULLISH", "BEARISH")
OUTCOMES = ("WIN", "LOSS", "TIMEOUT", "NOT_FILLED", "INVALIDATED")
FILLED_OUTCOMES = ("WIN", "LOSS", "TIMEOUT")
REFERENCE_SOURCE = "reference_detector"

REQUIRED = ("trade_id", "symbol", "timeframe", "direction", "decision_time", "entry_price",
            "stop_price", "outcome")
TIME_COLUMNS = tuple(c.name for c in TRADES.columns if c.dtype == TS)
PRICE_COLUMNS = ("entry_price", "stop_price", "target_price", "exit_price", "ls_price",
                 "head_price", "low_price")
FLOAT_COLUMNS = tuple(c.name for c in TRADES.columns if c.dtype == pl.Float64)


class TradeInputError(ValueError):
    """A trade export broke the contract. `problems`: list of (rule, 1-based row numbers)."""

    def __init__(self, source: str, problems: list[tuple[str, list[int]]], trade_ids: dict[int, str]):
        self.source = source
        self.problems = problems
        lines = [f"{source}: {len(problems)} problem(s); nothing was read "
                 "(rows are numbered from 1, header excluded)"]
        for rule, rows in problems:
            if rows:
                shown = ", ".join(_row_label(r, trade_ids) for r in rows[:10])
                more = f" and {len(rows) - 10} more" if len(rows) > 10 else ""
                lines.append(f"  - {rule}: {len(rows)} row(s): {shown}{more}")
            else:
                lines.append(f"  - {rule}")
        super().__init__("\n".join(lines))


def _row_label(row: int, trade_ids: dict[int, str]) -> str:
    tid = trade_ids.get(row)
    return f"row {row} (trade_id {tid!r})" if tid is not None else f"row {row}"


# ---------------------------------------------------------------- pandera schema

def _frame_check(expr: pl.Expr, name: str) -> pa.Check:
    return pa.Check(lambda data: data.lazyframe.select(expr), name=name)


# Each row rule as a polars expression that is True where a row is fine (NULLs count as fine: the
# columns they touch are optional, and required columns are checked for NULLs separately).
ROW_RULES: dict[str, pl.Expr] = {
    "exit_time before entry_time":
        (pl.col("exit_time") >= pl.col("entry_time")).fill_null(True),
    "decision_time after entry_time (a trade cannot fill before the pattern is known)":
        (pl.col("decision_time") <= pl.col("entry_time")).fill_null(True),
    "stop on the wrong side of entry (BULLISH stop must be below entry_price, BEARISH above)":
        pl.when(pl.col("direction") == "BULLISH").then(pl.col("stop_price") < pl.col("entry_price"))
        .when(pl.col("direction") == "BEARISH").then(pl.col("stop_price") > pl.col("entry_price"))
        .otherwise(True).fill_null(True),
}


def trades_schema() -> pa.DataFrameSchema:
    """The pandera (polars) schema of TRADES: types, allowed values and the row rules."""
    checks: dict[str, list[pa.Check]] = {
        "direction": [pa.Check.isin(list(DIRECTIONS))],
        "outcome": [pa.Check.isin(list(OUTCOMES))],
        "base_confidence": [pa.Check.in_range(0.0, 1.0)],
        "fees_r": [pa.Check.ge(0.0)],
        **{p: [pa.Check.gt(0.0)] for p in PRICE_COLUMNS},
    }
    columns = {c.name: pa.Column(c.dtype, checks=checks.get(c.name, []), nullable=c.nullable)
               for c in TRADES.columns}
    frame_checks = [_frame_check(expr, name) for name, expr in ROW_RULES.items()]
    frame_checks.append(_frame_check(
        pl.col("r_multiple").is_null() | pl.col("outcome").is_in(list(FILLED_OUTCOMES)),
        "r_multiple only for filled trades"))
    return pa.DataFrameSchema(columns, checks=frame_checks, unique=["trade_id"], strict=True,
                              name=TRADES.name)


def validate_trades(df: pl.DataFrame) -> None:
    """Raise pandera's SchemaErrors unless `df` (already in TRADES shape) meets the contract."""
    trades_schema().validate(df, lazy=True)


# ---------------------------------------------------------------- the export reader

def read_trade_export(path: str | Path, column_map: dict[str, str] | None = None,
                      known_symbols: set[str] | None = None) -> tuple[pl.DataFrame, list[str]]:
    """Read a user's trade export (CSV or Parquet, by suffix) into the TRADES shape.

    `column_map` maps the file's column names to TRADES names ({"Entry": "entry_price"}).
    Timestamps must be ISO-8601 with an offset or 'Z' (or tz-aware Parquet timestamps); they are
    converted to UTC. `known_symbols`: symbols the warehouse has data for; others produce warnings.
    Returns (frame conforming to TRADES, warnings). Raises TradeInputError naming every problem.
    """
    path = Path(path)
    label = path.name
    raw = _read_file(path)
    warnings: list[str] = []

    problems: list[tuple[str, list[int]]] = []
    column_map = dict(column_map or {})
    for src in column_map:
        if src not in raw.columns:
            problems.append((f"column_map names column {src!r}, which the file does not have"
                             + _suggest(src, raw.columns), []))
    for src, dst in column_map.items():
        if src in raw.columns and dst in raw.columns and src != dst:
            problems.append((f"column_map maps {src!r} to {dst!r}, but the file already has {dst!r}", []))
    if problems:
        raise TradeInputError(label, problems, {})
    renamed = raw.rename({s: t for s, t in column_map.items() if s in raw.columns})
    known = set(TRADES.names)
    unknown = [c for c in renamed.columns if c not in known]
    for name in REQUIRED:
        if name not in renamed.columns:
            hint = _suggest(name, unknown)
            fix = (f"; pass column_map={{{difflib.get_close_matches(name, unknown, 1, 0.6)[0]!r}: {name!r}}}"
                   if hint else "")
            problems.append((f"missing required column {name!r}{hint}{fix}", []))
    matched_unknown = set()
    for col in unknown:
        close = difflib.get_close_matches(col, [n for n in known if n not in renamed.columns], 1, 0.8)
        if close and close[0] not in REQUIRED:
            matched_unknown.add(col)
            problems.append((f"unknown column {col!r} (did you mean {close[0]!r}? rename it or pass "
                             f"column_map={{{col!r}: {close[0]!r}}})", []))
    if problems:
        raise TradeInputError(label, problems, {})
    ignored = [c for c in unknown if c not in matched_unknown]
    if ignored:
        warnings.append(f"ignored {len(ignored)} column(s) not in the trade contract: {ignored}")

    df = renamed.select([c for c in renamed.columns if c in known])
    if "trade_id" in df.columns:
        df = df.with_columns(pl.col("trade_id").cast(pl.Utf8))
    trade_ids = {i + 1: t for i, t in enumerate(df["trade_id"].to_list()) if t is not None}

    df, problems = _parse_columns(df)
    df = df.with_row_index("_row", offset=1)

    flagged = {r for _, rows in problems for r in rows}  # unreadable values are reported once
    for name in REQUIRED:
        bad = [r for r in df.filter(pl.col(name).is_null())["_row"].to_list() if r not in flagged]
        if bad:
            problems.append((f"missing value in required column {name!r}", bad))

    df = df.with_columns(pl.col("direction").str.strip_chars().str.to_uppercase(),
                         pl.col("outcome").str.strip_chars().str.to_uppercase(),
                         pl.col("symbol").str.strip_chars(),
                         pl.col("timeframe").str.strip_chars())
    problems += _row_problems(df)
    if problems:
        raise TradeInputError(label, problems, trade_ids)

    if "source" not in df.columns:
        df = df.with_columns(pl.lit(f"user_export:{label}").alias("source"))
    else:
        df = df.with_columns(pl.col("source").fill_null(f"user_export:{label}"))

    if known_symbols is not None:
        counts = (df.filter(~pl.col("symbol").is_in(list(known_symbols)))
                  .group_by("symbol").len().sort("symbol"))
        for sym, n in counts.iter_rows():
            warnings.append(f"symbol {sym!r}: {n} trade(s), but the warehouse has no data for it "
                            "(their context features will be empty)")

    out = df.drop("_row")
    out = out.with_columns([pl.lit(None, dtype=c.dtype).alias(c.name) for c in TRADES.columns
                            if c.name not in out.columns])
    out = out.select([pl.col(c.name).cast(c.dtype) for c in TRADES.columns])
    try:
        validate_trades(out)
    except pa.errors.SchemaErrors as exc:  # a contract rule the explicit checks above do not cover
        fc = exc.failure_cases
        found: dict[str, list[int]] = {}
        for check, column, index in fc.select("check", "column", "index").iter_rows():
            rule = f"{check}" + (f" in {column!r}" if column and column != TRADES.name else "")
            found.setdefault(rule, [])
            if index is not None:
                found[rule].append(int(index) + 1)
        raise TradeInputError(label, list(found.items()), trade_ids) from None
    return out, warnings


def _read_file(path: Path) -> pl.DataFrame:
    suffix = path.suffix.lower()
    if not path.exists():
        raise FileNotFoundError(f"trade export {path} does not exist")
    if suffix == ".csv":
        return pl.read_csv(path, infer_schema=False)
    if suffix in (".parquet", ".pq"):
        return pl.read_parquet(path)
    raise TradeInputError(path.name, [(f"unsupported file type {suffix!r}: expected .csv or .parquet",
                                       [])], {})


def _suggest(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, 1, 0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


_TZ_SUFFIX = r"(Z|[+-]\d{2}(:?\d{2})?)$"
_ISO_FORMATS = ("%Y-%m-%dT%H:%M:%S%.f%z", "%Y-%m-%dT%H:%M%z")


def _parse_columns(df: pl.DataFrame) -> tuple[pl.DataFrame, list[tuple[str, list[int]]]]:
    """Cast each known column to its contract type; collect rows whose values cannot be read."""
    problems: list[tuple[str, list[int]]] = []
    exprs: list[pl.Expr] = []
    for col in df.columns:
        dtype = df.schema[col]
        if col in TIME_COLUMNS:
            if isinstance(dtype, pl.Datetime):
                if dtype.time_zone is None:
                    bad = [i + 1 for i in
                           df.select(pl.arg_where(pl.col(col).is_not_null())).to_series().to_list()]
                    problems.append((f"timestamps without a time zone in {col!r} (naive times are "
                                     "not assumed to be UTC: store them tz-aware)", bad))
                    exprs.append(pl.col(col).dt.replace_time_zone("UTC").dt.cast_time_unit("ms"))
                else:
                    exprs.append(pl.col(col).dt.convert_time_zone("UTC").dt.cast_time_unit("ms"))
                continue
            text = pl.col(col).cast(pl.Utf8).str.strip_chars()
            present = text.is_not_null() & (text != "")
            naive = df.select(pl.arg_where(present & ~text.str.contains(_TZ_SUFFIX)))
            naive_rows = [i + 1 for i in naive.to_series().to_list()]
            if naive_rows:
                problems.append((f"timestamps without a time zone in {col!r} (write an offset such "
                                 "as +00:00 or Z; naive times are not assumed to be UTC)", naive_rows))
            parsed = _parse_iso(text)
            unparsed = df.select(pl.arg_where(present & text.str.contains(_TZ_SUFFIX)
                                              & parsed.is_null()))
            bad_rows = [i + 1 for i in unparsed.to_series().to_list()]
            if bad_rows:
                problems.append((f"timestamps in {col!r} that are not ISO-8601 "
                                 "(expected e.g. 2024-03-01T12:00:00+00:00)", bad_rows))
            exprs.append(pl.when(present).then(parsed).otherwise(None).alias(col))
        elif col in FLOAT_COLUMNS:
            if dtype.is_numeric():
                exprs.append(pl.col(col).cast(pl.Float64))
                continue
            text = pl.col(col).cast(pl.Utf8).str.strip_chars()
            present = text.is_not_null() & (text != "")
            num = text.cast(pl.Float64, strict=False)
            bad = df.select(pl.arg_where(present & num.is_null())).to_series().to_list()
            if bad:
                problems.append((f"values in {col!r} that are not numbers", [i + 1 for i in bad]))
            exprs.append(pl.when(present).then(num).otherwise(None).alias(col))
        else:
            text = pl.col(col).cast(pl.Utf8)
            exprs.append(pl.when(text.str.strip_chars() != "").then(text).otherwise(None).alias(col))
    return df.with_columns(exprs), problems


def _parse_iso(text: pl.Expr) -> pl.Expr:
    norm = text.str.replace(r"Z$", "+00:00").str.replace(" ", "T", literal=True)
    return pl.coalesce([norm.str.to_datetime(f, strict=False, time_unit="ms", time_zone="UTC")
                        for f in _ISO_FORMATS])


def _row_problems(df: pl.DataFrame) -> list[tuple[str, list[int]]]:
    """The semantic row rules, each with the rows breaking it (df has a 1-based `_row` column)."""
    checks: dict[str, pl.Expr] = {
        f"unknown direction (expected one of {list(DIRECTIONS)})": pl.col("direction").is_in(DIRECTIONS),
        f"unknown outcome (expected one of {list(OUTCOMES)})": pl.col("outcome").is_in(OUTCOMES),
        "unknown timeframe (Binance notation: 1m, 5m, 15m, 1h, 4h, 1d, ...)":
            pl.col("timeframe").is_in(list(INTERVAL_MS)),
    }
    for p in PRICE_COLUMNS:
        if p in df.columns:
            checks[f"NaN or non-positive price in {p!r}"] = (
                pl.col(p).is_null() | (pl.col(p).is_not_nan() & (pl.col(p) > 0)))
    for name, expr in ROW_RULES.items():
        if all(c in df.columns for c in expr.meta.root_names()):
            checks[name] = expr
    if "base_confidence" in df.columns:
        checks["base_confidence outside 0..1"] = pl.col("base_confidence").is_null() | (
            pl.col("base_confidence").is_between(0.0, 1.0))
    checks["duplicate trade_id"] = pl.col("trade_id").is_null() | ~pl.col("trade_id").is_duplicated()
    names = list(checks)
    # A NaN price is reported once, by its own rule, not again by every comparison it falsifies.
    prices = [pl.col(p).fill_nan(None) for p in PRICE_COLUMNS if p in df.columns]
    nan_free = df.with_columns(prices)
    flags = pl.concat([
        df.select(pl.col("_row"), *[e.alias(f"_ok{i}") for i, e in enumerate(checks.values())
                                    if names[i] not in ROW_RULES]),
        nan_free.select([e.alias(f"_ok{i}") for i, e in enumerate(checks.values()) if names[i] in ROW_RULES]),
    ], how="horizontal")
    problems = []
    for i, name in enumerate(names):
        bad = flags.filter(~pl.col(f"_ok{i}").fill_null(True))["_row"].to_list()
        if bad:
            problems.append((name, bad))
    return problems
