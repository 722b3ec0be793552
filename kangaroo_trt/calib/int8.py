"""fp32 graphs -> INT8 Q/DQ graphs + quality report: capture, smooth, quantize, measure.

1. capture: decode the calibration prompts on the fp32 graphs, recording every graph's real inputs;
2. smooth (when the PyTorch modules are given): SmoothQuant-rewrite them (same function) and export that
   fp32 variant to a scratch folder; the quantizer reads it instead of the plain fp32 graphs;
3. quantize: ONNX Runtime ``quantize_static`` (Q/DQ, symmetric, per-channel weights), calibrated on (1);
4. measure: the quality report against the plain fp32 graphs on held-out text and prompts.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..chat import encode_chat, messages_of
from ..config import DecodeConfig
from ..export.onnx_export import export_graph
from ..contract.spec import GraphSpec
from .capture import capture
from .prompts import CALIBRATION_PROMPTS, HELD_OUT_PROMPTS, HELD_OUT_TEXT
from .quality import quality_report, summary
from .quantize import KEEP_FP32, quantize_graph, weight_only_graph
from .smooth import ALPHA, smooth

QUALITY_REPORT = "quality.json"
# Graphs quantized weight-only (W8, fp32 activations); the others are W8A8. Why: see calib/quantize.py.
WEIGHT_ONLY = ("deep",)


@dataclass(frozen=True)
class Int8Result:
    graphs: dict[str, Path]  # graph -> int8 ONNX file
    quantized_nodes: dict[str, int]  # graph -> number of quantized MatMuls
    report: dict[str, Any]


def encode_prompts(tokenizer, prompts: tuple[str, ...]) -> list[list[int]]:
    """Chat-formatted where the model has a chat template (that is what it will be served), else plain."""
    if tokenizer.chat_template:
        return [encode_chat(tokenizer, messages_of(p)) for p in prompts]
    return [tokenizer(p, add_special_tokens=True)["input_ids"] for p in prompts]


def build_int8(fp32: dict[str, tuple[Path, GraphSpec]], out_dir: Path, tokenizer, eos_ids: tuple[int, ...],
               prefill_chunk: int, modules=None, opset: int = 17, alpha: float = ALPHA, method: str = "minmax",
               report_tokens: int = 32, log: Callable[[str], None] = print) -> Int8Result:
    """Write ``out_dir/<graph>.onnx`` (INT8 Q/DQ) and ``out_dir/quality.json``; fp32 graphs are only read.

    ``modules`` (the fp32 ``KangarooModules`` the graphs were exported from) enables SmoothQuant with
    ``alpha``; without them the fp32 graphs are quantized as they are.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    samples = capture(fp32, encode_prompts(tokenizer, CALIBRATION_PROMPTS), eos_ids, prefill_chunk)
    log("int8 calibration samples: " + ", ".join(f"{g} {len(s)}" for g, s in samples.items()))
    specs = {name: spec for name, (_, spec) in fp32.items()}
    scratch = out_dir / ".smoothed"
    try:
        sources = {name: path for name, (path, _) in fp32.items()}
        if modules is not None:
            smoothed = smooth(modules, {g: s for g, s in samples.items() if g not in WEIGHT_ONLY}, specs, alpha)
            scratch.mkdir(exist_ok=True)
            vocab = modules.model_spec.vocab_size
            for name, spec in specs.items():
                if name in WEIGHT_ONLY:
                    continue
                sources[name] = scratch / f"{name}.onnx"
                export_graph(smoothed.graphs()[name], spec, sources[name], opset, vocab)
        paths, counts = {}, {}
        for name, spec in specs.items():
            paths[name] = out_dir / f"{name}.onnx"
            if name in WEIGHT_ONLY:  # from the plain fp32 graph: nothing to smooth without activation scales
                counts[name] = len(weight_only_graph(fp32[name][0], paths[name], spec))
                log(f"quantized {name}: {counts[name]} MatMul weights int8 per channel, activations fp32 (weight-only)")
                continue
            counts[name] = len(quantize_graph(sources[name], paths[name], spec, samples[name], method))
            log(f"quantized {name}: {counts[name]} MatMuls int8 (weights per channel, activations per tensor, symmetric"
                f"{f', SmoothQuant alpha {alpha}' if modules is not None else ''})")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    int8 = {name: (paths[name], spec) for name, (_, spec) in fp32.items()}
    text_ids = tokenizer(HELD_OUT_TEXT, add_special_tokens=True)["input_ids"]
    config = DecodeConfig(gamma=6, tau=0.6, max_new_tokens=report_tokens)
    report = quality_report(fp32, int8, text_ids, encode_prompts(tokenizer, HELD_OUT_PROMPTS), eos_ids,
                            prefill_chunk, config)
    report.update({"calibration": {"tool": "onnxruntime.quantization.quantize_static (QDQ)", "method": method,
                                   "smoothquant_alpha": alpha if modules is not None else None,
                                   "kept_fp32": list(KEEP_FP32), "weight_only": list(WEIGHT_ONLY),
                                   "prompts": len(CALIBRATION_PROMPTS),
                                   "samples": {g: len(s) for g, s in samples.items()}},
                   "quantized_matmuls": counts})
    (out_dir / QUALITY_REPORT).write_text(json.dumps(report, indent=2) + "\n")
    log(summary(report))
    if not report["lossless"]["int8"]:
        log(f"warning: int8 Kangaroo != int8 AR on {len(report['mismatches']['int8'])} held-out prompts "
            f"(first differences and logit margins in {QUALITY_REPORT}): do not serve these int8 graphs as lossless")
    return Int8Result(paths, counts, report)
