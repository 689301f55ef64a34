"""Turning domain results into Dagster metadata (tables, markdown, column schemas)."""


import dagster as dg
import polars as pl

from qml_pipeline.schemas import Table


def column_schema(table: Table) -> dg.TableSchema:
    return dg.TableSchema(columns=[
        dg.TableColumn(c.name, c.duckdb_type, description=f"{c.doc}" + (f" [{c.unit}]" if c.unit else ""))
        for c in table.columns])


def table_metadata(table: Table) -> dict[str, object]:
    return {"dagster/column_schema": column_schema(table), "warehouse_table": table.name}


def markdown_table(df: pl.DataFrame, max_rows: int = 50, float_digits: int = 4) -> dg.MetadataValue:
    if df.is_empty():
        return dg.MetadataValue.md("_(no rows)_")
    shown = df.head(max_rows)
    header = "| " + " | ".join(shown.columns) + " |\n|" + "---|" * len(shown.columns) + "\n"
    lines = []
    for row in shown.iter_rows():
        cells = [f"{v:.{float_digits}g}" if isinstance(v, float) else ("" if v is None else str(v)) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    more = f"\n\n_{df.height - max_rows} more rows_" if df.height > max_rows else ""
    return dg.MetadataValue.md(header + "\n".join(lines) + more)
