"""A small read-only HTTP server for a dashboard that polls the cards (docs/cards.md).

    bash scripts/cards_server.sh                      # http://127.0.0.1:8765
    python -m qml_pipeline.view.serve --port 8765 --host 127.0.0.1 [--warehouse DIR]

    GET /cards                    the export: newest context card per symbol + pattern cards of the last 7 days
    GET /cards/context/latest     the newest context card per symbol
    GET /cards/patterns?days=N    the pattern cards decided within N days (default 7) before their as_of
    GET /cards/schema             the JSON Schema every response above follows

Every answer is JSON read from the lake at request time (attached read-only: it never blocks or changes a
pipeline write), in the export's versioned shape (export.py); an error is {"error": "..."} with status 400
(a bad parameter), 404 (an unknown path) or 503 (no warehouse or no card tables yet). The lake is chosen as for
the pipeline: QML_WAREHOUSE_DIR / QML_WAREHOUSE_CATALOG / QML_WAREHOUSE_DATA_PATH, or --warehouse.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import duckdb

from qml_pipeline.store.warehouse import location, open_read_only
from qml_pipeline.view.card_store import RECENT_PATTERN_DAYS, check_days
from qml_pipeline.view.export import load_schema, read_cards_document, to_json

log = logging.getLogger(__name__)
DEFAULT_PORT = 8765


class RequestError(Exception):
    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


def _days(query: dict[str, list[str]]) -> float:
    raw = query.get("days", [None])[-1]
    if raw is None:
        return RECENT_PATTERN_DAYS
    try:
        return check_days(float(raw))
    except ValueError:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"query parameter days={raw!r}: expected a number of days above "
                                                   "0 and at most 3650, e.g. /cards/patterns?days=30") from None


class CardsApp:
    """Routes a request path to a JSON document read from the lake at `root`."""

    def __init__(self, root: str | Path, catalog: str = "", data_path: str = ""):
        self.location = location(root, catalog, data_path)

    def connect(self) -> duckdb.DuckDBPyConnection:
        loc = self.location
        if loc.is_sqlite and not Path(loc.catalog[7:]).exists():
            # checked here: attaching a missing SQLite catalog would create an empty lake
            raise RequestError(HTTPStatus.SERVICE_UNAVAILABLE,
                               f"no warehouse at {loc.root}: run the pipeline first (bash scripts/demo.sh)")
        return open_read_only(loc.root, loc.catalog, loc.data_path)

    def _read(self, **kw: Any) -> dict[str, Any]:
        with contextlib.closing(self.connect()) as con:
            try:
                return read_cards_document(con, **kw)
            except duckdb.CatalogException as exc:
                raise RequestError(HTTPStatus.SERVICE_UNAVAILABLE,
                                   f"the card tables are not in the warehouse yet (materialise context_cards and "
                                   f"pattern_cards): {str(exc).splitlines()[0]}") from None

    def routes(self) -> dict[str, Callable[[dict[str, list[str]]], dict[str, Any]]]:
        return {
            "/cards": lambda q: self._read(pattern_days=_days(q)),
            "/cards/context/latest": lambda q: self._read(patterns=False),
            "/cards/patterns": lambda q: self._read(context=False, pattern_days=_days(q)),
            "/cards/schema": lambda q: load_schema(),
        }

    def handle(self, target: str) -> tuple[HTTPStatus, str]:
        """(status, JSON body) for a GET of `target` (path and query)."""
        url = urlsplit(target)
        path = url.path.rstrip("/") or "/"
        route = self.routes().get(path)
        try:
            if route is None:
                raise RequestError(HTTPStatus.NOT_FOUND, f"no such path {path!r}; try {sorted(self.routes())}")
            return HTTPStatus.OK, to_json(route(parse_qs(url.query)))
        except RequestError as exc:
            return exc.status, json.dumps({"error": str(exc)})


def make_server(app: CardsApp, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        server_version = "qml-cards/1"

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            status, body = app.handle(self.path)
            data = body.encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
            log.info("%s %s", self.address_string(), format % args)

    return ThreadingHTTPServer((host, port), Handler)


def main(argv: list[str] | None = None) -> int:
    from qml_pipeline.config import Settings

    settings = Settings.from_env()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument("--warehouse", default=settings.warehouse_dir, help="warehouse folder (QML_WAREHOUSE_DIR)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    app = CardsApp(args.warehouse, settings.warehouse_catalog, settings.warehouse_data_path)
    server = make_server(app, args.host, args.port)
    print(f"serving the cards of {app.location.describe()} read-only on http://{args.host}:{server.server_port}/cards "
          "(Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
