"""Tune exit layer, gamma and tau on the real runtime: ONNX Runtime engines, greedy, wall-clock tokens/s.

For each candidate exit layer an adapter is trained briefly, exported with ``build_engine_dir`` and timed
against plain autoregressive decoding on the *same* engines (``mode="ar"``), on validation prompts (the
held-out split of the training data, never trained on). The best layer is then trained in full and its
(gamma, tau) grid is swept; the winner is written into the adapter's config (``meta["decode"]``, read by
``kangaroo-export build``) together with the sweep table. Every Kangaroo output is also checked
token-for-token against the AR output of the same prompt.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from typing import Callable

from tqdm import tqdm

from ..config import DecodeConfig, ExportConfig, verify_capacity
from ..errors import ConfigError
from ..model.weights import ADAPTER_CONFIG, load_adapter
from .cache import FeatureSettings
from .card import tuning_table, write_card
from .pipeline import DataSource, prepare_features, train_adapter
from .trainer import TrainConfig, split


@dataclass(frozen=True)
class SweepConfig:
    exit_layers: tuple[int, ...] = ()  # candidates; empty: keep the adapter in `out` and sweep gamma/tau only
    candidate_epochs: int = 1  # short training per candidate exit layer
    gammas: tuple[int, ...] = (1, 2, 3, 5, 7)  # small gammas win when drafts are rarely accepted
    taus: tuple[float, ...] = (0.4, 0.6, 0.8)
    prompts: int = 6  # validation prompts
    max_new_tokens: int = 128
    max_seq_len: int = 512
    threads: int | None = 1  # ONNX Runtime intra-op threads (both modes get the same)

    def __post_init__(self) -> None:
        for g in self.gammas:
            DecodeConfig(gamma=g)  # validates
        for t in self.taus:
            DecodeConfig(tau=t)
        if self.prompts < 1 or self.max_new_tokens < 2:
            raise ConfigError("need at least one validation prompt and max_new_tokens >= 2")


@dataclass
class Measurement:
    """Totals over the prompts of one setting."""

    tokens: int = 0
    seconds: float = 0.0
    committed: int = 0
    rounds: int = 0
    mismatches: int = 0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def measure(engine_dir: Path, prompts: list[list[int]], settings: list[tuple[int, float]], max_new_tokens: int,
            threads: int | None) -> tuple[Measurement, dict[tuple[int, float], Measurement]]:
    """AR and Kangaroo (each (gamma, tau)) on every prompt, interleaved per prompt so load drifts hit all alike."""
    from ..runner.api import KangarooEngine

    engine = KangarooEngine.open(engine_dir, threads=threads)
    warm_up = engine.decode_config(max_new_tokens=8)
    engine.generate(prompt_ids=prompts[0], config=dataclasses.replace(warm_up, mode="ar"))  # untimed
    engine.generate(prompt_ids=prompts[0], config=warm_up)
    configs = {(gamma, tau): engine.decode_config(gamma=gamma, tau=tau, max_new_tokens=max_new_tokens)
               for gamma, tau in settings}
    ar, results = Measurement(), {s: Measurement() for s in settings}
    for ids in tqdm(prompts, desc=f"timing {engine_dir.name}", unit="prompt"):
        base = engine.generate(prompt_ids=ids, config=engine.decode_config(mode="ar", max_new_tokens=max_new_tokens))
        ar.tokens += len(base.output_ids)
        ar.seconds += base.stats.total_s
        for (gamma, tau), config in configs.items():
            r = engine.generate(prompt_ids=ids, config=config)
            m = results[(gamma, tau)]
            m.tokens += len(r.output_ids)
            m.seconds += r.stats.total_s
            m.committed += sum(r.stats.acceptance.committed)
            m.rounds += r.stats.acceptance.rounds
            m.mismatches += r.output_ids != base.output_ids
    return ar, results


def _rows(exit_layer: int, ar: Measurement, results: dict) -> list[dict]:
    return [{"exit_layer": exit_layer, "gamma": g, "tau": t, "mean_accepted": m.committed / max(m.rounds, 1),
             "kangaroo_tok_s": m.tokens_per_s, "ar_tok_s": ar.tokens_per_s,
             "speedup": m.tokens_per_s / ar.tokens_per_s if ar.tokens_per_s else 0.0, "mismatches": m.mismatches}
            for (g, t), m in results.items()]


def _engine(model: str, adapter_dir: Path, engine_dir: Path, sweep: SweepConfig, log) -> Path:
    from ..build import build_engine_dir

    checkpoint = load_adapter(adapter_dir)
    export = ExportConfig(exit_layer=checkpoint.exit_layer, max_seq_len=sweep.max_seq_len,
                          max_verify=verify_capacity(max(sweep.gammas)))
    build_engine_dir(model, engine_dir, export, adapter=checkpoint, force=True, log=lambda _: None)
    log(f"built {engine_dir} (exit layer {checkpoint.exit_layer})")
    return engine_dir


def validation_prompts(model: str, source: DataSource, settings: FeatureSettings, heldout_fraction: float,
                       exit_layer: int, count: int, log) -> list[list[int]]:
    """Prompt ids of the first ``count`` held-out examples (the trainer never sees them)."""
    _, cache, _ = prepare_features(model, source, settings, (exit_layer,), log=log)
    _, heldout = split(cache.load(exit_layer), heldout_fraction)
    return [f.input_ids[:f.prompt_len].tolist() for f in heldout[:count]]


def _trained_with(adapter_dir: Path, config: TrainConfig, settings: FeatureSettings) -> bool:
    """True if ``adapter_dir`` holds a finished adapter trained with exactly these settings (a resumed sweep)."""
    path = adapter_dir / ADAPTER_CONFIG
    if not path.is_file():
        return False
    training = json.loads(path.read_text())["meta"].get("training", {})
    return (training.get("train") == json.loads(json.dumps(dataclasses.asdict(config)))
            and training.get("teacher") == dataclasses.asdict(settings))


def update_meta(adapter_dir: Path, **fields) -> None:
    path = adapter_dir / ADAPTER_CONFIG
    cfg = json.loads(path.read_text())
    cfg["meta"].update(fields)
    path.write_text(json.dumps(cfg, indent=2) + "\n")


def tune(model: str, source: DataSource, out: Path, config: TrainConfig, settings: FeatureSettings,
         sweep: SweepConfig, workdir: Path, device: str = "cpu",
         log: Callable[[str], None] = print) -> dict:
    """Pick the exit layer (if candidates are given), train it, pick (gamma, tau); write them into ``out``."""
    start = perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)
    layer_rows: list[dict] = []
    default = DecodeConfig()
    if sweep.exit_layers:
        for layer in sweep.exit_layers:
            candidate = workdir / f"adapter-exit{layer}"
            short = dataclasses.replace(config, exit_layer=layer, epochs=sweep.candidate_epochs)
            if _trained_with(candidate, short, settings):
                log(f"reusing {candidate}: trained with the same settings")
            else:
                train_adapter(model, source, candidate, short, settings, device=device,
                              extra_exit_layers=sweep.exit_layers, log=log)
            prompts = validation_prompts(model, source, settings, config.heldout_fraction, layer, sweep.prompts, log)
            engine = _engine(model, candidate, workdir / f"engine-exit{layer}", sweep, log)
            ar, results = measure(engine, prompts, [(default.gamma, default.tau)], sweep.max_new_tokens, sweep.threads)
            layer_rows += _rows(layer, ar, results)
            log("\n".join(tuning_table(layer_rows)))
        best_layer = max(layer_rows, key=lambda r: r["speedup"])["exit_layer"]
        log(f"exit layer {best_layer}: training it in full ({config.epochs} epochs)")
        train_adapter(model, source, out, dataclasses.replace(config, exit_layer=best_layer), settings,
                      device=device, extra_exit_layers=sweep.exit_layers, log=log)
    elif not (out / ADAPTER_CONFIG).is_file():
        raise ConfigError(f"{out} holds no adapter: train one first, or pass candidate exit layers")
    exit_layer = load_adapter(out).exit_layer
    prompts = validation_prompts(model, source, settings, config.heldout_fraction, exit_layer, sweep.prompts, log)
    engine = _engine(model, out, workdir / "engine-final", sweep, log)
    grid = [(g, t) for g in sweep.gammas for t in sweep.taus]
    ar, results = measure(engine, prompts, grid, sweep.max_new_tokens, sweep.threads)
    rows = _rows(exit_layer, ar, results)
    best = max(rows, key=lambda r: r["speedup"])
    log("\n".join(tuning_table(rows)))
    mismatched = sum(r["mismatches"] for r in layer_rows + rows)
    tuning = {"prompts": f"{len(prompts)} held-out prompts, {sweep.max_new_tokens} new tokens, "
                         f"{sweep.threads or 'default'} runtime thread(s)",
              "exit_layer_rows": layer_rows, "rows": rows, "seconds": round(perf_counter() - start, 1),
              "mismatched_outputs": mismatched,
              "chosen": f"exit layer {exit_layer}, gamma {best['gamma']}, tau {best['tau']}: "
                        f"{best['speedup']:.2f}x, {best['mean_accepted']:.2f} tokens per deep pass"}
    update_meta(out, decode={"gamma": best["gamma"], "tau": best["tau"]}, tuning=tuning)
    write_card(out)
    log(f"chose {tuning['chosen']}; written to {out / ADAPTER_CONFIG}")
    if mismatched:
        log(f"warning: {mismatched} Kangaroo outputs differed from AR (expected 0 except on exact logit ties)")
    return tuning


