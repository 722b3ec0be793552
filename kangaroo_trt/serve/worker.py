"""One engine of the pool, and the only place in the server that calls into the runner's API.

Each worker owns one ``KangarooEngine`` (its own KV caches and runtime sessions) and serves one request at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..runner.api import KangarooEngine

if TYPE_CHECKING:
    from ..runner.streaming import AsyncStream


@dataclass(frozen=True)
class Sampling:
    """What a request asks of the decoder (validated by ``schemas.py``; the engine validates it again)."""

    max_tokens: int | None  # None: as many as the KV cache leaves room for
    temperature: float
    top_p: float
    top_k: int
    seed: int | None
    stop: tuple[str, ...]


class Worker:
    def __init__(self, engine: KangarooEngine, index: int) -> None:
        self.engine, self.index = engine, index
        self.description = f"{engine.backend.name} {engine.precision} on {engine.backend.device}"
        # No token stands for more characters than the longest vocabulary entry spells (byte-level BPE: one character
        # per byte; SentencePiece: one per character or more), so text longer than this cannot fit the context.
        self.max_prompt_chars = self.max_seq_len * max(map(len, engine.tokenizer.get_vocab()))

    @classmethod
    def open(cls, directory: str | Path, index: int = 0, backend: str = "auto", precision: str | None = None,
             threads: int | None = None, exact: bool = True) -> "Worker":
        return cls(KangarooEngine.open(directory, backend=backend, precision=precision, threads=threads, exact=exact), index)

    @property
    def max_seq_len(self) -> int:
        return self.engine.manifest.max_seq_len

    def encode(self, prompt: str | list[dict] | list[int], chat: bool) -> list[int]:
        """Token ids of a prompt: text, chat messages (the engine's chat encoding) or ids (checked against the vocabulary)."""
        if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
            return self.engine.check_prompt_ids(prompt)
        return self.engine.encode(prompt, chat)

    def stream(self, prompt_ids: list[int], mode: str, sampling: Sampling) -> "AsyncStream":
        """Start generating (``ConfigError`` / ``InputError`` for settings the engine refuses)."""
        max_tokens = sampling.max_tokens if sampling.max_tokens is not None else self.max_seq_len - len(prompt_ids)
        config = self.engine.decode_config(mode=mode, max_new_tokens=max_tokens, temperature=sampling.temperature,
                                           top_p=sampling.top_p, top_k=sampling.top_k, seed=sampling.seed)
        return self.engine.astream(prompt_ids=prompt_ids, config=config, stop=sampling.stop)

    def close(self) -> None:
        self.engine.close()
