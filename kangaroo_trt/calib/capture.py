"""Capture each graph's real inputs by decoding calibration prompts through the fp32 graphs.

A ``RecordingRunner`` wraps a backend's ``GraphRunner``: every call is recorded (the token feeds plus the
valid prefix of every cache, i.e. the caches at the fill they really had) and then run as usual. Running the
Kangaroo loop (not just prefill) records every step shape the engines will see: prefill chunks, draft steps
(n = 1), adapter catch-up (n = 2) and verify steps (n <= gamma + 1).

Only the valid cache prefix ``[:, :, :start]`` is stored; ``Sample.feeds`` rebuilds full-size buffers with
zeros past it (those slots are masked, so their content does not change any activation).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import DecodeConfig
from ..contract.manifest import GRAPHS
from ..contract.spec import GraphSpec
from ..runner.backend import Backend, GraphRunner, cache_buffers
from ..runner.decode import Decoder


@dataclass
class Sample:
    """One recorded call of one graph."""

    tokens: dict[str, np.ndarray]  # token inputs (input_ids / hidden, position_ids)
    prefixes: dict[str, np.ndarray]  # past name -> valid cache rows [1, kv_heads, start, head_dim]
    start: int

    @property
    def n(self) -> int:
        return next(iter(self.tokens.values())).shape[1]

    def feeds(self, spec: GraphSpec) -> dict[str, np.ndarray]:
        caches = cache_buffers(spec, np.zeros)
        for name, buffer in caches.items():
            buffer[:, :, :self.start] = self.prefixes[name]
        return {**self.tokens, **caches}


class RecordingRunner(GraphRunner):
    """Records every call of ``inner`` (whose ``caches`` dict holds its cache buffers), then runs it."""

    def __init__(self, inner: GraphRunner) -> None:
        super().__init__(inner.spec)
        self.inner, self.caches = inner, inner.caches
        self.samples: list[Sample] = []

    def close(self) -> None:
        self.inner.close()
        super().close()

    def _run(self, feeds, start, n, rows):
        prefixes = {name: buf[:, :, :start].copy() for name, buf in self.inner.caches.items()}
        self.samples.append(Sample({k: np.array(v, copy=True) for k, v in feeds.items()}, prefixes, start))
        return self.inner._run(feeds, start, n, rows)


class _RecordingBackend(Backend):
    """``inner``'s runners wrapped in ``RecordingRunner``s (closing it closes ``inner``'s)."""

    name = "recording"
    device = "cpu"

    def __init__(self, inner: Backend) -> None:
        self._runners = {g: RecordingRunner(inner.graph(g)) for g in GRAPHS}

    @classmethod
    def available(cls) -> bool:
        return True


def capture(graphs: dict[str, tuple[Path, GraphSpec]], prompts: list[list[int]], eos_ids: tuple[int, ...],
            prefill_chunk: int, new_tokens: int = 24, max_samples: int = 48, threads: int | None = 1,
            seed: int = 0) -> dict[str, list[Sample]]:
    """Decode ``prompts`` (token ids) with Kangaroo on the fp32 ``graphs`` (ORT CPU); samples per graph.

    Every multi-token call is kept (prefill chunks, catch-up, verify); single-token calls fill the rest of
    ``max_samples`` by random choice, so draft steps are represented without dominating.
    """
    from ..runner.ort_backend import OrtCpuBackend

    backend = _RecordingBackend(OrtCpuBackend(graphs, threads))
    decoder = Decoder(backend, eos_ids, prefill_chunk)
    max_seq_len = next(iter(graphs.values()))[1].caches[0].shape[2]
    for ids in prompts:
        ids = ids[: max_seq_len // 2]  # leave room to decode
        budget = min(new_tokens, max_seq_len - len(ids))
        if budget < 1:
            continue
        for _ in decoder.generate(ids, DecodeConfig(gamma=4, tau=0.0, max_new_tokens=budget, lookup_ngram=0,
                                                                 adaptive_gamma=False, policy="tau")):
            pass
    rng = np.random.default_rng(seed)
    out = {}
    for name in GRAPHS:
        runner = backend.graph(name)
        multi = [s for s in runner.samples if s.n > 1]
        single = [s for s in runner.samples if s.n == 1]
        room = max(0, max_samples - len(multi))
        picked = [single[i] for i in sorted(rng.choice(len(single), min(room, len(single)), replace=False))]
        out[name] = (multi + picked)[:max(max_samples, 1)]
    backend.close()
    return out
