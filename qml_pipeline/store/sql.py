"""Print the DuckDB CLI statements that attach the configured warehouse read-only (scripts/sql.sh).

    python -m qml_pipeline.store.sql [warehouse_dir]
"""

from __future__ import annotations

import sys

from qml_pipeline.config import Settings
from qml_pipeline.store.warehouse import analyst_init_sql


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    settings = Settings.from_env()
    root = argv[0] if argv else settings.warehouse_dir
    try:
        sys.stdout.write(analyst_init_sql(root, settings.warehouse_catalog, settings.warehouse_data_path))
    except FileNotFoundError as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
