"""Teacher features on disk: built once, in shards, reused by every training run that needs them.

A cache directory is keyed by everything that determines its contents (the target model's config and
weight files, the selected examples, ``FeatureSettings``); it lives under
``$KANGAROO_TRT_CACHE/train-features/<key>`` unless a directory is given. Shards are written atomically,
so an interrupted build resumes at the first missing shard. ``meta.json`` records the exit layers
whose hidden states the shards hold; asking a complete cache for another layer adds that layer's states with a
shallow pass (``add_exit_layers``), keeping the teacher's targets. A build of more scored examples starts from
the full shards of a smaller complete build of the same target, data and settings (``smaller_build``), so a
teacher pass over a large data set can grow over several runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from ..bundled import cache_root
from ..errors import ConfigError
from .data import Example
from .teacher import SequenceFeatures, Teacher

CACHE_VERSION = 1


@dataclass(frozen=True)
class FeatureSettings:
    """What the teacher pass depends on (besides the model and the data)."""

    self_distill: bool = True  # generate the responses greedily with the target itself
    max_examples: int = 512
    max_prompt_tokens: int = 256  # longer prompts are left out
    max_new_tokens: int = 128  # response length cap (generated or given)
    top_k: int = 32  # teacher probabilities kept per position
    seed: int = 0  # which examples are selected, and the held-out split
    batch_size: int = 16  # generation batch (left padding changes numerics slightly)

    def __post_init__(self) -> None:
        for name in ("max_examples", "max_prompt_tokens", "max_new_tokens", "top_k", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")


def _model_fingerprint(model_dir: Path) -> str:
    h = hashlib.sha256((model_dir / "config.json").read_bytes())
    for f in sorted(model_dir.glob("*.safetensors")) + sorted(model_dir.glob("pytorch_model*.bin")):
        h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()


def select_examples(examples: list[Example], teacher: Teacher, settings: FeatureSettings,
                    ) -> list[tuple[Example, list[int]]]:
    """Shuffle with the seed, drop duplicate and over-long prompts, keep ``max_examples`` (example, prompt ids)."""
    order = list(range(len(examples)))
    random.Random(settings.seed).shuffle(order)
    chosen, seen = [], set()
    for i in order:
        example = examples[i]
        if example.prompt in seen and example.chat:
            continue
        if example.response is None and not (settings.self_distill and example.chat):
            continue  # nothing to score: prompt-only records need self-distillation
        ids = teacher.prompt_ids(example)
        if len(ids) > settings.max_prompt_tokens or (example.response is not None
                                                    and not teacher.response_ids(example, settings.max_new_tokens)):
            continue  # too long, or nothing to learn from (a one-token text)
        seen.add(example.prompt)
        chosen.append((example, ids))
        if len(chosen) == settings.max_examples:
            break
    if not chosen:
        raise ConfigError("no example survived selection: prompt-only records need self-distillation, and prompts "
                          f"must fit --max-prompt-tokens {settings.max_prompt_tokens}")
    return chosen


class FeatureCache:
    """Shards of ``SequenceFeatures`` in one directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    @property
    def meta(self) -> dict:
        path = self.directory / "meta.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def load(self, exit_layer: int) -> list[SequenceFeatures]:
        """All sequences with only ``exit_layer``'s hidden states, ordered by example index."""
        meta = self.meta
        if not meta.get("complete") or exit_layer not in meta["exit_layers"]:
            raise ConfigError(f"feature cache {self.directory} is incomplete or lacks exit layer {exit_layer}: rebuild it")
        out = []
        for i in range(meta["shards"]):
            for record in torch.load(self.directory / f"shard-{i:05d}.pt", weights_only=True):
                record["hidden"] = {exit_layer: record["hidden"][exit_layer]}
                out.append(SequenceFeatures(**record))
        return sorted(out, key=lambda f: f.index)


def cache_key(model_dir: Path, examples: str, settings: FeatureSettings) -> str:
    """What a cache's contents are a function of: the target, all the examples (their ``examples_digest``) and
    the teacher's settings."""
    return hashlib.sha256(json.dumps({
        "version": CACHE_VERSION, "model": _model_fingerprint(model_dir), "settings": dataclasses.asdict(settings),
        "examples": examples}, sort_keys=True).encode()).hexdigest()


def examples_digest(examples: list[Example]) -> str:
    return hashlib.sha256(repr(examples).encode()).hexdigest()


def smaller_build(model_dir: Path, examples: str, settings: FeatureSettings, exit_layers: tuple[int, ...],
                  root: Path) -> FeatureCache | None:
    """The largest complete cache under ``root`` of the same target, data and settings but fewer examples, holding
    ``exit_layers``: its full shards are this build's first shards. Scored responses only: their shards hold the
    examples in selection order (the first N selected are the same for any ``max_examples`` >= N); self-distilled
    batches are grouped by prompt length, so they differ. ``examples``: their ``examples_digest``."""
    if settings.self_distill:
        return None
    best = None
    for path in sorted(root.glob("*/meta.json")):
        other = FeatureCache(path.parent)
        try:
            meta = other.meta
        except (OSError, ValueError):
            continue  # not one of ours, or being written
        size = meta.get("settings", {}).get("max_examples")
        if (not meta.get("complete") or not isinstance(size, int) or size >= settings.max_examples
                or not set(exit_layers) <= set(meta.get("exit_layers", []))):
            continue
        if meta.get("key") != cache_key(model_dir, examples, dataclasses.replace(settings, max_examples=size)):
            continue
        if best is None or meta["examples"] > best.meta["examples"]:
            best = other
    return best


