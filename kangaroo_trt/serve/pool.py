"""A pool of engines with a bounded queue in front of it.

A request leases a free worker at once, or waits in a FIFO queue of at most ``max_queue`` requests; when that is
full it is refused at once (``QueueFull``: HTTP 429) instead of piling up. A lease gives its worker back exactly once,
after the generation running on it has stopped (so the next request never finds the engine busy).

Shutdown has two steps: ``shut_down`` refuses new leases and fails the queued requests at once; ``interrupt`` (at the
shutdown deadline) stops the generations still running, which then end with ``ShuttingDown`` too.
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from typing import Callable

from .worker import Worker


class QueueFull(Exception):
    """Every engine is busy and the queue is full."""


class ShuttingDown(Exception):
    """The server is stopping: it takes no new requests, or stopped this one's generation at the shutdown deadline."""

    def __init__(self, message: str = "the server is shutting down: retry on another instance or later") -> None:
        super().__init__(message)


def default_workers(cores: int | None = None) -> int:
    """One engine per 4 cores, at most 4 (each engine's runtime is given cores / workers threads)."""
    cores = cores or os.cpu_count() or 1
    return max(1, min(4, cores // 4))


def open_workers(directory, count: int, backend: str = "auto", precision: str | None = None,
                 threads: int | None = None, exact: bool = True) -> list[Worker]:
    """``count`` engines from one directory; ``threads`` defaults to this machine's cores shared among them."""
    threads = threads or max(1, (os.cpu_count() or 1) // count)
    workers: list[Worker] = []
    try:
        for i in range(count):
            workers.append(Worker.open(directory, i, backend=backend, precision=precision, threads=threads, exact=exact))
    except BaseException:
        for w in workers:
            w.close()
        raise
    return workers


class EnginePool:
    def __init__(self, workers: list[Worker], max_queue: int) -> None:
        if not workers:
            raise ValueError("a pool needs at least one worker")
        self.workers, self.max_queue = workers, max_queue
        self._free: deque[Worker] = deque(workers)
        self._waiters: deque[asyncio.Future] = deque()
        self._leases: set[Lease] = set()  # lent and not yet given back
        self.closing = False

    @property
    def busy(self) -> int:
        return len(self.workers) - len(self._free)

    @property
    def queued(self) -> int:
        return sum(not f.done() for f in self._waiters)

    async def lease(self) -> "Lease":
        if self.closing:
            raise ShuttingDown
        if self._free and not self.queued:
            return self._lend(self._free.popleft())
        if self.queued >= self.max_queue:
            raise QueueFull
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return self._lend(await waiter)
        except asyncio.CancelledError:  # the client left while waiting; a worker handed over meanwhile goes back
            if waiter.done() and not waiter.cancelled():
                self._give_back(waiter.result())
            raise
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def _lend(self, worker: Worker) -> "Lease":
        lease = Lease(self, worker)
        self._leases.add(lease)
        return lease

    def shut_down(self) -> None:
        """Take no new leases; the requests waiting in the queue fail at once with ``ShuttingDown``."""
        self.closing = True
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(ShuttingDown())

    def interrupt(self) -> None:
        """Stop every generation still running (the shutdown deadline); each then ends with ``ShuttingDown``."""
        for lease in list(self._leases):
            lease.interrupt()

    def _give_back(self, worker: Worker) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(worker)
                return
        self._free.append(worker)

    async def wait_idle(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` s) until every worker is back; False if some are still busy."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while self.busy and loop.time() < end:
            await asyncio.sleep(0.02)
        return not self.busy

    def close(self) -> None:
        """Free every engine that is back in the pool (call after ``wait_idle``)."""
        self.closing = True
        for worker in list(self._free):
            worker.close()


class Lease:
    """One worker lent to one request; ``release`` stops what runs on it and gives it back, once."""

    def __init__(self, pool: EnginePool, worker: Worker) -> None:
        self.pool, self.worker = pool, worker
        self.stop: Callable | None = None  # an awaitable-returning stopper of the generation running on the worker
        self.released = False
        self.interrupted = False  # stopped by the server's shutdown, not by its request
        self._stopping: asyncio.Task | None = None

    def interrupt(self) -> None:
        """Stop the generation (its reader sees the end of its pieces and ``interrupted``); the lease stays lent."""
        self.interrupted = True
        if self.stop is not None and self._stopping is None:
            self._stopping = asyncio.ensure_future(self.stop())

    async def release(self) -> None:
        if self.released:
            return
        self.released = True
        try:
            if self.stop is not None:
                await self.stop()
        finally:
            self.pool._leases.discard(self)
            self.pool._give_back(self.worker)
