"""The benchmark report as one JSON-ready dict; the Markdown, the terminal table and the plots render from it.

Numbers per task (Spec-Bench's six, or a custom file's categories) and overall: speedup of Kangaroo over
AR (and over transformers ``generate`` when it ran), mean accepted tokens per deep pass (#MAT), CTAR(w),
accepted-length histogram, acceptance by draft position, draft/verify time split, and the equality check.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..runner.equality import MATCH, MISMATCH, NEAR_TIE, SAMPLED, tie_margin
from .metrics import acceptance_summary, mean, pooled_acceptance, question_speed, speedup, time_split
from .questions import tasks_in
from .runner import BenchRun, QuestionRun

SCHEMA_VERSION = 1
REPORT_JSON, REPORT_MD = "report.json", "report.md"


def build_report(bench: BenchRun, engine, command: str | None = None, settings: dict | None = None,
                 environment: dict | None = None) -> dict[str, Any]:
    """Everything the report shows, from the finished questions of ``bench`` run on ``engine``."""
    done = bench.completed
    gamma = bench.decode.gamma
    tasks = tasks_in([r.question for r in done])
    manifest = engine.manifest
    return {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "engine": {
            "directory": str(engine.directory),
            "source_model": manifest.source_model,
            "adapter": manifest.info.get("adapter"),
            "adapter_sha256": manifest.files.get("adapter/adapter.safetensors"),  # which weights, exactly
            "exit_layer": manifest.exit_layer,
            "max_seq_len": manifest.max_seq_len,
            "backend": engine.backend.name,
            "precision": engine.precision,
        },
        "environment": environment or {},
        "settings": {**(settings or {}), "gamma": gamma, "tau": bench.decode.tau,
                     "max_new_tokens": bench.decode.max_new_tokens, "prompt_format": bench.prompt_format,
                     "lookup_ngram": bench.decode.lookup_ngram, "adaptive_gamma": bench.decode.adaptive_gamma,
                     "draft_floor": bench.decode.draft_floor, "policy": bench.decode.policy,
                     "baseline": bench.baseline, "exact": engine.exact, "near_tie_margin": tie_margin(engine.exact),
                     "sampling": None if bench.decode.greedy else {"temperature": bench.decode.temperature,
                                                                   "top_k": bench.decode.top_k, "top_p": bench.decode.top_p}},
        "progress": {"selected": len(bench.questions), "finished": len(bench.runs), "benchmarked": len(done),
                     "interrupted": bench.interrupted,
                     "skipped": [{"question_id": r.question.question_id, "task": r.question.task, "reason": r.skipped}
                                 for r in bench.runs if r.skipped]},
        "overall": summarize(done, gamma, bench.baseline),
        "by_task": {t: summarize([r for r in done if r.question.task == t], gamma, bench.baseline) for t in tasks},
        "time_split": {mode: time_split(_results(done, mode)) for mode in ("kangaroo", "ar")},
        "equality": equality_summary(done),
        "questions": [question_record(r, bench.baseline) for r in bench.runs],
    }


def summarize(runs: list[QuestionRun], gamma: int, baseline: str | None = None) -> dict[str, Any]:
    """Speeds, speedup, acceptance metrics and match count over a group of benchmarked questions."""
    speeds = {m: [question_speed(t.results[m] for t in r.turns) for r in runs] for m in ("kangaroo", "ar")}
    out = {
        "questions": len(runs),
        "turns": sum(len(r.turns) for r in runs),
        "new_tokens": sum(t.results["kangaroo"].stats.new_tokens for r in runs for t in r.turns),
        "kangaroo_tokens_per_s": mean(speeds["kangaroo"]),
        "ar_tokens_per_s": mean(speeds["ar"]),
        "speedup": speedup(speeds["kangaroo"], speeds["ar"]),
        "matched_turns": sum(t.equality.status == MATCH for r in runs for t in r.turns),
        **acceptance_summary(pooled_acceptance(_results(runs, "kangaroo")), gamma),
    }
    if baseline is not None:
        base = [question_speed(t.results[baseline] for t in r.turns) for r in runs]
        out[f"{baseline}_tokens_per_s"] = mean(base)
        out[f"speedup_vs_{baseline}"] = speedup(speeds["kangaroo"], base)
        out[f"ar_speedup_vs_{baseline}"] = speedup(speeds["ar"], base)
        out[f"{baseline}_matches_ar_turns"] = sum(
            t.results[baseline].output_ids == t.results["ar"].output_ids for r in runs for t in r.turns)
    return out


def equality_summary(runs: list[QuestionRun]) -> dict[str, Any]:
    """How many turns matched exactly; every near-tie and every mismatch with its place and margin."""
    cases = {NEAR_TIE: [], MISMATCH: []}
    turns = 0
    for r in runs:
        for number, t in enumerate(r.turns, start=1):
            turns += 1
            if t.equality.status in cases:
                cases[t.equality.status].append(
                    {"question_id": r.question.question_id, "task": r.question.task, "turn": number,
                     **t.equality.to_dict()})
    sampled = sum(t.equality.status == SAMPLED for r in runs for t in r.turns)
    return {"turns": turns, "matched": turns - sampled - len(cases[NEAR_TIE]) - len(cases[MISMATCH]), "sampled": sampled,
            "near_ties": cases[NEAR_TIE], "mismatches": cases[MISMATCH], "passed": not cases[MISMATCH]}


def question_record(run: QuestionRun, baseline: str | None) -> dict[str, Any]:
    q = run.question
    record: dict[str, Any] = {"question_id": q.question_id, "task": q.task, "category": q.category}
    if run.skipped:
        return {**record, "skipped": run.skipped}
    methods = ("kangaroo", "ar") + ((baseline,) if baseline else ())
    record["tokens_per_s"] = {m: question_speed(t.results[m] for t in run.turns) for m in methods}
    record["turns"] = [
        {"prompt_tokens": len(t.results["ar"].prompt_ids), "equality": t.equality.to_dict(),
         **{m: _run_record(t.results[m]) for m in methods}}
        for t in run.turns
    ]
    return record


def _run_record(result) -> dict[str, Any]:
    s = result.stats
    return {"new_tokens": s.new_tokens, "total_s": s.total_s, "tokens_per_s": s.tokens_per_s,
            "prefill_s": s.prefill_s, "rounds": s.acceptance.rounds, "mean_accepted": s.acceptance.mean_accepted,
            "stop_reason": result.stop_reason}


def _results(runs: list[QuestionRun], mode: str):
    return [t.results[mode] for r in runs for t in r.turns]


def write_json(report: dict[str, Any], out_dir: Path) -> Path:
    """report.json as strict JSON (no bare NaN / Infinity, which JSON does not have and strict parsers refuse)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / REPORT_JSON
    path.write_text(json.dumps(_finite(report), indent=1, allow_nan=False) + "\n", encoding="utf-8")
    return path


def _finite(value):
    """``value`` with every non-finite float (a NaN question_id read from JSONL, a rate over no time) as None: null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_report(report: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write report.json, the PNG plots and report.md (which links them) into ``out_dir``."""
    from .markdown import render_markdown
    from .plots import write_plots

    out_dir = Path(out_dir)
    paths = {"json": write_json(report, out_dir)}
    plots = write_plots(report, out_dir)
    paths.update({key: out_dir / name for key, name in plots.items()})
    paths["markdown"] = out_dir / REPORT_MD
    paths["markdown"].write_text(render_markdown(report, plots), encoding="utf-8")
    return paths
