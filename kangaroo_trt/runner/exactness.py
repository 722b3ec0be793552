"""The exactness check behind ``kangaroo-check``: are a multi-row call's rows bitwise those of one-row calls?

Kangaroo's promise is that greedy output equals plain greedy decoding token for token. A verify pass (and a
prompt-lookup pass) computes ``n`` positions in one shallow and one deep call; plain decoding computes each
alone. The output is identical by construction only if every value that decides a committed token is bitwise
the same either way (``decode.py``, exact mode). This module measures that, on the decoder's own graph calls
(so the padding of exact mode, when on, is what is measured):

1. **Row invariance.** For each prompt and a few cache fills ``p``, the next tokens go through the shallow and
   deep graphs one per call, then ``n`` at a time for ``n = 2 .. max_verify``. Compared bitwise: the shallow
   graph's exit states, the deep graph's logits and target ids, and the KV-cache rows both graphs wrote.
2. **Kangaroo against AR.** Greedy generations in both modes on a few prompts must be token-identical; a
   divergence is reported with the target's top-1 minus top-2 logit where it starts.

Everything is compared with ``==`` on the arrays: a difference in the last bit fails.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from ..config import DecodeConfig
from .arrays import to_host
from .equality import compare_tokens

# The graphs' outputs compared, in report order.
CHECKED = ("shallow", "deep", "cache")


@dataclass
class RowTally:
    """Bitwise row comparisons of one graph's outputs (``cache``: the KV rows the shallow and deep graphs wrote)."""

    rows: int = 0
    equal: int = 0
    max_abs_diff: float = 0.0

    def add(self, a: np.ndarray, b: np.ndarray) -> None:
        """Compare ``a`` and ``b`` row by row along their first axis."""
        for x, y in zip(a, b):
            self.rows += 1
            self.equal += bool(np.array_equal(x, y))
            diff = np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))
            self.max_abs_diff = max(self.max_abs_diff, float(np.nanmax(diff)) if diff.size else 0.0)

    @property
    def ok(self) -> bool:
        return self.rows > 0 and self.equal == self.rows


@dataclass
class Divergence:
    prompt: int
    position: int | None
    margin: float | None  # AR's top-1 minus top-2 logit where the outputs part


@dataclass
class ExactnessReport:
    backend: str
    precision: str
    exact: bool
    rows: int  # the row count decoding steps are padded to (1: none)
    graphs: dict[str, RowTally] = field(default_factory=lambda: {g: RowTally() for g in CHECKED})
    prompts: int = 0
    identical: int = 0
    divergences: list[Divergence] = field(default_factory=list)

    @property
    def row_invariant(self) -> bool:
        return all(t.ok for t in self.graphs.values())

    @property
    def ok(self) -> bool:
        return self.row_invariant and self.identical == self.prompts

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "precision": self.precision, "exact": self.exact, "rows": self.rows,
                "ok": self.ok, "row_invariant": self.row_invariant,
                "graphs": {g: asdict(t) for g, t in self.graphs.items()},
                "kangaroo_equals_ar": {"prompts": self.prompts, "identical": self.identical,
                                       "divergences": [asdict(d) for d in self.divergences]}}

    def table(self) -> str:
        """A per-graph Markdown table and the Kangaroo-vs-AR line."""
        from ..markdown import markdown_table

        rows = [[g, str(t.rows), str(t.equal), f"{t.max_abs_diff:.3g}", "yes" if t.ok else "NO"] for g, t in self.graphs.items()]
        text = "\n".join(markdown_table(["graph", "rows compared", "bitwise equal", "max abs diff", "invariant"], rows))
        mode = f"exact mode, steps padded to {self.rows} rows" if self.exact and self.rows > 1 else \
            ("exact mode, no padding needed" if self.exact else "exact mode off")
        lines = [f"{self.backend} {self.precision} ({mode})", "", text, "",
                 f"Kangaroo == AR: {self.identical}/{self.prompts} prompts"]
        lines += [f"  prompt {d.prompt}: first difference at output position {d.position}, AR top-2 margin "
                  f"{'unknown' if d.margin is None else f'{d.margin:.3g}'}" for d in self.divergences]
        lines.append("exact: yes" if self.ok else "exact: NO")
        return "\n".join(lines)


def check_rows(decoder, prompt_ids: list[int], fills: tuple[int, ...], max_rows: int, report: ExactnessReport) -> None:
    """Row invariance of ``decoder``'s shallow and deep calls after each prefix length in ``fills``."""
    for fill in fills:
        prefix, p = prompt_ids[:fill], fill - 1  # prefill caches positions < p; prefix[-1] is the first token fed
        tokens = (prompt_ids[p:] + prompt_ids)[:max_rows]  # real token ids, the prompt's own continuation first
        decoder.prefill(prefix, with_adapter=False, gamma=1)
        one_hidden, one_logits, one_targets = [], [], []
        for i, token in enumerate(tokens):
            hidden, (targets, logits) = one_step(decoder, [token], p + i)
            one_hidden.append(hidden[0])
            one_logits.append(logits)
            one_targets.append(targets[0])
        one_cache = _cache_rows(decoder, p, len(tokens))
        hidden_1, logits_1 = np.concatenate(one_hidden), np.concatenate(one_logits)
        for n in range(2, len(tokens) + 1):
            hidden, (targets, logits) = one_step(decoder, tokens[:n], p)  # slots >= p are stale: these rows replace them
            report.graphs["shallow"].add(hidden[0], hidden_1[:n])
            report.graphs["deep"].add(logits, logits_1[:n])
            report.graphs["deep"].add(targets[0][:, None], np.array(one_targets[:n]))
            cache = _cache_rows(decoder, p, n)
            for name, rows in cache.items():
                report.graphs["cache"].add(rows, one_cache[name][:n])


