"""The FastAPI application: OpenAI's chat completions, completions and models routes, health and metrics.

Each generation request leases an engine from the pool (or waits in its bounded queue, or gets a 429 at once),
runs on it, and gives it back when it ends, fails, or its client goes away: a streamed response notices the
disconnect (Starlette cancels it), a plain one watches for it while it waits.

Shutdown (``begin_shutdown``, called by ``server.py`` when uvicorn starts shutting down): queued requests get 503 at
once; running ones get ``shutdown_timeout`` seconds to finish, then their generations are stopped and they end with a
503 (plain) or an error event and ``[DONE]`` (streams).
"""

from __future__ import annotations

import asyncio
import logging
import math
from contextlib import asynccontextmanager
from dataclasses import dataclass
from time import perf_counter
from typing import Any, AsyncIterator

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from ..config import MODES
from ..errors import ConfigError, KangarooError
from .generation import ContextTooLong, Generation, check_chars
from .metrics import ServerMetrics
from .middleware import CountRequests, LimitBody
from .openai_format import Shape, error_body, sse
from .pool import EnginePool, Lease, QueueFull, ShuttingDown
from .schemas import ChatCompletionRequest, CompletionRequest, Unsupported

log = logging.getLogger("kangaroo_trt.serve")
MB = 1 << 20


@dataclass
class Settings:
    model_name: str
    mode: str = MODES[0]  # kangaroo
    shutdown_timeout: float = 30.0  # seconds in-flight requests get to finish on shutdown before they are stopped
    max_body_mb: int = 4  # larger request bodies get 413

    def __post_init__(self) -> None:
        if not (isinstance(self.shutdown_timeout, (int, float)) and math.isfinite(self.shutdown_timeout)
                and self.shutdown_timeout >= 0):
            raise ConfigError(f"--shutdown-timeout must be a finite number of seconds >= 0, got {self.shutdown_timeout}")
        if not (isinstance(self.max_body_mb, int) and self.max_body_mb >= 1):
            raise ConfigError(f"--max-body-mb must be a whole number of megabytes >= 1, got {self.max_body_mb}")


class ModelNotFound(Exception):
    pass


class ClientGone(Exception):
    """The client disconnected before its response was ready."""


def create_app(pool: EnginePool, settings: Settings) -> FastAPI:
    metrics = ServerMetrics(pool)
    deadline: list[asyncio.TimerHandle] = []

    def begin_shutdown() -> None:
        """Fail the queued requests now; stop the running generations after ``shutdown_timeout`` seconds."""
        pool.shut_down()
        deadline.append(asyncio.get_running_loop().call_later(settings.shutdown_timeout, pool.interrupt))

    @asynccontextmanager
    async def lifespan(_app):
        yield
        pool.closing = True  # uvicorn has stopped accepting, finished or cancelled requests; free the engines
        if not await pool.wait_idle(settings.shutdown_timeout):
            log.warning("%d engine(s) still busy at shutdown", pool.busy)
        for handle in deadline:
            handle.cancel()
        pool.close()

    app = FastAPI(title="kangaroo-serve", lifespan=lifespan)
    app.state.pool, app.state.metrics, app.state.settings = pool, metrics, settings
    app.state.begin_shutdown = begin_shutdown
    error = _error_response(metrics)
    too_large = f"the request body is larger than this server's limit of {settings.max_body_mb} MB: send less"
    app.add_middleware(LimitBody, max_bytes=settings.max_body_mb * MB,
                       too_large=lambda: error(413, "bad_request", too_large, code="request_too_large"))
    app.add_middleware(CountRequests, metrics=metrics)  # outermost of ours: counts the 413s too
    _add_error_handlers(app, error)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        return await _complete(request, body, body.prompt(), True, "messages")

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        return await _complete(request, body, body.text_or_ids(), False, "prompt")

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": settings.model_name, "object": "model", "created": 0,
                                            "owned_by": "kangaroo-trt"}]}

    @app.get("/health")
    async def health():
        body = {"status": "shutting_down" if pool.closing else "ok", "engines": len(pool.workers),
                "busy": pool.busy, "queued": pool.queued, "max_queue": pool.max_queue, "mode": settings.mode,
                "engine": pool.workers[0].description}
        return JSONResponse(body, status_code=503 if pool.closing else 200)

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(), media_type=metrics.content_type)

    async def _complete(request: Request, body, prompt, chat: bool, prompt_param: str):
        arrived = perf_counter()
        if body.model is not None and body.model != settings.model_name:
            raise ModelNotFound(body.model)
        body.unsupported()
        check_chars(prompt, pool.workers[0].max_prompt_chars, pool.workers[0].max_seq_len, prompt_param)
        lease = await _until_disconnected(request, pool.lease(), abandon=_release)
        try:
            generation = await Generation.start(lease, prompt, chat, body.sampling(), settings.mode, metrics, arrived,
                                                prompt_param)
        except BaseException:
            await _release(lease)
            raise
        shape = Shape(chat, settings.model_name)
        if body.stream:
            return LeasedStream(_events(generation, shape, body.include_usage, metrics), lease, metrics)
        try:
            text = await _until_disconnected(request, generation.text())
        finally:
            await _release(lease)
        return shape.response(text, generation.result)

    return app


