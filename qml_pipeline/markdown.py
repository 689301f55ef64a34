"""Markdown tables of frames, for Dagster metadata and notes (one renderer for the project)."""

from __future__ import annotations

import polars as pl

from qml_pipeline.formats import cell_text


def escape(text: object) -> str:
    """Text safe inside a markdown table cell (pipes escaped, one line)."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def cell(value: object, float_digits: int = 4) -> str:
    return escape(cell_text(value, float_digits=float_digits) or "")


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
