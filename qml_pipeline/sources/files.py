"""The one guard around reading a user's or a tool's file: CSV, Parquet or Feather (Arrow IPC).

Every reader of a local file (the trade export, the Freqtrade data directory, the sample's open
interest) goes through `read_table`, and parses numbers and times with `parse_numbers` and
`parse_times`. Whatever goes wrong is a `FileInputError` naming the file, the line or row when there
is one, the column, what was seen and what is expected; a raw polars or Arrow message never reaches
the user alone.

What is detected rather than refused:
- CSV separator: ',', ';' or a tab, from the header line; with ';' or a tab, a decimal comma
  ('1,5') is detected from the values and read as '1.5' ('.' is then refused in numbers as
  ambiguous: it could be a thousands separator).
- A UTF-8 byte-order mark. Other encodings are refused with the line and byte that is not UTF-8.
- Times: ISO-8601 with an offset ('Z', '+00:00', '+0000', '+00'), epoch seconds, milliseconds or
  microseconds (told apart by magnitude: seconds from 1e8, milliseconds from 1e11, microseconds
  from 1e14), tz-aware Parquet/Feather timestamps, and dates (a Parquet Date or 'YYYY-MM-DD': 00:00
  UTC of that day). Times without an offset are refused: they are not assumed to be UTC.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from qml_pipeline.errors import InputError
from qml_pipeline.store.schemas import TS

CSV_SUFFIXES = (".csv", ".txt")
PARQUET_SUFFIXES = (".parquet", ".pq")
FEATHER_SUFFIXES = (".feather", ".arrow", ".ipc")
SEPARATORS = (",", ";", "\t")
SHOWN = 5  # values quoted per problem
_READ_ERRORS = (pl.exceptions.PolarsError, OSError)  # what polars raises for a damaged file

# Epoch magnitudes: below 1e8 s is before 1973 (a date written as 20240301 is 2e7): refused.
EPOCH_UNITS = ((10 ** 8, 1000.0), (10 ** 11, 1.0), (10 ** 14, 0.001), (10 ** 17, None))
_EPOCH_TEXT = r"^[+-]?\d+(\.\d+)?$"
_DECIMAL_COMMA = r"^[+-]?\d+,\d+([eE][+-]?\d+)?$"
_DATE_ONLY = r"^\d{4}-\d{2}-\d{2}$"
_HAS_OFFSET = r"\d{2}:\d{2}(:\d{2}(\.\d+)?)?\s*(Z|z|[+-]\d{2}(:?\d{2})?)$"
_ISO_FORMATS = ("%Y-%m-%dT%H:%M:%S%.f%z", "%Y-%m-%dT%H:%M%z")


class FileInputError(InputError):
    """A file that cannot be read as what it should hold. The message names the file first."""

    def __init__(self, path: str | Path, problem: str, *, line: int | None = None, column: str | None = None,
                 seen: str | None = None, expected: str | None = None):
        self.path = Path(path)
        self.line = line
        self.column = column
        where = ", ".join(p for p in (f"line {line}" if line else "",
                                      f"column {column!r}" if column else "") if p)
        message = f"{path}" + (f" ({where})" if where else "") + f": {problem}"
        if seen is not None:
            message += f"; seen {seen}"
        if expected:
            message += f"; expected {expected}"
        super().__init__(message)


@dataclass(frozen=True)
class TableFile:
    """A file read by `read_table`. CSV columns are all text (parse them with parse_numbers and
    parse_times); Parquet and Feather keep their stored types."""

    path: Path
    frame: pl.DataFrame
    kind: str               # csv | parquet | feather
    separator: str = ","
    decimal_comma: bool = False

    def line_of(self, row: int) -> int | None:
        """The file line of a 0-based data row (CSV: the header is line 1), None for binary files."""
        return row + 2 if self.kind == "csv" else None

    def where(self, row: int) -> str:
        line = self.line_of(row)
        return f"line {line}" if line is not None else f"row {row + 1}"


def read_table(path: str | Path, *, what: str, allow_empty: bool = False) -> TableFile:
    """Read a CSV, Parquet or Feather file (by suffix) holding `what` ("trade export", ...).

    Raises FileInputError for a missing, empty (0 bytes or header only), undecodable, truncated or
    corrupt file, naming the file and, where there is one, the line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileInputError(path, f"no such {what} file" if not path.exists() else f"is not a file ({what} expected)")
    suffix = path.suffix.lower()
    kinds = {**{s: "csv" for s in CSV_SUFFIXES}, **{s: "parquet" for s in PARQUET_SUFFIXES},
             **{s: "feather" for s in FEATHER_SUFFIXES}}
    kind = kinds.get(suffix)
    if kind is None:
        raise FileInputError(path, f"unsupported file type {suffix!r} for a {what}",
                             expected=".csv, .parquet or .feather")
    size = path.stat().st_size
    if size == 0:
        raise FileInputError(path, f"is empty (0 bytes): no {what} in it",
                             expected="a header line and at least one row" if kind == "csv" else f"a {kind} file")
    table = _read_csv(path) if kind == "csv" else _read_binary(path, kind)
    if table.frame.height == 0 and not allow_empty:
        has = "a header but no rows" if kind == "csv" else f"columns {table.frame.columns} but no rows"
        raise FileInputError(path, f"holds {has}: an empty {what} is refused, so nothing stored is replaced "
                             "by nothing", expected="at least one row")
    return table


