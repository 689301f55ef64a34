"""Markdown tables of frames, for Dagster metadata and notes (one renderer for the project)."""

from __future__ import annotations

from datetime import datetime

import polars as pl


def cell(value: object, float_digits: int = 4) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    if isinstance(value, float):
        return f"{value:.{float_digits}g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(df: pl.DataFrame, max_rows: int = 50, float_digits: int = 4,
                   header: list[str] | None = None) -> str:
    """A GitHub-flavoured markdown table of `df` (first `max_rows` rows, then a count of the rest)."""
    if df.is_empty():
        return "_(no rows)_"
    shown = df.head(max_rows)
    names = header or shown.columns
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    lines += ["| " + " | ".join(cell(v, float_digits) for v in row) + " |" for row in shown.iter_rows()]
    if df.height > max_rows:
        lines.append(f"\n_{df.height - max_rows} more rows_")
    return "\n".join(lines)
