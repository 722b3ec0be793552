"""``train_adapter``: data file -> teacher features (cached) -> trained adapter directory with its card.

This is the Python API behind ``kangaroo-train``; ``kangaroo-tune`` calls it once per candidate exit layer.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..bundled import default_questions_path, resolve_model
from ..model.weights import save_adapter
from .cache import FeatureCache, FeatureSettings, build_features
from .card import write_card
from .data import BenchmarkFilter, read_examples
from .trainer import TrainConfig, TrainResult, finish, train


@dataclass(frozen=True)
class DataSource:
    """Where training examples come from and what must never be trained on."""

    path: Path
    exclude: tuple[Path, ...] = ()  # benchmark question files (Spec-Bench / MT-Bench format or ours)
    skip_bad: bool = False  # skip malformed records instead of failing on the first one


def default_exclude() -> tuple[Path, ...]:
    """The Spec-Bench questions shipped with the package (they include the 80 MT-Bench questions)."""
    path = default_questions_path()
    return (path,) if path.is_file() else ()


def prepare_features(model: str, source: DataSource, settings: FeatureSettings, exit_layers: tuple[int, ...],
                     cache_dir: Path | None = None, device: str = "cpu", log: Callable[[str], None] = print,
                     ) -> tuple[Path, FeatureCache, dict]:
    """Read and filter the data, then build (or reuse) the teacher features; returns (model dir, cache, data summary)."""
    model_dir = resolve_model(model)
    exclude = BenchmarkFilter.from_files(list(source.exclude)) if source.exclude else None
    examples = read_examples(source.path, skip_bad=source.skip_bad, exclude=exclude, warn=log)
    cache = build_features(model_dir, examples, settings, exit_layers, cache_dir, device, log)
    summary = {"file": Path(source.path).name, "usable_records": len(examples),
               "benchmark_prompts_excluded_from": [f"{p.parent.name}/{p.name}" for p in source.exclude],
               "benchmark_records_left_out": exclude.hits if exclude else 0,
               "examples": cache.meta["examples"], "teacher_seconds": cache.meta.get("build_seconds")}
    return model_dir, cache, summary


def train_adapter(model: str, source: DataSource, out: Path, config: TrainConfig,
                  settings: FeatureSettings = FeatureSettings(), cache_dir: Path | None = None, device: str = "cpu",
                  extra_exit_layers: tuple[int, ...] = (), decode: dict | None = None,
                  log: Callable[[str], None] = print) -> TrainResult:
    """Train an adapter for ``model`` and write it (+ TRAINING_CARD.md) to ``out``.

    ``config.draft_vocab`` > 0 trains and writes a draft head over that many of the most frequent response
    tokens (``draft_vocab.py``).
    """
    start = time.perf_counter()
    layers = tuple(sorted({config.exit_layer, *extra_exit_layers}))
    model_dir, cache, data = prepare_features(model, source, settings, layers, cache_dir, device, log)
    features = cache.load(config.exit_layer)
    result = train(model_dir, features, config, Path(out), device, log, features_key=cache.meta["key"])
    meta = {"model": model, "training": {
        "data": data, "teacher": dataclasses.asdict(settings), "train": dataclasses.asdict(config),
        "steps": result.steps, "train_seconds": round(result.seconds, 1),
        "total_seconds": round(time.perf_counter() - start, 1), "device": device,
        "train_tokens": result.train_tokens, "heldout_tokens": result.heldout_tokens, "history": result.history}}
    if decode:
        meta["decode"] = decode
    if result.draft_vocab:
        meta["draft_vocab"] = result.draft_vocab
    if result.init_from:
        meta["training"]["init_from"] = result.init_from
    save_adapter(result.modules, out, meta)
    write_card(Path(out))
    finish(Path(out))
    log(f"adapter written to {out}")
    return result