def _read_binary(path: Path, kind: str) -> TableFile:
    try:
        frame = pl.read_parquet(path) if kind == "parquet" else pl.read_ipc(path)
    except _READ_ERRORS as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        name = "Parquet" if kind == "parquet" else "Feather (Arrow IPC)"
        raise FileInputError(path, f"is not a readable {name} file ({path.stat().st_size} bytes; the reader said: "
                             f"{detail})", expected=f"a complete {name} file: was it truncated or "
                             "overwritten? export or download it again") from None
    return TableFile(path, frame, kind)


def _read_csv(path: Path) -> TableFile:
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        guess = _guess_encoding(raw)
        raise FileInputError(path, f"is not UTF-8 text: byte 0x{raw[exc.start]:02X}, byte {column} of the line, "
                             f"cannot be decoded{guess}", line=line,
                             expected="UTF-8: save the file as UTF-8 (in Excel: 'CSV UTF-8')") from None
    header = text.split("\n", 1)[0]
    if not header.strip():
        raise FileInputError(path, "line 1 is blank", line=1, expected="a header line naming the columns")
    separator = max(SEPARATORS, key=lambda s: _count_outside_quotes(header, s))
    try:
        frame = pl.read_csv(raw, separator=separator, infer_schema=False, truncate_ragged_lines=False)
    except _READ_ERRORS as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FileInputError(path, f"cannot be read as CSV with separator {separator!r} (the reader said: "
                             f"{detail})", expected="one header line and rows with as many fields") from None
    frame = frame.rename({c: c.strip() for c in frame.columns})
    decimal_comma = separator != "," and any(
        frame[c].str.strip_chars().str.contains(_DECIMAL_COMMA).any() for c in frame.columns)
    return TableFile(path, frame, "csv", separator, decimal_comma)


def _guess_encoding(raw: bytes) -> str:
    try:
        raw.decode("cp1252")
    except UnicodeDecodeError:
        return ""
    return " (it looks Latin-1 / Windows-1252 encoded)"


def _count_outside_quotes(line: str, sep: str) -> int:
    return sum(part.count(sep) for part in line.split('"')[::2])


# ---------------------------------------------------------------- columns

