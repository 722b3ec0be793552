"""Benchmark arithmetic on real ``GenerationResult``s, kept in plain functions.

* A question's speed is Spec-Bench's: all its turns' new tokens over all its turns' wall time.
* Speedup (Spec-Bench's definition): mean over questions of the method's speed divided by the mean over
  the same questions of the baseline's speed (a ratio of means, not a mean of ratios).
* Acceptance metrics pool every Kangaroo round of every question into one ``AcceptanceLog``.
"""

from __future__ import annotations

from typing import Iterable

from ..runner.api import GenerationResult
from ..runner.stats import AcceptanceLog


def question_speed(turns: Iterable[GenerationResult]) -> float:
    """Tokens per second of one question: total new tokens over total wall time (prefill included)."""
    turns = list(turns)
    seconds = sum(t.stats.total_s for t in turns)
    return sum(t.stats.new_tokens for t in turns) / seconds if seconds > 0 else 0.0


def mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def speedup(method_speeds: list[float], baseline_speeds: list[float]) -> float | None:
    """Mean tokens/s of the method over mean tokens/s of the baseline, on the same questions."""
    if len(method_speeds) != len(baseline_speeds):
        raise ValueError(f"speedup needs paired speeds, got {len(method_speeds)} and {len(baseline_speeds)}")
    method, baseline = mean(method_speeds), mean(baseline_speeds)
    return method / baseline if method is not None and baseline else None


def pooled_acceptance(results: Iterable[GenerationResult]) -> AcceptanceLog:
    """Every round of every result in one log (for #MAT, CTAR(w), accepted lengths, per-position rates)."""
    log = AcceptanceLog()
    for r in results:
        log.extend(r.stats.acceptance)
    return log


def acceptance_summary(log: AcceptanceLog, gamma: int) -> dict:
    """#MAT (tokens per deep pass), CTAR(w) for w = 1..gamma, accepted-length histogram, per-position rates."""
    return {
        "rounds": log.rounds,
        "mean_accepted": log.mean_accepted,
        "ctar": log.ctar(gamma),
        "accepted_by_position": log.accepted_by_position(gamma),
        "accepted_histogram": log.histogram(gamma),
    }


def time_split(results: Iterable[GenerationResult]) -> dict[str, float]:
    """Seconds spent in prefill, draft and verify (AR: every deep step), the rest, and tokens produced."""
    results = list(results)
    total = sum(r.stats.total_s for r in results)
    prefill = sum(r.stats.prefill_s for r in results)
    draft = sum(r.stats.draft_s for r in results)
    verify = sum(r.stats.verify_s for r in results)
    return {"total_s": total, "prefill_s": prefill, "draft_s": draft, "verify_s": verify,
            "other_s": max(0.0, total - prefill - draft - verify),
            "new_tokens": sum(r.stats.new_tokens for r in results)}
