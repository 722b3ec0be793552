"""Kangaroo decoding (double early exiting) and the plain autoregressive baseline, batch 1.

Greedy by default; with a temperature the verify pass samples losslessly instead (``verify.py`` holds
both rules: what a deep pass commits is the only thing that differs).

A round proposes drafts, runs one deep pass over ``[t_0, d_1 .. d_k]`` and commits the accepted drafts plus one
target token. Drafts come from the adapter (double early exiting) or, when the context repeats itself, from
prompt lookup (``lookup.py``); plain decoding proposes none. ``State`` is everything carried between rounds.

Cache bookkeeping (slot i holds position i, slots at or past a valid length are stale and never read): the
shallow and deep caches hold positions ``< p``; drafts' rows and rejected verify rows are written past it and
become stale when p moves on (O(1) rollback). The adapter's cache may lag behind: rounds that do not run it
(prompt lookup, plain steps) and rounds that accept every draft (the last draft's exit state never went
through it) leave exit states in ``State.unseen``, which the next adapter call reads first.

Exact mode (``rows``): every value that decides a committed token must be bitwise the same whether a one-row
call (a plain step) or a multi-row call (a verify or lookup pass) computed it. The graphs' slot-ordered
attention (``model/layers.py``) reduces each key at the same place whichever call wrote it; what is left is the
row count of the matrix products, which on some runtimes picks another kernel. So with ``rows = R > 1`` every
shallow and deep call of a decoding step is padded to R rows (the last token or exit state repeated at the next
positions); only the real rows' outputs are read and only their cache rows are written. ``rows = 1`` pads
nothing: where the runtime's products are row-invariant already (measured by ``kangaroo-check``), exactness is
free. Prefill is the same in both modes and is not padded; the adapter's drafts are proposals and need no
exactness.

Where the arrays live (``arrays.py``): graph outputs stay where the backend computed them (numpy on ONNX Runtime
CPU, the device on the CUDA and PyTorch backends); exit states go from graph to graph there. On a device backend
(``Backend.resident``) a greedy round reads back once: its drafts chain on the device (each draft is the next
shallow call's input, never read in between), and the round's drafts and target ids cross to the host together,
after its deep pass; full-vocabulary logits never do. How many drafts such a round proposes is decided before it
starts (the cost policy's ``plan_adapter``, from the calibration and the request's acceptance so far). Rules that
decide after each draft from its confidence (``--policy tau``, ``draft_floor``) keep their meaning everywhere and
read each draft back where they run. On a host backend reads are free, and the cost policy decides per draft.

Each request is a ``Generation`` (``Decoder.generate`` makes it): its settings, its ``State`` (which also carries
how its deep passes commit, whether they record margins, and its timings) and its ``Transcript`` (tokens,
acceptance, margins, stop reason). Iterating it runs the rounds. The ``Decoder`` keeps only what outlives a
request: the graphs, EOS ids, row padding, graph costs and calibration. Text and streaming live in the caller.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from time import perf_counter
from typing import Callable

import numpy as np

from ..config import DecodeConfig
from ..errors import InputError
from .arrays import concat, read_draft, snapshot, to_host, top2_margins
from .backend import Backend, pad_feeds
from .costs import CostTable, measure
from .lookup import lookup_drafts, lookup_match
from .policy import Calibration, DraftPolicy
from .stats import AcceptanceLog
from .verify import Greedy, Sampling, rule_for


@dataclass
class Round:
    """What one deep pass produced: the committed tokens and, for Kangaroo, the drafts it judged."""

    tokens: list[int]
    drafts: list[int] = field(default_factory=list)
    accepted: int = 0
    margins: list[float] = field(default_factory=list)  # target top-1 minus top-2 logit per committed token
    exits: object = None  # [1, 1 + len(drafts), hidden], the backend's array type: exit states of t_0 and the drafts
    adapter_read: int = 0  # how many of `exits` the adapter read this round (after the state's unseen ones)


TIMINGS = ("prefill", "draft", "verify")


@dataclass
class State:
    """Where one generation stands between rounds, and how its rounds commit.

    ``context``: the prompt and every committed token; its last one, t_0 at position ``p``, has not been through
    the shallow layers yet. ``unseen``: exit states of the positions just before p that the adapter's cache does
    not hold yet, in order. ``gamma``: the most adapter drafts the next round may propose. ``rule``: what a deep
    pass commits (``verify.py``); ``record_margins``: rounds keep the target's top-1 minus top-2 logits;
    ``timings``: seconds spent in prefill, drafting and verifying so far.
    """

    context: list[int]
    unseen: list  # the backend's arrays [1, k, hidden]
    gamma: int
    produced: int = 0
    rule: Greedy | Sampling = field(default_factory=Greedy)
    record_margins: bool = False
    timings: dict[str, float] = field(default_factory=lambda: dict.fromkeys(TIMINGS, 0.0))

    @property
    def p(self) -> int:
        return len(self.context) - 1

    @property
    def adapter_length(self) -> int:
        """How many positions the adapter's cache holds."""
        return self.p - sum(u.shape[1] for u in self.unseen)


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


