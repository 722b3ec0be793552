"""Streams of text pieces, for plain Python (``Stream``) and asyncio services (``AsyncStream``).

An engine serves one request at a time and holds its lock while a stream is open: exhaust a stream, or
close it (``with`` / ``close()``; ``async with`` / ``aclose()``) to stop early and free the engine at once.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Iterator

_DONE = object()


class Stream:
    """Iterates over text pieces as tokens are committed; ``result`` is set once it is exhausted."""

    def __init__(self, pieces: Iterator[str]) -> None:
        self._pieces = pieces
        self.result: Any = None  # the GenerationResult, once exhausted

    def __iter__(self) -> Iterator[str]:
        """The pieces; iterating a finished stream again yields nothing and keeps its ``result``."""
        if self.result is None:
            self.result = yield from self._pieces

    def close(self) -> None:
        """Stop generating (if it has not finished) and free the engine."""
        self._pieces.close()

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncStream:
    """``async for piece in engine.astream(...)``: decoding runs in a worker thread, so the event loop stays free;
    pieces arrive through a queue, and ``result`` is set once it is exhausted. Errors are raised in the caller."""

    def __init__(self, stream: Stream) -> None:
        self._stream = stream
        self.result: Any = None
        self._queue: asyncio.Queue | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._finished = False

    def _start(self) -> None:
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()

        def post(item) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the caller's loop is gone: nobody is listening any more
                self._stop.set()

        def work() -> None:
            item: Any = _DONE
            try:
                for piece in self._stream:
                    post(piece)
                    if self._stop.is_set():
                        break
            except BaseException as err:  # delivered to the awaiting caller
                item = err
            finally:
                self._stream.close()
            post(item)

        self._queue = queue
        self._thread = threading.Thread(target=work, name="kangaroo-astream", daemon=True)
        self._thread.start()

    def __aiter__(self) -> "AsyncStream":
        return self

    async def __anext__(self) -> str:
        if self._finished:
            raise StopAsyncIteration
        if self._thread is None:
            self._start()
        item = await self._queue.get()
        if item is _DONE:
            self._finished = True
            self.result = self._stream.result
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self._finished = True
            raise item
        return item

    async def aclose(self) -> None:
        """Stop generating after the current round and wait until the engine is free."""
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
        self._finished = True

    async def __aenter__(self) -> "AsyncStream":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()