def build_features(model_dir: Path, examples: list[Example], settings: FeatureSettings, exit_layers: tuple[int, ...],
                   cache_dir: Path | None = None, device: str = "cpu", log: Callable[[str], None] = print,
                   ) -> FeatureCache:
    """Run the teacher over the selected examples (resuming an interrupted build) and return the cache."""
    examples_key = examples_digest(examples)  # hashed once: both keys below need it
    digest = cache_key(model_dir, examples_key, settings)
    cache = FeatureCache(cache_dir or cache_root() / "train-features" / digest[:16])
    meta = cache.meta
    if meta.get("key") == digest and meta.get("complete"):
        missing = tuple(sorted(set(exit_layers) - set(meta["exit_layers"])))
        if missing:  # the targets are there: only the new layers' states are computed
            add_exit_layers(cache, Teacher(model_dir, device), missing, log)
        log(f"teacher features: reusing {cache.directory}")
        return cache
    if meta and (meta.get("key") != digest or not set(exit_layers) <= set(meta["exit_layers"])):
        exit_layers = tuple(sorted(set(exit_layers) | set(meta.get("exit_layers", [])))) if meta.get("key") == digest else exit_layers
        shutil.rmtree(cache.directory)  # other contents, or an unfinished build with fewer exit layers: start over
    cache.directory.mkdir(parents=True, exist_ok=True)
    teacher = Teacher(model_dir, device)
    chosen = select_examples(examples, teacher, settings)
    batches = _batches(chosen, settings)
    meta = {"key": digest, "exit_layers": sorted(exit_layers), "shards": len(batches), "examples": len(chosen),
            "settings": dataclasses.asdict(settings), "complete": False}
    (cache.directory / "meta.json").write_text(json.dumps(meta, indent=2))
    what = "self-distilling (greedy generation)" if settings.self_distill else "scoring responses"
    log(f"teacher features: {what} for {len(chosen)} examples into {cache.directory}")
    if smaller := smaller_build(model_dir, examples_key, settings, exit_layers, cache.directory.parent):
        reused = min(smaller.meta["examples"] // settings.batch_size, len(batches))
        for i in range(reused):
            shard = cache.directory / f"shard-{i:05d}.pt"
            if not shard.is_file():
                _link_or_copy(smaller.directory / shard.name, shard)
        log(f"teacher features: the first {reused * settings.batch_size} examples come from {smaller.directory}")
    start = time.perf_counter()
    for i, batch in enumerate(tqdm(batches, desc="teacher", unit="batch")):
        shard = cache.directory / f"shard-{i:05d}.pt"
        if shard.is_file():
            continue  # resumed build
        generate = [item for item in batch if settings.self_distill and item[1].chat]  # plain text is never generated
        features = teacher.generate([j for j, _, _ in generate], [ids for _, _, ids in generate],
                                    settings.max_new_tokens, exit_layers, settings.top_k) if generate else []
        features += [teacher.score(j, ids, teacher.response_ids(ex, settings.max_new_tokens), exit_layers, settings.top_k)
                     for j, ex, ids in batch if not (settings.self_distill and ex.chat)]
        _write_shard([f.to_dict() for f in features], shard)
    meta["complete"] = True
    meta["build_seconds"] = round(time.perf_counter() - start, 1)  # of the last (possibly resumed) build
    (cache.directory / "meta.json").write_text(json.dumps(meta, indent=2))
    return cache


def _write_shard(records: list[dict], shard: Path) -> None:
    """Atomically: a reader (or a resumed build) sees the old shard or the whole new one, never a part."""
    tmp = shard.with_suffix(".tmp")
    torch.save(records, tmp)
    tmp.rename(shard)


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link where the file system allows it (shards are replaced, never written in place), else a copy."""
    tmp = target.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    tmp.rename(target)


def add_exit_layers(cache: FeatureCache, teacher: Teacher, layers: tuple[int, ...], log: Callable[[str], None] = print,
                    ) -> None:
    """Add hidden states of more exit layers to a complete cache, shard by shard (resumable: a shard that holds
    them is skipped); ``meta.json`` lists the new layers once every shard has them.

    The states come from a full-sequence pass of the layers below the deepest new one. For scored responses that
    is exactly the pass that built the cache; for self-distilled ones the first build took them from the
    generation pass (incremental, left-padded), which differs from this one in the last bits only."""
    meta = cache.meta
    log(f"teacher features: adding exit layers {', '.join(map(str, layers))} to {cache.directory}")
    start = time.perf_counter()
    for i in tqdm(range(meta["shards"]), desc="exit layers", unit="shard"):
        shard = cache.directory / f"shard-{i:05d}.pt"
        records = torch.load(shard, weights_only=True)
        todo = tuple(l for l in layers if any(l not in r["hidden"] for r in records))
        if not todo:
            continue  # resumed
        for record in records:
            record["hidden"].update(teacher.exit_states(record["input_ids"], todo))
        _write_shard(records, shard)
    meta["exit_layers"] = sorted(set(meta["exit_layers"]) | set(layers))
    meta["exit_layer_seconds"] = round(time.perf_counter() - start, 1)
    (cache.directory / "meta.json").write_text(json.dumps(meta, indent=2))


def _batches(chosen: list[tuple[Example, list[int]]], settings: FeatureSettings) -> list[list[tuple[int, Example, list[int]]]]:
    """Generation batches of similar prompt length (less padding); scoring keeps example order."""
    items = [(j, ex, ids) for j, (ex, ids) in enumerate(chosen)]
    if settings.self_distill:
        items.sort(key=lambda item: (len(item[2]), item[0]))
    return [items[i:i + settings.batch_size] for i in range(0, len(items), settings.batch_size)]
