"""What the fake exchange servers share: epoch milliseconds, queued canned faults, and a record of
every request (path and query) for the tests to count and inspect."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from pytest_httpserver import HTTPServer
from werkzeug import Request, Response


def ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


@dataclass
class CannedFault:
    """A response served instead of the real one by the next request to `path` (any path if None)."""

    status: int
    body: str
    path: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"


class RequestLog:
    """Every request a fake served (path and query) and the faults queued for the next ones."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.faults: list = []

    def count(self, path: str | None = None) -> int:
        return sum(1 for p, _ in self.requests if path is None or p == path)

    def params(self, path: str) -> list[dict[str, str]]:
        return [a for p, a in self.requests if p == path]

    def _record(self, path: str, request: Request) -> tuple[dict[str, str], object | None]:
        """Record the request; its query and the first fault queued for its path (taken off the queue)."""
        args = dict(request.args)
        self.requests.append((path, args))
        fault = next((f for f in self.faults if f.path in (None, path)), None)
        if fault is not None:
            self.faults.remove(fault)
        return args, fault


class RecordingServer(RequestLog):
    """Routes paths of `httpserver` to handlers, recording each request and serving queued faults first."""

    def __init__(self, httpserver: HTTPServer, routes: dict[str, Callable[[dict[str, str]], Response]]):
        super().__init__()
        self.server = httpserver
        for path, handler in routes.items():
            httpserver.expect_request(path).respond_with_handler(self._recorded(path, handler))

    @property
    def url(self) -> str:
        return self.server.url_for("/").rstrip("/")

    def _recorded(self, path: str, handler: Callable[[dict[str, str]], Response]) -> Callable[[Request], Response]:
        def respond(request: Request) -> Response:
            args, fault = self._record(path, request)
            if fault is not None:
                return Response(fault.body, status=fault.status, headers=fault.headers,
                                content_type=fault.content_type)
            return handler(args)
        return respond
