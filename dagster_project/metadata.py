"""Turning domain results into Dagster metadata (tables, markdown, column schemas)."""


import dagster as dg
import polars as pl

from qml_pipeline.markdown import markdown_table as render_markdown_table
from qml_pipeline.store.schemas import Table
from qml_pipeline.store.warehouse import Warehouse


def column_schema(table: Table) -> dg.TableSchema:
    return dg.TableSchema(columns=[
        dg.TableColumn(c.name, c.duckdb_type, description=f"{c.doc}" + (f" [{c.unit}]" if c.unit else ""))
        for c in table.columns])


def table_metadata(table: Table) -> dict[str, object]:
    return {"dagster/column_schema": column_schema(table), "warehouse_table": table.name}


def row_count(wh: Warehouse, table: Table) -> dict[str, int]:
    """Dagster's `dagster/row_count` of a table asset: the rows `table` holds after the materialisation (an
    appending table's history included)."""
    return {"dagster/row_count": int(wh.query(f"SELECT count(*) AS n FROM {table.name}")["n"][0])}


def markdown_table(df: pl.DataFrame, max_rows: int = 50, float_digits: int = 4) -> dg.MetadataValue:
    return dg.MetadataValue.md(render_markdown_table(df, max_rows, float_digits))
