"""Measured costs of a round's graph calls on one backend and precision: what the drafting policy weighs.

A ``CostTable`` holds, in milliseconds, a deep pass by its row count (1 .. ``rows``), a shallow pass by row count
(a lookup round runs one over t_0 and its drafts) and one adapter row (a draft step is an adapter row plus a
one-row shallow pass). ``measure`` times them through the ``Decoder``'s own graph-call methods (``_shallow``,
``_adapter``, ``_deep``), so the table reflects whatever the decoder really runs (padding included). The adapter
row is what a draft step adds to its shallow row when draft steps run back to back, as a round runs them: timed
alone, after other graphs' calls, a draft step read 3.4 ms where rounds in a request spent about 2.6 per draft
(SmolLM2, ONNX Runtime CPU; the two small graphs' weights stay in the CPU's caches between draft steps), and the
policy then drafted too little. It writes
cache rows past position ``at`` only; run it between requests (every request's prefill rewrites what it reads).

Tables are cached in the user's cache directory (``$XDG_CACHE_HOME/kangaroo-trt/costs``, never inside an engine
directory, whose files the manifest lists), keyed by the manifest's digest, backend, precision and threads. A table
measured while other work slowed the calls would read too slow for good: a table not confirmed for ``RECHECK_S``
(a cached one from an earlier session, or the one a long-running server uses) is checked against a quick measurement
of one plain step (``holds``) before it is used again, and measured again when the machine now beats it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from time import perf_counter, time

import numpy as np

from .arrays import to_host

REPEATS = 7  # timed calls per shape, interleaved across shapes so that load drifting shifts all of them alike
QUANTILE = 25  # a low percentile of the repeats: the cost when the call had the cores (other load adds noise, not cost)
SCHEMA = 2  # 2: the adapter row measured within a chain of draft steps
CHAIN = 4  # draft steps per timed chain
STALE = 0.8  # a table holds while a quick plain step takes at least this share of the table's plain step
RECHECK_S = 600.0  # a table last measured or confirmed longer ago than this is checked again before use


@dataclass(frozen=True)
class CostTable:
    """Milliseconds per call: ``deep[r - 1]`` / ``shallow[r - 1]`` for r rows, ``adapter`` for one row."""

    deep: tuple[float, ...]
    shallow: tuple[float, ...]
    adapter: float
    backend: str = ""
    precision: str = ""
    checked: float = field(default=0.0, compare=False)  # when it was last measured or confirmed (time.time())

    def __post_init__(self) -> None:
        if not self.deep or len(self.deep) != len(self.shallow):
            raise ValueError("a cost table needs deep and shallow costs for the same row counts (1 or more)")

    @property
    def rows(self) -> int:
        """The largest row count measured (a round verifies at most rows - 1 drafts)."""
        return len(self.deep)

    def deep_ms(self, rows: int) -> float:
        return self.deep[min(rows, self.rows) - 1]

    def shallow_ms(self, rows: int) -> float:
        return self.shallow[min(rows, self.rows) - 1]

    @property
    def draft_ms(self) -> float:
        """One adapter draft: the adapter row that proposes it and the shallow row that gives its exit state."""
        return self.adapter + self.shallow_ms(1)

    def lookup_round_ms(self, drafts: int) -> float:
        """A prompt-lookup round: one shallow pass over t_0 and its copied drafts, one deep pass over them."""
        return self.shallow_ms(1 + drafts) + self.deep_ms(1 + drafts)

    def adapter_round_ms(self, drafts: int, adapter_rows: int) -> float:
        """An adapter round: t_0's shallow row, the adapter rows run, a shallow row per draft kept, the deep pass."""
        return self.shallow_ms(1) + adapter_rows * self.adapter + drafts * self.shallow_ms(1) + self.deep_ms(drafts + 1)

    @property
    def plain_ms(self) -> float:
        """A plain decoding step: shallow then deep on one token."""
        return self.shallow_ms(1) + self.deep_ms(1)

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "CostTable":
        if d.get("schema") != SCHEMA:
            raise ValueError(f"cost table schema {d.get('schema')!r}, expected {SCHEMA}")
        return cls(tuple(float(x) for x in d["deep"]), tuple(float(x) for x in d["shallow"]), float(d["adapter"]),
                   str(d.get("backend", "")), str(d.get("precision", "")), float(d.get("checked", 0.0)))

    def lines(self) -> list[str]:
        """The table as text (``kangaroo-bench`` prints it)."""
        head = f"costs ({self.backend or 'backend'} {self.precision}), ms per call:"
        rows = " ".join(f"{r}:{self.deep_ms(r):.2f}" for r in range(1, self.rows + 1))
        shallow = " ".join(f"{r}:{self.shallow_ms(r):.2f}" for r in range(1, self.rows + 1))
        return [head, f"  deep pass by rows     {rows}", f"  shallow pass by rows  {shallow}",
                f"  adapter row {self.adapter:.2f}, draft step (adapter + shallow row) {self.draft_ms:.2f}, "
                f"plain step {self.plain_ms:.2f}"]


