"""fp32 graphs -> INT8 Q/DQ graphs + quality report, in three steps: capture, quantize, measure."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..config import DecodeConfig
from ..export.spec import GraphSpec
from .capture import capture
from .prompts import CALIBRATION_PROMPTS, HELD_OUT_PROMPTS, HELD_OUT_TEXT
from .quality import quality_report, summary
from .quantize import quantize_graph

QUALITY_REPORT = "quality.json"


@dataclass(frozen=True)
class Int8Result:
    graphs: dict[str, Path]  # graph -> int8 ONNX file
    quantized_nodes: dict[str, int]  # graph -> number of quantized MatMuls
    report: dict[str, Any]


def encode_prompts(tokenizer, prompts: tuple[str, ...]) -> list[list[int]]:
    """Chat-formatted where the model has a chat template (that is what it will be served), else plain."""
    if tokenizer.chat_template:
        return [list(tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                                   tokenize=True, return_dict=False)) for p in prompts]
    return [tokenizer(p, add_special_tokens=True)["input_ids"] for p in prompts]


def build_int8(fp32: dict[str, tuple[Path, GraphSpec]], out_dir: Path, tokenizer, eos_ids: tuple[int, ...],
               prefill_chunk: int, method: str = "minmax", report_tokens: int = 32,
               log: Callable[[str], None] = print) -> Int8Result:
    """Write ``out_dir/<graph>.onnx`` (INT8 Q/DQ) and ``out_dir/quality.json``; fp32 graphs are only read."""
    out_dir.mkdir(parents=True, exist_ok=True)
    samples = capture(fp32, encode_prompts(tokenizer, CALIBRATION_PROMPTS), eos_ids, prefill_chunk)
    log("int8 calibration samples: " + ", ".join(f"{g} {len(s)}" for g, s in samples.items()))
    paths, counts = {}, {}
    for name, (path, spec) in fp32.items():
        paths[name] = out_dir / f"{name}.onnx"
        counts[name] = len(quantize_graph(path, paths[name], spec, samples[name], method))
        log(f"quantized {name}: {counts[name]} MatMuls int8 (weights per channel, activations per tensor, symmetric)")
    int8 = {name: (paths[name], spec) for name, (_, spec) in fp32.items()}
    text_ids = tokenizer(HELD_OUT_TEXT, add_special_tokens=True)["input_ids"]
    config = DecodeConfig(gamma=6, tau=0.6, max_new_tokens=report_tokens)
    report = quality_report(fp32, int8, text_ids, encode_prompts(tokenizer, HELD_OUT_PROMPTS), eos_ids,
                            prefill_chunk, config)
    report.update({"calibration": {"tool": "onnxruntime.quantization.quantize_static (QDQ)", "method": method,
                                   "prompts": len(CALIBRATION_PROMPTS),
                                   "samples": {g: len(s) for g, s in samples.items()}},
                   "quantized_matmuls": counts})
    (out_dir / QUALITY_REPORT).write_text(json.dumps(report, indent=2) + "\n")
    log(summary(report))
    return Int8Result(paths, counts, report)