def one_step(decoder, tokens: list[int], p: int):
    """A decoding step's shallow and deep calls on ``tokens`` at ``p``: exit states, then target ids and logits, as
    host arrays."""
    hidden = decoder._shallow(tokens, p)
    targets, logits = decoder._deep(hidden, p)
    return to_host(hidden), (to_host(targets), to_host(logits))


def _cache_rows(decoder, start: int, n: int) -> dict[str, np.ndarray]:
    """Slots ``start .. start + n`` of every shallow and deep cache buffer, as host arrays [n, kv_heads * head_dim]."""
    out = {}
    for graph in (decoder.shallow, decoder.deep):
        for name, buffer in graph.caches.items():
            rows = buffer[:, :, start:start + n]
            rows = to_host(rows)  # bf16 arrives as fp32, which is exact
            out[f"{graph.spec.name}/{name}"] = np.ascontiguousarray(np.moveaxis(rows[0], 1, 0)).reshape(n, -1)
    return out


def check_generation(engine, prompts: list[list[int]], config: DecodeConfig, report: ExactnessReport) -> None:
    """Greedy Kangaroo against greedy AR on each prompt: token-identical, or the divergence and its margin."""
    for i, ids in enumerate(prompts):
        ar = engine.generate(prompt_ids=ids, config=replace(config, mode="ar"), record_margins=True)
        kangaroo = engine.generate(prompt_ids=ids, config=replace(config, mode="kangaroo"))
        equality = compare_tokens(ar.output_ids, kangaroo.output_ids, ar.margins)
        report.prompts += 1
        if equality.position is None:
            report.identical += 1
        else:
            report.divergences.append(Divergence(i, equality.position, equality.margin))


def check_engine(engine, prompts: list[list[int]], new_tokens: int = 32, fills_per_prompt: int = 2) -> ExactnessReport:
    """The whole check on an open ``KangarooEngine`` (its backend, precision and exact mode)."""
    decoder, manifest = engine.decoder, engine.manifest
    report = ExactnessReport(engine.backend.name, engine.precision, engine.exact, decoder.rows)
    max_rows = manifest.max_verify
    for ids in prompts:
        usable = max(2, min(len(ids), decoder.max_seq_len - max_rows))  # the last row checked fits, padding included
        fills = sorted({max(2, usable * (k + 1) // fills_per_prompt) for k in range(fills_per_prompt)})
        check_rows(decoder, ids[:usable], tuple(fills), max_rows, report)
    check_generation(engine, prompts, engine.decode_config(max_new_tokens=new_tokens), report)
    return report


# Prompts the check decodes when none are given: plain text (no chat template), so any tokenizer encodes them.
CHECK_PROMPTS = (
    "Explain in three sentences why the sky is blue.",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "Translate to French: The weather is nice today and we are going to the beach.",
    "List three differences between a list and a tuple in Python.",
)

# Backends an export checks on, where installed, per precision: ONNX Runtime CPU, which runs on any machine and is
# what `auto` picks there. The PyTorch CPU backend (the numerical reference, padded to max_verify rows) is checked
# by `kangaroo-check --backend torch-cpu` and the test suite: on the real model it takes minutes on 2 cores.
EXPORT_CHECKS = {"onnxruntime-cpu": ("fp32", "fp16", "int8")}


def row_candidates(max_verify: int) -> tuple[int, ...]:
    """Row counts an export tries, cheapest first: no padding, one-row steps padded to two (a runtime whose
    one-row product takes another kernel), every step padded to max_verify (one shape for everything)."""
    return tuple(dict.fromkeys((1, min(2, max_verify), max_verify)))


def export_checks(directory, manifest, log) -> dict[str, dict[str, dict[str, Any]]]:
    """Run the exactness check on a freshly exported engine directory: precision -> backend -> report dict.

    Per backend and precision the smallest padding that passes is recorded (``rows``), and the runner pads to
    it. A check that fails at every row count is recorded too, not fatal: ``KangarooEngine.open`` then refuses
    exact mode there.
    """
    from .api import KangarooEngine
    from .backend import EngineRef
    from .backends import BACKENDS

    results: dict[str, dict[str, dict[str, Any]]] = {}
    for backend, precisions in EXPORT_CHECKS.items():
        if not BACKENDS[backend].available():
            continue
        for precision in (p for p in manifest.precisions if p in precisions):
            ref = EngineRef(directory, manifest, precision)
            with KangarooEngine.from_backend(ref, BACKENDS[backend].open(ref)) as engine:
                prompts = [engine.encode(text, chat=False) for text in CHECK_PROMPTS[:2]]
                for rows in row_candidates(manifest.max_verify):
                    engine.decoder.rows = rows
                    report = check_engine(engine, prompts, new_tokens=24, fills_per_prompt=1)
                    if report.ok:
                        break
            results.setdefault(precision, {})[backend] = report.to_dict()
            graphs = ", ".join(f"{g} {t.equal}/{t.rows}" for g, t in report.graphs.items())
            log(f"exactness {backend} {precision}: {'bitwise' if report.ok else 'NOT EXACT'} "
                f"(rows {report.rows}; {graphs}; Kangaroo == AR {report.identical}/{report.prompts})")
    return results