def measure(decoder, rows: int, at: int = 64, repeats: int = REPEATS, backend: str = "", precision: str = "") -> CostTable:
    """Time ``decoder``'s graph calls for 1 .. ``rows`` rows at position ``at`` (one untimed call per shape first).

    A low percentile per shape, smoothed over the row count (``_smooth``)."""
    low = _timed(_calls(decoder, rows, at, chain=True), repeats)
    shallow = _smooth([low[("shallow", r)] for r in range(1, rows + 1)])
    draft_step = low[("chain", CHAIN)] / CHAIN
    return CostTable(_smooth([low[("deep", r)] for r in range(1, rows + 1)]), shallow,
                     round(max(draft_step - shallow[0], 0.1 * draft_step), 4), backend, precision, time())


def holds(table: CostTable, decoder, at: int = 64) -> bool:
    """Whether ``table`` still describes ``decoder``: a quick measurement of one plain step (a one-row shallow and
    deep call, ``REPEATS`` times) is not clearly faster than the table's plain step.

    Load only slows calls down, so a table measured under load reads too slow and fails the check once the machine
    is quieter; a check made under load reads slow itself and keeps the table (which is then the better one)."""
    low = _timed(_calls(decoder, 1, at, chain=False), REPEATS)
    return low[("shallow", 1)] + low[("deep", 1)] >= STALE * table.plain_ms


def _calls(decoder, rows: int, at: int, chain: bool) -> dict:
    """(kind, rows) -> a call of ``decoder``'s graphs: deep and shallow passes of 1 .. ``rows`` rows at position
    ``at``, and with ``chain`` a chain of CHAIN draft steps. Each ends with a one-element read, which waits for a
    device backend's work to finish."""
    at = max(0, min(at, decoder.max_seq_len - rows - 1))
    hidden = decoder._shallow([0] * rows, at)  # exit states to feed the deep and adapter graphs
    calls = {("deep", r): (lambda r=r: to_host(decoder._deep(hidden[:, :r], at)[0][:, :1])) for r in range(1, rows + 1)}
    calls.update({("shallow", r): (lambda r=r: to_host(decoder._shallow([0] * r, at)[:, :1, :1])) for r in range(1, rows + 1)})

    def draft_steps():  # back to back, as a round runs them: an adapter row, then the draft's shallow row
        for _ in range(CHAIN):
            draft = decoder._adapter(hidden[:, :1], at)[0]
            exit_state = decoder._shallow(draft, at + 1)
        to_host(exit_state[:, :1, :1])

    if chain:
        calls[("chain", CHAIN)] = draft_steps
    return calls


def _timed(calls: dict, repeats: int) -> dict:
    """Milliseconds per call: a low percentile of ``repeats`` timed runs, interleaved across the calls, after one
    untimed run each."""
    for call in calls.values():
        call()
    times: dict = {key: [] for key in calls}
    for _ in range(repeats):
        for key, call in calls.items():
            t = perf_counter()
            call()
            times[key].append((perf_counter() - t) * 1e3)
    return {key: float(np.percentile(v, QUANTILE)) for key, v in times.items()}


def due(table: CostTable) -> bool:
    """Whether ``table`` was last measured or confirmed more than ``RECHECK_S`` ago (or at an unknown time)."""
    return not 0.0 <= time() - table.checked <= RECHECK_S


def confirmed(table: CostTable) -> CostTable:
    """``table`` marked as confirmed now (``holds`` said so)."""
    return replace(table, checked=time())


def _smooth(ms: list[float]) -> tuple[float, ...]:
    """Costs by row count as one row's measured cost and a straight line through the wider passes' (one noisy
    reading moves a line less than it moves a row), never decreasing with the row count."""
    if len(ms) > 2:
        slope, base = np.polyfit(np.arange(2, len(ms) + 1), ms[1:], 1)
        ms = ms[:1] + [base + max(slope, 0.0) * r for r in range(2, len(ms) + 1)]
    return tuple(round(float(x), 4) for x in np.maximum.accumulate(ms))


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kangaroo-trt" / "costs"


def cache_path(engine_key: str, backend: str, precision: str, threads: int | None, rows: int) -> Path:
    """Where the table of one engine (``engine_key``: its manifest's digest and thread pool) on one backend lives."""
    return cache_dir() / f"{engine_key}-{backend}-{precision}-t{threads or 0}-r{rows}.json"


def load(path: Path) -> CostTable | None:
    """A cached table, or None when there is none or it cannot be read (it is then measured again)."""
    try:
        return CostTable.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save(table: CostTable, path: Path) -> None:
    """Write atomically; a cache that cannot be written (read-only home) is skipped: the table is measured again."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(table.to_dict(), indent=1))
        os.replace(tmp, path)
    except OSError:
        pass
