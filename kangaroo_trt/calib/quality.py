"""The INT8 quality report written at build time: how far the INT8 graphs drift from the fp32 ones.

Measured on held-out text and prompts (``prompts.py``), never on the calibration prompts, with ONNX
Runtime CPU running both precisions:

* ``agreement``: teacher-forced top-1 agreement with the fp32 pipeline, one INT8 graph at a time
  (``shallow``: fp32 deep on INT8 exit states; ``deep``: INT8 deep on fp32 exit states; ``adapter``: INT8
  adapter drafts vs fp32 drafts) and all three INT8 (``all_target``, ``all_draft``);
* ``acceptance``: Kangaroo's mean tokens per deep pass on fp32 and on INT8 graphs (same prompts);
* ``lossless``: Kangaroo on the INT8 graphs == greedy AR on the same INT8 graphs on every prompt;
  ``mismatches`` says, for each prompt where not, the first differing token and both runs' top-1 minus
  top-2 logit margin there (a near-tie that the verify pass's n-token kernels resolve differently from
  the n = 1 kernels, or a real bug if the margin is large);
* ``ar_ms_per_token``: greedy AR decoding speed of each precision on ONNX Runtime CPU (this machine).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from time import perf_counter
from typing import Any

import numpy as np

from ..config import DecodeConfig
from ..contract.spec import GraphSpec
from ..runner.backend import Backend
from ..runner.decode import Decoder, Transcript, positions
from ..runner.equality import first_difference
from ..runner.stats import AcceptanceLog

Graphs = dict[str, tuple[Path, GraphSpec]]


def _chunks(total: int, chunk: int):
    return ((s, min(s + chunk, total)) for s in range(0, total, chunk))


def exit_states(backend: Backend, ids: list[int], chunk: int) -> np.ndarray:
    runner = backend.graph("shallow")
    return np.concatenate([runner.run({"input_ids": np.array([ids[a:b]], np.int64), "position_ids": positions(a, b - a)},
                                      a)["hidden"].copy() for a, b in _chunks(len(ids), chunk)], axis=1)


def head_ids(backend: Backend, graph: str, hidden: np.ndarray, chunk: int) -> np.ndarray:
    """Teacher-forced argmax ids of the ``deep`` (target_ids) or ``adapter`` (draft_ids) graph on ``hidden``."""
    runner, key = backend.graph(graph), "target_ids" if graph == "deep" else "draft_ids"
    chunk = min(chunk, runner.spec.head_rows or chunk)  # calls no longer than the rows its head outputs
    return np.concatenate([runner.run({"hidden": hidden[:, a:b], "position_ids": positions(a, b - a)}, a)[key][0].copy()
                           for a, b in _chunks(hidden.shape[1], chunk)])


def agreement(fp32: Backend, int8: Backend, ids: list[int], chunk: int) -> dict[str, float]:
    ref_h, q_h = exit_states(fp32, ids, chunk), exit_states(int8, ids, chunk)
    ref_t, ref_d = head_ids(fp32, "deep", ref_h, chunk), head_ids(fp32, "adapter", ref_h, chunk)
    rate = lambda a, b: float(np.mean(a == b))  # noqa: E731
    return {
        "tokens": len(ids),
        "shallow": rate(head_ids(fp32, "deep", q_h, chunk), ref_t),
        "adapter": rate(head_ids(int8, "adapter", ref_h, chunk), ref_d),
        "deep": rate(head_ids(int8, "deep", ref_h, chunk), ref_t),
        "all_target": rate(head_ids(int8, "deep", q_h, chunk), ref_t),
        "all_draft": rate(head_ids(int8, "adapter", q_h, chunk), ref_d),
    }


def _decode(decoder: Decoder, ids: list[int], mode: str, config: DecodeConfig) -> tuple[Transcript, float]:
    """The generation (with the target's top-1 minus top-2 logit per token) and its seconds."""
    t, generation = perf_counter(), decoder.generate(ids, replace(config, mode=mode), record_margins=True)
    for step, _ in generation:
        if not step.tokens:
            break
    return generation.transcript, perf_counter() - t


def decoding(backends: dict[str, Backend], prompts: list[list[int]], eos_ids: tuple[int, ...], prefill_chunk: int,
             config: DecodeConfig) -> dict[str, Any]:
    """Per precision: Kangaroo acceptance, AR speed, and Kangaroo == AR on the same graphs."""
    out: dict[str, Any] = {"acceptance": {}, "ar_ms_per_token": {}, "lossless": {}, "mismatches": {}, "prompts": len(prompts),
                           "max_new_tokens": config.max_new_tokens, "gamma": config.gamma, "tau": config.tau}
    for precision, backend in backends.items():
        decoder = Decoder(backend, eos_ids, prefill_chunk)
        log, ar_s, ar_tokens, mismatches = AcceptanceLog(), 0.0, 0, []
        for k, ids in enumerate(prompts):
            ar, seconds = _decode(decoder, ids, "ar", config)
            ar_s, ar_tokens = ar_s + seconds, ar_tokens + len(ar.tokens)
            kangaroo, _ = _decode(decoder, ids, "kangaroo", config)
            log.extend(kangaroo.acceptance)
            if kangaroo.tokens != ar.tokens:  # where, and how close AR's top-2 logits were there (a near-tie or not)
                i = first_difference(kangaroo.tokens, ar.tokens)
                mismatches.append({"prompt": k, "first_difference": i,
                                   "ar_margin": ar.margins[i] if i < len(ar.margins) else None,
                                   "kangaroo_margin": kangaroo.margins[i] if i < len(kangaroo.margins) else None})
        out["acceptance"][precision] = log.mean_accepted
        out["ar_ms_per_token"][precision] = 1000 * ar_s / max(ar_tokens, 1)
        out["lossless"][precision] = not mismatches
        out["mismatches"][precision] = mismatches
    return out


def quality_report(fp32: Graphs, int8: Graphs, text_ids: list[int], prompts: list[list[int]], eos_ids: tuple[int, ...],
                   prefill_chunk: int, config: DecodeConfig, threads: int | None = 1) -> dict[str, Any]:
    from ..runner.ort_backend import OrtCpuBackend

    max_seq_len = next(iter(fp32.values()))[1].caches[0].shape[2]
    text_ids = text_ids[:max_seq_len]
    prompts = [p[: max_seq_len - config.max_new_tokens - 1] for p in prompts]
    backends = {"fp32": OrtCpuBackend(fp32, threads), "int8": OrtCpuBackend(int8, threads)}
    try:
        report = {"agreement": agreement(backends["fp32"], backends["int8"], text_ids, prefill_chunk)}
        report.update(decoding(backends, prompts, eos_ids, prefill_chunk, config))
    finally:
        for backend in backends.values():
            backend.close()
    report["threads"] = threads
    return report


def summary(report: dict[str, Any]) -> str:
    a, acc, ms = report["agreement"], report["acceptance"], report["ar_ms_per_token"]
    return (f"int8 top-1 agreement with fp32 over {a['tokens']} held-out tokens: shallow {a['shallow']:.3f}, "
            f"adapter {a['adapter']:.3f}, deep {a['deep']:.3f}, all {a['all_target']:.3f}; "
            f"tokens per deep pass fp32 {acc['fp32']:.2f} -> int8 {acc['int8']:.2f}; "
            f"AR on ORT CPU fp32 {ms['fp32']:.1f} ms/token, int8 {ms['int8']:.1f} ms/token; "
            f"int8 Kangaroo == int8 AR: {report['lossless']['int8']}")
