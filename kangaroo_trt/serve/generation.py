"""One request's generation on a leased engine: text pieces as they come, then the result; metrics when it ends."""

from __future__ import annotations

from time import perf_counter
from typing import AsyncIterator

from ..errors import InputError
from .metrics import ServerMetrics
from .pool import Lease
from .worker import Sampling


class ContextTooLong(InputError):
    """The prompt and the requested completion do not fit the engine's KV cache."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def check_fits(prompt_tokens: int, max_tokens: int | None, max_seq_len: int, prompt_param: str) -> None:
    if prompt_tokens < 1:
        raise InputError("the prompt is empty: give at least one token")
    if prompt_tokens >= max_seq_len:
        raise ContextTooLong(f"the prompt has {prompt_tokens} tokens but this engine's context holds {max_seq_len}: "
                             "shorten the prompt", prompt_param)
    if max_tokens is not None and prompt_tokens + max_tokens > max_seq_len:
        raise ContextTooLong(f"the prompt ({prompt_tokens} tokens) plus max_tokens ({max_tokens}) exceed this engine's "
                             f"context of {max_seq_len} tokens: ask for at most {max_seq_len - prompt_tokens}", "max_tokens")


class Generation:
    def __init__(self, stream, metrics: ServerMetrics, arrived: float) -> None:
        self._stream, self._metrics, self._arrived = stream, metrics, arrived
        self.first_text_at: float | None = None
        self.result = None

    @classmethod
    def start(cls, lease: Lease, prompt, chat: bool, sampling: Sampling, mode: str, metrics: ServerMetrics,
              arrived: float, prompt_param: str) -> "Generation":
        """Encode and check the prompt, then start decoding on the leased engine (stopped by ``lease.release``)."""
        worker = lease.worker
        ids = worker.encode(prompt, chat)
        check_fits(len(ids), sampling.max_tokens, worker.max_seq_len, prompt_param)
        stream = worker.stream(ids, mode, sampling)
        lease.stop = stream.aclose
        return cls(stream, metrics, arrived)

    async def pieces(self) -> AsyncIterator[str]:
        async for piece in self._stream:
            if self.first_text_at is None:
                self.first_text_at = perf_counter()
            yield piece
        self.result = self._stream.result
        ttft = None if self.first_text_at is None else self.first_text_at - self._arrived
        self._metrics.finished(self.result, ttft, perf_counter() - self._arrived)

    async def text(self) -> str:
        return "".join([piece async for piece in self.pieces()])
