"""Kangaroo decoding (double early exiting) and the plain autoregressive baseline, batch 1.

Greedy by default; with a temperature the verify pass samples losslessly instead (``verify.py`` holds
both rules: what a deep pass commits is the only thing that differs).

State between rounds: the last committed token ``t0`` at position ``p``, whose shallow pass has not run.
Cache bookkeeping (slot i holds position i, slots at or past a length are stale and never read):

* ``shallow``/``deep`` lengths: positions ``< p`` hold committed KV. Drafts' shallow rows and rejected
  verify rows are written past it and simply become stale when the length is moved back (O(1) rollback).
* ``adapter`` length may lag: when every draft of a round is accepted, the last draft's exit state never
  went through the adapter, so ``adapter_backlog`` keeps the exit states of positions
  ``[adapter_len, p)`` and the next round feeds them to the adapter together with ``f_0``.

The loop is a generator of rounds; ``Transcript`` collects them (tokens, acceptance, margins, stop reason),
and timing and streaming live in the caller.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from time import perf_counter

import numpy as np

from ..config import MODES, DecodeConfig
from ..errors import InputError
from .backend import Backend
from .stats import AcceptanceLog
from .verify import Greedy, Sampling, rule_for


@dataclass
class Round:
    """What one deep pass produced: the committed tokens and, for Kangaroo, the drafts it judged."""

    tokens: list[int]
    drafts: list[int] = field(default_factory=list)
    accepted: int = 0
    margins: list[float] = field(default_factory=list)  # target top-1 minus top-2 logit per committed token


@dataclass
class CacheLengths:
    shallow: int = 0
    deep: int = 0
    adapter: int = 0


@dataclass
class Transcript:
    """What one generation committed, round by round: the one place that adds rounds up."""

    tokens: list[int] = field(default_factory=list)
    margins: list[float] = field(default_factory=list)  # per token, when the decoder records margins
    acceptance: AcceptanceLog = field(default_factory=AcceptanceLog)
    stop: str | None = None  # "eos" | "max_new_tokens" | "cache_full" once done

    def add(self, step: Round, stop: str | None) -> bool:
        """Record one round from ``Decoder.generate``; False once a round commits nothing (the cache is full)."""
        self.stop = stop
        if not step.tokens:
            return False
        self.tokens += step.tokens
        self.margins += step.margins[:len(step.tokens)]  # a round cut at EOS keeps only its committed tokens' margins
        self.acceptance.add(len(step.drafts), step.accepted, len(step.tokens))
        return True

    def truncate(self, n: int, stop: str) -> None:
        """Keep the first ``n`` tokens (the cut falls inside the last round) and record why it stopped."""
        self.acceptance.committed[-1] -= len(self.tokens) - n
        self.tokens, self.margins, self.stop = self.tokens[:n], self.margins[:n], stop


def top2_margin(logits: np.ndarray) -> float:
    top2 = np.partition(logits, -2)[-2:]
    return float(top2[1] - top2[0])


class Decoder:
    """Drives the three graphs of one backend. One request at a time (the caches are shared state)."""

    def __init__(self, backend: Backend, eos_ids: tuple[int, ...], prefill_chunk: int) -> None:
        self.shallow, self.adapter, self.deep = (backend.graph(g) for g in ("shallow", "adapter", "deep"))
        self.max_seq_len = self.shallow.max_seq_len
        self.eos_ids = frozenset(eos_ids)
        self.prefill_chunk = prefill_chunk
        self.timings = {"prefill": 0.0, "draft": 0.0, "verify": 0.0}
        self.record_margins = False
        self.rule: Greedy | Sampling = Greedy()  # what a deep pass commits (set per generation)

    # --- graph calls (each writes its cache rows at `start`) -------------------------------------------
    def _shallow(self, ids: list[int], start: int) -> np.ndarray:
        out = self.shallow.run({"input_ids": np.array([ids], np.int64), "position_ids": positions(start, len(ids))}, start)
        return out["hidden"].copy()

    def _adapter(self, hidden: np.ndarray, start: int) -> tuple[int, float]:
        out = self.adapter.run({"hidden": hidden, "position_ids": positions(start, hidden.shape[1])}, start)
        return int(out["draft_ids"][0, -1]), float(out["draft_confidence"][0, -1])

    def _deep(self, hidden: np.ndarray, start: int) -> tuple[list[int], np.ndarray]:
        out = self.deep.run({"hidden": hidden, "position_ids": positions(start, hidden.shape[1])}, start)
        return out["target_ids"][0].tolist(), out["logits"][0]

    # --- decoding ---------------------------------------------------------------------------------------
    def prefill(self, prompt_ids: list[int], with_adapter: bool) -> None:
        """Fill all three caches with the prompt except its last token (which becomes t0)."""
        if not prompt_ids:
            raise InputError("the prompt is empty: give at least one token")
        if len(prompt_ids) > self.max_seq_len - 1:
            raise InputError(
                f"the prompt has {len(prompt_ids)} tokens but the engine's KV cache holds {self.max_seq_len} positions: "
                f"shorten the prompt or rebuild with --max-seq-len {len(prompt_ids) + 1} or more"
            )
        t = perf_counter()
        context = prompt_ids[:-1]
        for start in range(0, len(context), self.prefill_chunk):
            hidden = self._shallow(context[start:start + self.prefill_chunk], start)
            self._deep(hidden, start)
            if with_adapter:
                self._adapter(hidden, start)
        self.timings["prefill"] += perf_counter() - t
        self.lengths = CacheLengths(len(context), len(context), len(context) if with_adapter else 0)
        self.adapter_backlog: list[np.ndarray] = []

    def ar_step(self, t0: int, p: int) -> Round:
        """Plain decoding: shallow then deep on one token."""
        t = perf_counter()
        hidden = self._shallow([t0], p)
        targets, logits = self._deep(hidden, p)
        token = self.rule.next_token(targets, logits)
        self.timings["verify"] += perf_counter() - t
        self._exits = [hidden]  # exit states of positions p.. (for the adapter backlog in `commit`)
        return Round([token], margins=self._margins(logits, 1))

    def kangaroo_round(self, t0: int, p: int, gamma: int, tau: float) -> Round:
        """Draft with double early exiting, verify in one deep pass, accept the longest matching prefix."""
        t = perf_counter()
        # First early exit: layers[0:l] run once per token; their KV rows are kept, never recomputed.
        exits = [self._shallow([t0], p)]
        drafts, confidence = [], 1.0
        for j in range(gamma):
            # Second early exit: stop once the previous draft's confidence fell below tau (it is still verified).
            if j > 0 and confidence < tau:
                break
            pending = self.adapter_backlog + [exits[j]]  # catch up on positions the adapter has not seen
            draft, confidence = self._adapter(np.concatenate(pending, axis=1), p + j - len(self.adapter_backlog))
            self.adapter_backlog = []
            drafts.append(draft)
            exits.append(self._shallow([draft], p + j + 1))
        t_verify = perf_counter()
        # Verify: one deep pass over [f_0 .. f_k] gives the target token y_i after each position.
        targets, logits = self._deep(np.concatenate(exits, axis=1), p)
        # Accept the longest prefix with d_{i+1} == y_i, plus one target token (correction or bonus);
        # when sampling, the speculative-sampling rule instead (verify.py).
        accepted, target = self.rule.verify(drafts, targets, logits)
        tokens = drafts[:accepted] + [target]
        self.timings["draft"] += t_verify - t
        self.timings["verify"] += perf_counter() - t_verify
        self._exits = exits  # exit states of positions p.. (for the adapter backlog in `commit`)
        return Round(tokens, drafts, accepted, self._margins(logits, len(tokens)))

    def commit(self, p: int, n_committed: int, adapter_ran_until: int | None) -> None:
        """Roll the caches back to the committed tokens: every slot past position p + n_committed - 1 is stale."""
        self.lengths.shallow = self.lengths.deep = p + n_committed
        if adapter_ran_until is None:  # AR mode never runs the adapter
            return
        # The adapter saw positions < adapter_ran_until; if every draft was accepted it lags by one.
        known = self.adapter_backlog + self._exits  # exit states of positions first .. p + len(self._exits)
        first = p - len(self.adapter_backlog)
        self.lengths.adapter = min(adapter_ran_until, p + n_committed)
        self.adapter_backlog = known[self.lengths.adapter - first:p + n_committed - first]
        assert len(self.adapter_backlog) == self.lengths.shallow - self.lengths.adapter, "adapter backlog out of step"

    def generate(self, prompt_ids: list[int], mode: str, config: DecodeConfig, record_margins: bool = False):
        """Yield (round, stop) per round, its tokens already cut at EOS / max_new_tokens, until done.

        ``timings`` restart at zero; ``record_margins`` fills each round's target top-1 minus top-2 logits.
        """
        if mode not in MODES:
            raise InputError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.timings = dict.fromkeys(self.timings, 0.0)
        self.record_margins = record_margins
        self.rule = rule_for(config)
        kangaroo = mode == "kangaroo"
        self.prefill(prompt_ids, with_adapter=kangaroo)
        t0, p, produced = prompt_ids[-1], len(prompt_ids) - 1, 0
        while True:
            remaining = config.max_new_tokens - produced
            # Never draft past the token budget or the cache: k drafts commit at most k + 1 tokens.
            gamma = min(config.gamma, remaining - 1, self.max_seq_len - 1 - p)
            if kangaroo and gamma >= 1:
                step = self.kangaroo_round(t0, p, gamma, config.tau)
                adapter_ran_until = p + len(step.drafts)
            else:  # plain step (also Kangaroo's last token, where a draft could not be committed)
                step = self.ar_step(t0, p)
                adapter_ran_until = self.lengths.adapter if kangaroo else None
            step.tokens, stop = self._cut(step.tokens, remaining)
            produced += len(step.tokens)
            yield step, stop
            if stop:
                return
            self.commit(p, len(step.tokens), adapter_ran_until)
            t0, p = step.tokens[-1], p + len(step.tokens)
            if p >= self.max_seq_len:
                yield Round([]), "cache_full"
                return

    def _cut(self, tokens: list[int], remaining: int) -> tuple[list[int], str | None]:
        """Stop at the first EOS or the token budget, also inside an accepted run."""
        for i, tok in enumerate(tokens[:remaining]):
            if tok in self.eos_ids:
                return tokens[:i + 1], "eos"
        if len(tokens) >= remaining:
            return tokens[:remaining], "max_new_tokens"
        return tokens, None

    def _margins(self, logits: np.ndarray, count: int) -> list[float]:
        return [top2_margin(logits[i]) for i in range(count)] if self.record_margins else []


def positions(start: int, n: int) -> np.ndarray:
    """``position_ids`` [1, n] for n new tokens from ``start``."""
    return np.arange(start, start + n, dtype=np.int64)[None]