def require_columns(table: TableFile, columns: Sequence[str], what: str) -> None:
    """Raise naming the file, each absent column, the columns seen and the closest one."""
    absent = [c for c in columns if c not in table.frame.columns]
    if not absent:
        return
    hints = []
    for name in absent:
        close = difflib.get_close_matches(name, table.frame.columns, 1, 0.6)
        hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    separator = f" (separator {table.separator!r})" if table.kind == "csv" else ""
    raise FileInputError(table.path, f"{what} lacks column(s) {', '.join(hints)}",
                         seen=f"columns {table.frame.columns}{separator}",
                         expected=f"columns {list(columns)}")


def quoted(values: Sequence[object], limit: int = SHOWN) -> str:
    shown = ", ".join(repr(v) for v in values[:limit])
    return shown + (f" and {len(values) - limit} more" if len(values) > limit else "")


# ---------------------------------------------------------------- numbers

def parse_numbers(series: pl.Series, decimal_comma: bool = False) -> tuple[pl.Series, list[tuple[str, pl.Series]]]:
    """`series` as Float64, and the problems as (what is wrong, mask of the rows it applies to).

    Text: blank is NULL; 'inf', 'NaN' and '1e400' parse (to inf/NaN: the finiteness rules name them).
    With `decimal_comma`, '1,5' is 1.5 and a value holding '.' is refused as ambiguous.
    """
    if series.dtype.is_numeric():
        return series.cast(pl.Float64), []
    if series.dtype != pl.Utf8:
        return pl.Series(series.name, [None] * len(series), pl.Float64), [
            (f"a {series.dtype} column, not numbers", series.is_not_null())]
    text = series.str.strip_chars()
    present = text.is_not_null() & (text != "")
    problems: list[tuple[str, pl.Series]] = []
    ambiguous = pl.Series([False] * len(series))
    if decimal_comma:
        ambiguous = present & text.str.contains(".", literal=True)
        if ambiguous.any():
            problems.append(("numbers holding '.' in a decimal-comma file ('.' could be a thousands separator "
                             "or a decimal point: write 1234,5, or save the file with ',' separators and '.' "
                             "decimals)", ambiguous))
        text = text.str.replace(",", ".", literal=True)
    numbers = text.cast(pl.Float64, strict=False)
    bad = present & numbers.is_null() & ~ambiguous
    if bad.any():
        problems.append(("values that are not numbers", bad))
    return numbers.set(~present | ambiguous, None).alias(series.name), problems


def numbers_or_raise(table: TableFile, column: str, expected: str = "a decimal number") -> pl.Series:
    """The column as Float64; raises naming the first rows whose value is not a number."""
    numbers, problems = parse_numbers(table.frame[column], table.decimal_comma)
    for what, mask in problems:
        raise_for_rows(table, column, what, mask, expected)
    return numbers


def raise_for_rows(table: TableFile, column: str, what: str, mask: pl.Series, expected: str) -> None:
    rows = mask.arg_true().to_list()
    seen = table.frame[column].gather(rows[:SHOWN]).to_list()
    where = ", ".join(table.where(r) for r in rows[:SHOWN]) + (f" and {len(rows) - SHOWN} more" if len(rows) > SHOWN else "")
    raise FileInputError(table.path, f"{len(rows)} {what} ({where})", line=table.line_of(rows[0]),
                         column=column, seen=quoted(seen), expected=expected)


# ---------------------------------------------------------------- times