class Generation:
    """One request: its settings (``config``, the mode among them), where it stands (``state``, once prefilled) and
    what it has committed (``transcript``). An iterator of (round, stop) pairs, each also added to ``transcript``;
    ``Decoder.generate`` makes one. ``policy``: the cost policy's object (default: ``Decoder.draft_policy``)."""

    def __init__(self, decoder: "Decoder", prompt_ids: list[int], config: DecodeConfig, record_margins: bool = False,
                 policy: DraftPolicy | None = None) -> None:
        self.prompt_ids, self.config, self.record_margins, self.policy = prompt_ids, config, record_margins, policy
        self.state: State | None = None
        self.transcript = Transcript()
        self._rounds = decoder._rounds(self)

    def __iter__(self) -> "Generation":
        return self

    def __next__(self) -> tuple[Round, str | None]:
        step, stop = next(self._rounds)
        self.transcript.add(step, stop)
        return step, stop

    def close(self) -> None:
        self._rounds.close()

    @property
    def timings(self) -> dict[str, float]:
        return self.state.timings if self.state is not None else dict.fromkeys(TIMINGS, 0.0)


def next_gamma(gamma: int, step: Round, most: int) -> int:
    """Adaptive draft length: one more draft after a round that accepted all of its drafts, one fewer otherwise."""
    return min(most, gamma + 1) if step.accepted == len(step.drafts) else max(1, gamma - 1)