async def _events(generation: Generation, shape: Shape, include_usage: bool, metrics: ServerMetrics) -> AsyncIterator[str]:
    """The stream's events: a chunk per text piece, the finish reason (and usage), ``[DONE]``; an error as an event."""
    if shape.chat:
        yield sse(shape.chunk(first=True))
    try:
        async for piece in generation.pieces():
            yield sse(shape.chunk(piece))
    except KangarooError as err:
        metrics.errors.labels("bad_request").inc()
        yield sse(error_body(str(err)))
    except ShuttingDown as err:  # the shutdown deadline stopped it
        metrics.errors.labels("shutting_down").inc()
        yield sse(error_body(str(err), "server_error", code="shutting_down"))
    except Exception:
        metrics.errors.labels("internal").inc()
        log.exception("generation failed")
        yield sse(error_body("the generation failed on the server (see its log)", "server_error"))
    else:
        yield sse(shape.final_chunk(generation.result))
        if include_usage:
            yield sse(shape.usage_chunk(generation.result))
    yield sse("[DONE]")


class LeasedStream(StreamingResponse):
    """Server-sent events whose engine goes back to the pool however the response ends (disconnect included)."""

    def __init__(self, events: AsyncIterator[str], lease: Lease, metrics: ServerMetrics) -> None:
        self._done, self.lease, self.metrics = False, lease, metrics

        async def tracked():
            async for event in events:
                yield event
            self._done = True

        super().__init__(tracked(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if not self._done:
                self.metrics.errors.labels("client_disconnected").inc()
            await _release(self.lease)


async def _release(lease: Lease) -> None:
    """Stop the generation and give its engine back, even inside a cancelled request."""
    with anyio.CancelScope(shield=True):
        await lease.release()


async def _until_disconnected(request: Request, awaitable, abandon=None) -> Any:
    """Await ``awaitable`` unless the client disconnects first (then cancel it and raise ``ClientGone``).

    ``abandon(result)`` is awaited if this request is cancelled just as ``awaitable`` finished (a lease goes back)."""
    task = asyncio.ensure_future(awaitable)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watch = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        if abandon is not None and task.done() and not task.cancelled() and task.exception() is None:
            await abandon(task.result())
        raise
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()
            with anyio.CancelScope(shield=True):
                await asyncio.gather(task, return_exceptions=True)
    if task.cancelled():
        raise ClientGone
    return task.result()


def _error_response(metrics: ServerMetrics):
    """``error(status, kind, message, ...)``: an error body in OpenAI's shape, counted by kind."""

    def error(status: int, kind: str, *args, headers: dict | None = None, **kwargs) -> JSONResponse:
        metrics.errors.labels(kind).inc()
        return JSONResponse(error_body(*args, **kwargs), status_code=status, headers=headers)

    return error


def _add_error_handlers(app: FastAPI, error) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(_request, exc: RequestValidationError):
        first = exc.errors()[0]
        if first.get("type") == "json_invalid":
            return error(400, "bad_request", f"the request body is not valid JSON: {first.get('ctx', {}).get('error', '')}")
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        where = ".".join(loc) or "body"
        # a check of ours (schemas.py) raised ValueError: its message, without pydantic's "Value error, " prefix
        message = str(first["ctx"]["error"]) if first.get("type") == "value_error" else first.get("msg", "invalid")
        return error(400, "bad_request", f"{where}: {message}", param=where)

    @app.exception_handler(Unsupported)
    async def unsupported(_request, exc: Unsupported):
        return error(400, "bad_request", str(exc), param=exc.param)

    @app.exception_handler(ContextTooLong)
    async def too_long(_request, exc: ContextTooLong):
        return error(400, "bad_request", str(exc), param=exc.param, code="context_length_exceeded")

    @app.exception_handler(KangarooError)
    async def refused(_request, exc: KangarooError):
        return error(400, "bad_request", str(exc))

    @app.exception_handler(ModelNotFound)
    async def no_model(_request, exc: ModelNotFound):
        return error(404, "bad_request", f"the model {exc} does not exist here: this server serves "
                     f"{app.state.settings.model_name!r} (GET /v1/models)", param="model", code="model_not_found")

    @app.exception_handler(QueueFull)
    async def full(_request, _exc):
        return error(429, "queue_full", "every engine is busy and the queue is full: retry later",
                     "rate_limit_error", code="queue_full", headers={"Retry-After": "1"})

    @app.exception_handler(ShuttingDown)
    async def stopping(_request, exc: ShuttingDown):
        return error(503, "shutting_down", str(exc), "server_error", code="shutting_down")

    @app.exception_handler(ClientGone)
    async def gone(_request, _exc):
        return error(499, "client_disconnected", "the client disconnected")

    @app.exception_handler(HTTPException)
    async def http_error(_request, exc: HTTPException):
        return JSONResponse(error_body(str(exc.detail), "invalid_request_error"), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def internal(_request, exc: Exception):
        log.error("internal error", exc_info=exc)
        return error(500, "internal", "internal server error (see the server's log)", "server_error")