def parse_times(series: pl.Series) -> tuple[pl.Series, list[tuple[str, pl.Series]]]:
    """`series` as UTC millisecond timestamps, and the problems as (what is wrong, rows mask).

    Accepted: tz-aware timestamps, dates (00:00 UTC), epoch numbers (seconds, milliseconds or
    microseconds by magnitude) and text holding either ISO-8601 with an offset, a date, or an epoch
    number. Refused: times without an offset, numbers too small to be an epoch, unreadable text.
    """
    dtype = series.dtype
    name = series.name
    if isinstance(dtype, pl.Datetime):
        if dtype.time_zone is None:
            return (series.dt.replace_time_zone("UTC").dt.cast_time_unit("ms"),
                    [("timestamps without a time zone (a stored timestamp type with no zone: store it "
                      "tz-aware, e.g. UTC; naive times are not assumed to be UTC)", series.is_not_null())])
        return series.dt.convert_time_zone("UTC").dt.cast_time_unit("ms"), []
    if dtype == pl.Date:
        return series.cast(pl.Datetime("ms")).dt.replace_time_zone("UTC"), []
    if dtype.is_numeric():
        return _epoch(series.cast(pl.Float64), name)
    if dtype != pl.Utf8:
        return (pl.Series(name, [None] * len(series), TS),
                [(f"a {dtype} column, not times", series.is_not_null())])
    text = series.str.strip_chars()
    present = text.is_not_null() & (text != "")
    is_epoch = present & text.str.contains(_EPOCH_TEXT)
    is_date = present & text.str.contains(_DATE_ONLY)
    is_iso = present & ~is_epoch & ~is_date
    epoch, problems = _epoch(text.cast(pl.Float64, strict=False).set(~is_epoch, None), name)
    norm = (text.str.replace(r"[zZ]$", "+00:00").str.replace(r"(\d{2}:\d{2}(:\d{2}(\.\d+)?)?[+-]\d{2})$", "${1}:00")
            .str.replace(r"^(\d{4}-\d{2}-\d{2}) ", "${1}T"))
    iso = pl.select(pl.coalesce([norm.str.to_datetime(f, strict=False, time_unit="ms", time_zone="UTC")
                                 for f in _ISO_FORMATS])).to_series()
    dates = norm.str.to_date("%Y-%m-%d", strict=False).cast(pl.Datetime("ms")).dt.replace_time_zone("UTC")
    naive = is_iso & ~text.str.contains(_HAS_OFFSET)
    unreadable = (is_iso & ~naive & iso.is_null()) | (is_date & dates.is_null())
    if naive.any():
        problems.append(("timestamps without a time zone (write an offset such as +00:00 or Z; naive "
                         "times are not assumed to be UTC)", naive))
    if unreadable.any():
        problems.append(("timestamps that are not ISO-8601 (expected e.g. 2024-03-01T12:00:00+00:00, "
                         "or epoch seconds or milliseconds)", unreadable))
    parsed = (pl.select(pl.when(is_epoch).then(epoch).when(is_date).then(dates).when(is_iso & ~naive).then(iso))
              .to_series().alias(name).cast(TS))
    return parsed, problems


def _epoch(numbers: pl.Series, name: str) -> tuple[pl.Series, list[tuple[str, pl.Series]]]:
    """Epoch numbers as timestamps: the unit follows from the magnitude (EPOCH_UNITS)."""
    v = pl.col("v")
    expr = pl.when(v < 0).then(None)
    for (low, factor), (high, _) in zip(EPOCH_UNITS, EPOCH_UNITS[1:]):
        expr = expr.when((v >= low) & (v < high)).then(v * factor)
    ms = pl.DataFrame({"v": numbers}).select(expr.otherwise(None).round(0).cast(pl.Int64)).to_series()
    bad = numbers.is_not_null() & ms.is_null()
    problems = []
    if bad.any():
        problems.append(("numbers that are not epoch times in seconds, milliseconds or microseconds (below "
                         "1e8 is before 1973: a date written as 20240301? write 2024-03-01)", bad))
    return ms.cast(pl.Datetime("ms")).dt.replace_time_zone("UTC").alias(name), problems


def times_or_raise(table: TableFile, column: str) -> pl.Series:
    """The column as UTC timestamps; raises naming the first rows that cannot be read."""
    times, problems = parse_times(table.frame[column])
    for what, mask in problems:
        raise_for_rows(table, column, what, mask,
                       "ISO-8601 with an offset (2024-03-01T12:00:00+00:00), epoch seconds or milliseconds")
    return times
