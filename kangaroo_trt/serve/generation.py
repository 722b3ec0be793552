"""One request's generation on a leased engine: text pieces as they come, then the result; metrics when it ends."""

from __future__ import annotations

from time import perf_counter
from typing import AsyncIterator

import anyio

from ..errors import InputError
from .metrics import ServerMetrics
from .pool import Lease, ShuttingDown
from .worker import Sampling


class ContextTooLong(InputError):
    """The prompt and the requested completion do not fit the engine's KV cache."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def check_chars(prompt, max_chars: int, max_seq_len: int, prompt_param: str) -> None:
    """Refuse text that cannot fit however it tokenizes (more characters than ``max_chars``), before encoding it."""
    if isinstance(prompt, str):
        chars = len(prompt)
    elif prompt and isinstance(prompt[0], dict):
        chars = sum(len(m["content"]) for m in prompt)
    else:
        return  # token ids
    if chars > max_chars:
        raise ContextTooLong(f"the prompt has {chars} characters, more than this engine's context of {max_seq_len} tokens "
                             f"can hold in any tokenization (at most {max_chars} characters): shorten the prompt",
                             prompt_param)


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
    def __init__(self, stream, lease: Lease, metrics: ServerMetrics, arrived: float) -> None:
        self._stream, self._lease, self._metrics, self._arrived = stream, lease, metrics, arrived
        self.first_text_at: float | None = None
        self.result = None

    @classmethod
    async def start(cls, lease: Lease, prompt, chat: bool, sampling: Sampling, mode: str, metrics: ServerMetrics,
                    arrived: float, prompt_param: str) -> "Generation":
        """Encode and check the prompt, then start decoding on the leased engine (stopped by ``lease.release``)."""
        worker = lease.worker
        ids = await anyio.to_thread.run_sync(worker.encode, prompt, chat)  # the chat template and tokenizer: off the loop
        check_fits(len(ids), sampling.max_tokens, worker.max_seq_len, prompt_param)
        if lease.interrupted:
            raise ShuttingDown()
        stream = worker.stream(ids, mode, sampling)
        lease.stop = stream.aclose
        return cls(stream, lease, metrics, arrived)

    async def pieces(self) -> AsyncIterator[str]:
        async for piece in self._stream:
            if self.first_text_at is None:
                self.first_text_at = perf_counter()
            yield piece
        if self._stream.result is None:  # stopped before its end: only the shutdown deadline stops a read generation
            if self._lease.interrupted:
                raise ShuttingDown("the server shut down before this generation finished (its --shutdown-timeout "
                                   "passed): retry on another instance or later")
            raise RuntimeError("the generation stopped before its end")
        self.result = self._stream.result
        ttft = None if self.first_text_at is None else self.first_text_at - self._arrived
        self._metrics.finished(self.result, ttft, perf_counter() - self._arrived)

    async def text(self) -> str:
        return "".join([piece async for piece in self.pieces()])
