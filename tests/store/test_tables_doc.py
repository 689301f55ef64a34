from qml_pipeline.store.tables_doc import DOC_PATH, render


def test_warehouse_doc_is_up_to_date() -> None:
    assert DOC_PATH.read_text() == render(), "run: python -m qml_pipeline.store.tables_doc"


def test_every_column_has_a_meaning() -> None:
    from qml_pipeline.store import schemas

    for table in schemas.TABLES.values():
        for column in table.columns:
            assert column.doc, f"{table.name}.{column.name} has no description"
