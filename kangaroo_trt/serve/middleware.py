"""ASGI middleware of the server: a limit on request bodies, and the count of answered requests for /metrics."""

from __future__ import annotations

from typing import Callable

from starlette.responses import Response

from .metrics import ServerMetrics

PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics")


class LimitBody:
    """A request body over ``max_bytes`` gets ``too_large()`` (a 413) and never reaches the application.

    A declared Content-Length over the limit is refused before any of the body is kept; a chunked body is counted as it
    arrives. The rest of a refused body is read and dropped, so that the client, still sending, can read the answer.
    """

    def __init__(self, app, max_bytes: int, too_large: Callable[[], Response]) -> None:
        self.app, self.max_bytes, self.too_large = app, max_bytes, too_large

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(scope, receive, send)
        kept, size = [], 0
        while True:
            message = await receive()
            kept.append(message)
            if message["type"] != "http.request":  # the client left
                break
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                return await self._refuse(scope, receive, send, more=message.get("more_body", False))
            if not message.get("more_body", False):
                break

        async def replay():
            return kept.pop(0) if kept else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope, receive, send, more: bool = True) -> None:
        while more:
            message = await receive()
            more = message["type"] == "http.request" and message.get("more_body", False)
        await self.too_large()(scope, receive, send)


class CountRequests:
    """Count answered requests by path and status code (a stream counts as its status line: 200).

    An exception that leaves the application unanswered is answered 500 by Starlette's outermost middleware, so it
    counts as 500; a request cancelled before any answer (its client left, or the server stopped) counts as 499.
    """

    def __init__(self, app, metrics: ServerMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = {"code": None}

        async def send_status(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        except Exception:
            status["code"] = status["code"] or 500
            raise
        finally:
            path = scope["path"] if scope["path"] in PATHS else "other"
            self.metrics.requests.labels(path, str(status["code"] or 499)).inc()