class Decoder:
    """Drives the three graphs of one backend. One request at a time (the caches are shared state)."""

    def __init__(self, backend: Backend, eos_ids: tuple[int, ...], prefill_chunk: int, rows: int = 1,
                 max_positions: int | None = None) -> None:
        """``rows``: the row count every decoding step's shallow and deep calls are padded to (exact mode; 1: none).
        ``max_positions``: the model's own context (max_position_embeddings), the most a rebuild can give."""
        self.shallow, self.adapter, self.deep = (backend.graph(g) for g in ("shallow", "adapter", "deep"))
        self.max_positions = max_positions
        self.eos_ids = frozenset(eos_ids)
        self.prefill_chunk = prefill_chunk
        self.rows = rows
        self.resident = backend.resident  # chain a round's drafts on the device, one readback per round
        # The cost policy's inputs: measured graph costs (measured at the first request that needs them unless
        # the engine sets a cached table) and the adapter's calibration (the engine sets the one it shipped with).
        self.costs: CostTable | None = None
        self.calibration = Calibration()

    @property
    def max_seq_len(self) -> int:
        """Positions a generation may use: the cache's slots, less the padding a last step needs (exact mode)."""
        return self.shallow.max_seq_len - (self.rows - 1)

    # --- graph calls (each writes its cache rows at `start`) -------------------------------------------
    def _call(self, graph, feeds: dict[str, np.ndarray], start: int, pad: bool) -> dict[str, np.ndarray]:
        """``graph.run`` on ``feeds``, padded to ``self.rows`` rows when ``pad`` (exact mode's decoding steps)."""
        n = feeds["position_ids"].shape[1]
        if pad and self.rows > n:
            feeds = pad_feeds(feeds, self.rows, graph.max_seq_len)
        return graph.run(feeds, start, rows=n)

    def _shallow(self, ids, start: int, pad: bool = True):
        """Exit states [1, n, hidden] of ``ids``: token ids from the host (a list), or a draft still on the device."""
        if isinstance(ids, list):
            ids = np.array([ids], np.int64)
        n = ids.shape[1]
        out = self._call(self.shallow, {"input_ids": ids, "position_ids": positions(start, n)}, start, pad)
        return snapshot(out["hidden"][:, :n])

    def _adapter(self, hidden, start: int):
        """The draft after the last of ``hidden``'s positions and its confidence, [1, 1] arrays where the backend
        keeps them (a long catch-up runs in prefill-sized chunks)."""
        for i in range(0, hidden.shape[1], self.prefill_chunk):
            rows = hidden[:, i:i + self.prefill_chunk]
            out = self.adapter.run({"hidden": rows, "position_ids": positions(start + i, rows.shape[1])}, start + i)
        return snapshot(out["draft_ids"][:, -1:]), snapshot(out["draft_confidence"][:, -1:])

    def _deep(self, hidden, start: int, pad: bool = True):
        """Target ids [1, n] and logits [n, vocab] after each of ``hidden``'s positions, where the backend keeps them
        (valid until the next deep call of this row count)."""
        n = hidden.shape[1]
        out = self._call(self.deep, {"hidden": hidden, "position_ids": positions(start, n)}, start, pad)
        return out["target_ids"][:, :n], out["logits"][0, :n]

    # --- decoding ---------------------------------------------------------------------------------------
    def prefill(self, prompt_ids: list[int], with_adapter: bool, gamma: int) -> State:
        """Fill the caches with the prompt except its last token (which becomes t0); plain decoding skips the adapter."""
        if not prompt_ids:
            raise InputError("the prompt is empty: give at least one token")
        if len(prompt_ids) > self.max_seq_len - 1:
            need = len(prompt_ids) + 1
            fix = (f"shorten the prompt or rebuild with --max-seq-len {need} or more"
                   if self.max_positions is None or need <= self.max_positions else
                   f"shorten the prompt: at most {self.max_seq_len - 1} tokens fit this engine, and "
                   f"{self.max_positions - 1} one rebuilt with the model's largest --max-seq-len, {self.max_positions} "
                   "(its max_position_embeddings)")
            padding = f" ({self.max_seq_len} usable with exact mode's {self.rows}-row steps)" if self.rows > 1 else ""
            raise InputError(f"the prompt has {len(prompt_ids)} tokens but the engine's KV cache holds "
                             f"{self.shallow.max_seq_len} positions{padding}: {fix}")
        t, state = perf_counter(), State(list(prompt_ids), [], gamma)
        context = prompt_ids[:-1]
        for start in range(0, len(context), self.prefill_chunk):
            hidden = self._shallow(context[start:start + self.prefill_chunk], start, pad=False)
            self._deep(hidden, start, pad=False)
            if with_adapter:
                self._adapter(hidden, start)
            else:
                state.unseen.append(hidden)
        state.timings["prefill"] += perf_counter() - t
        return state

    def ar_step(self, state: State) -> Round:
        """Plain decoding: shallow then deep on one token."""
        t = perf_counter()  # taken before the shallow pass, so that it counts as verify time, not as "other"
        return self._verify(state, self._shallow(state.context[-1:], state.p), [], t)

    def adapter_round(self, state: State, most: int, decide: Callable[[int, float], str] | None = None) -> Round:
        """Draft with double early exiting, verify in one deep pass, accept the longest matching prefix.

        After draft j (0-based) with its confidence, ``decide(j, confidence)`` says: "drop" it (verify the drafts
        before it), "keep" it and stop drafting (the second early exit), or draft "more" (at most ``most`` drafts).
        Without ``decide`` the round drafts ``most`` and reads none of them before the deep pass: the drafts chain
        where the backend keeps them (a device round: one readback, in ``_verify``).
        """
        t, p = perf_counter(), state.p
        # First early exit: layers[0:l] run once per token; their KV rows are kept, never recomputed.
        exits, drafts = [self._shallow(state.context[-1:], p)], []
        for j in range(most):
            pending = concat(state.unseen + exits[:1]) if j == 0 else exits[j]  # catch up first
            draft, confidence = self._adapter(pending, p + j + 1 - pending.shape[1])
            choice, token = "more", draft  # unread: it crosses with the targets
            if decide is not None:
                token, conf = read_draft(draft, confidence)
                choice = decide(j, conf)
            if choice == "drop":  # the adapter read this round's exit states up to exits[j]
                return self._verify(state, concat(exits), drafts, t, adapter_read=j + 1)
            drafts.append(token)
            exits.append(self._shallow(draft, p + j + 1))  # the draft as the next input, where it is
            if choice == "keep":
                break
        return self._verify(state, concat(exits), drafts, t, adapter_read=len(drafts))

    def kangaroo_round(self, state: State, gamma: int, tau: float, floor: float = 0.0) -> Round:
        """The paper's rule: stop drafting after a draft less confident than tau (it is still verified); with a
        ``floor``, a first draft less confident than it is dropped and the round is a plain step."""
        def decide(j: int, confidence: float) -> str:
            if j == 0 and confidence < floor:
                return "drop"
            return "keep" if confidence < tau else "more"

        return self.adapter_round(state, gamma, decide)

    def policy_round(self, state: State, room: int, ngram: int, policy: DraftPolicy) -> Round:
        """A round whose drafts the cost policy chooses: copied ones, the adapter's (as many as pay), or none."""
        copied, matched = lookup_match(state.context, ngram, room)
        if copied and (k := policy.lookup_count(matched, len(copied))):
            return self.lookup_round(state, copied[:k])
        if room < 1 or not policy.start_adapter():
            return self.ar_step(state)
        if self.resident:  # decided before the round: reading each draft's confidence would wait for the device
            k = policy.plan_adapter(room)
            return self.adapter_round(state, k) if k else self.ar_step(state)
        return self.adapter_round(state, room, lambda _j, confidence: policy.after_draft(confidence, room))

    def draft_policy(self, config: DecodeConfig) -> DraftPolicy:
        """A new request's cost policy; measures the graph costs first if no table covers gamma + 1 rows."""
        if self.costs is None or self.costs.rows < config.gamma + 1:
            self.costs = measure(self, config.gamma + 1)
        return DraftPolicy(self.costs, self.calibration)

    def lookup_round(self, state: State, drafts: list[int]) -> Round:
        """Drafts copied from the context: one shallow pass gives their exit states, the same deep pass verifies."""
        t = perf_counter()
        return self._verify(state, self._shallow(state.context[-1:] + drafts, state.p), drafts, t)

    def _verify(self, state: State, exits, drafts: list, t_start: float, adapter_read: int = 0) -> Round:
        # Verify: one deep pass over [f_0 .. f_k] gives the target token y_i after each position.
        t = perf_counter()
        targets, logits = self._deep(exits, state.p)
        drafts, targets = read_back(drafts, targets)
        # Accept the longest prefix with d_{i+1} == y_i, plus one target token (correction or bonus);
        # when sampling, the speculative-sampling rule instead (verify.py).
        accepted, target = state.rule.verify(drafts, targets, logits)
        tokens = drafts[:accepted] + [target]
        state.timings["draft" if drafts else "verify"] += t - t_start
        state.timings["verify"] += perf_counter() - t
        margins = top2_margins(logits[:len(tokens)]).tolist() if state.record_margins else []  # only they cross
        return Round(tokens, drafts, accepted, margins, exits, adapter_read)

    def commit(self, state: State, step: Round) -> None:
        """Move past the round's committed tokens; every cache slot past them is stale from now on."""
        n = len(step.tokens)  # positions p .. p + n - 1 (t_0 and the accepted drafts) are committed now
        if step.adapter_read:  # the adapter read every unseen state and this round's first adapter_read exits
            state.unseen.clear()
        state.unseen.append(step.exits[:, step.adapter_read:n])
        state.context += step.tokens
        state.produced += n

    def generate(self, prompt_ids: list[int], config: DecodeConfig, record_margins: bool = False,
                 policy: DraftPolicy | None = None) -> Generation:
        """A new generation of ``prompt_ids`` under ``config`` (``config.mode``: Kangaroo or plain decoding); iterate
        it for (round, stop) per round, its tokens already cut at EOS / max_new_tokens, until done (nothing runs
        before). ``record_margins`` fills each round's target top-1 minus top-2 logits; ``policy``: the cost
        policy's drafting object (default: a new ``draft_policy(config)``)."""
        if not isinstance(config, DecodeConfig):
            raise TypeError(f"Decoder.generate takes (prompt_ids, config, ...), got {type(config).__name__} for the "
                            "config: the mode is a DecodeConfig field now (DecodeConfig(mode=...))")
        return Generation(self, prompt_ids, config, record_margins, policy)

    def _rounds(self, generation: Generation):
        """The rounds of ``generation`` (``Generation`` iterates them)."""
        config, kangaroo = generation.config, generation.config.mode == "kangaroo"
        policy = (generation.policy or self.draft_policy(config)) if kangaroo and config.policy == "cost" else None
        state = generation.state = self.prefill(generation.prompt_ids, kangaroo, config.gamma)
        state.rule, state.record_margins = rule_for(config), generation.record_margins
        while True:
            remaining = config.max_new_tokens - state.produced
            # Never draft past the token budget or the cache: k drafts commit at most k + 1 tokens.
            room = min(config.gamma, remaining - 1, self.max_seq_len - 1 - state.p) if kangaroo else 0
            if policy is not None:
                step = self.policy_round(state, room, config.lookup_ngram, policy)
                policy.observe(len(step.drafts), step.accepted, len(step.tokens))
            elif copied := lookup_drafts(state.context, config.lookup_ngram, room):  # the context repeats itself
                step = self.lookup_round(state, copied)
            elif room >= 1:
                step = self.kangaroo_round(state, min(state.gamma, room), config.tau, config.draft_floor)
                if config.adaptive_gamma and step.drafts:  # a round that verified no draft says nothing of gamma
                    state.gamma = next_gamma(state.gamma, step, config.gamma)
            else:  # plain step (also Kangaroo's last token, where a draft could not be committed)
                step = self.ar_step(state)
            step.tokens, stop = self._cut(step.tokens, remaining)
            yield step, stop
            if stop:
                return
            self.commit(state, step)
            if state.p >= self.max_seq_len:
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


def read_back(drafts: list, targets) -> tuple[list[int], list[int]]:
    """A round's drafts and target ids as host lists: the round's one device-to-host copy. Drafts are host ints
    (a rule read them as they came) or still-unread [1, 1] arrays of a device round, which cross with the targets."""
    if drafts and not isinstance(drafts[0], int):
        both = to_host(concat([*drafts, targets]))[0].tolist()
        return both[:len(drafts)], both[len(drafts):]
    return drafts, to_host(targets)[0].tolist()


def positions(start: int, n: int) -> np.ndarray:
    """``position_ids`` [1, n] for n new tokens from ``start``."""
    return np.arange(start, start + n, dtype=np.int64)[None]
