"""Adapter-only training on cached teacher features: seeded, resumable, with a progress bar and ETA.

The target model is frozen (shallow layers never run here: their outputs h_l are cached); only the
adapter's two RMSNorms and q/k/v/o projections (and its MLP, in the MLP variant) receive gradients; the LM
head is the target's own (its ``draft_vocab`` rows when the draft head is restricted).
One optimizer step accumulates ``sequences_per_step`` whole sequences (the graphs are batch-1 shaped).

Resuming: every ``checkpoint_every`` steps the adapter, optimizer and step counter are written to
``<out>/.train-state.pt``; a run with the same config and features picks up from there. The data order of
each epoch is a fixed function of (seed, epoch), so a resumed run ends exactly where an uninterrupted
one does.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from ..config import AdapterSpec, ModelSpec, check_exit_layer
from ..errors import ConfigError
from ..model.graphs import KangarooModules
from ..model.weights import AdapterCheckpoint, build_modules, load_adapter, load_hf_config, random_adapter
from .draft_vocab import restrict
from .objective import Metrics, draft_logits, soft_cross_entropy, token_rows
from .teacher import SequenceFeatures

STATE_FILE = ".train-state.pt"
INITS = ("copy", "random")


@dataclass(frozen=True)
class TrainConfig:
    """Adapter training settings (the teacher's settings are ``cache.FeatureSettings``)."""

    exit_layer: int = 2
    epochs: int = 4
    lr: float = 2e-2
    warmup_steps: int = 20
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)  # the paper's AdamW betas
    sequences_per_step: int = 8
    heldout_fraction: float = 0.05
    init: str = "copy"  # "copy": attention (and MLP) of target layer `exit_layer` + the final norm; "random"
    seed: int = 0
    checkpoint_every: int = 25
    draft_vocab: int = 0  # > 0: train and write a draft head over this many most frequent response tokens
    adapter_mlp: bool = False  # the MLP variant (AdapterSpec.mlp_size); the paper's adapter is attention only
    init_from: str = ""  # an adapter directory to go on training (its geometry and draft head); "" starts anew

    def __post_init__(self) -> None:
        if self.init not in INITS:
            raise ConfigError(f"init must be one of {', '.join(INITS)}, got {self.init!r}")
        if not 0.0 < self.heldout_fraction < 1.0:
            raise ConfigError(f"heldout_fraction must lie in (0, 1), got {self.heldout_fraction}")
        if self.epochs < 1 or self.sequences_per_step < 1 or self.lr <= 0:
            raise ConfigError("epochs, sequences_per_step and lr must be positive")
        if self.draft_vocab < 0:
            raise ConfigError(f"draft_vocab must be >= 0 (0: the full vocabulary), got {self.draft_vocab}")


@dataclass
class TrainResult:
    modules: KangarooModules
    steps: int
    seconds: float
    train_tokens: int
    heldout_tokens: int
    history: list[dict] = field(default_factory=list)  # per epoch: train and held-out metrics
    draft_vocab: dict | None = None  # size, source and coverage of a restricted draft head
    init_from: dict | None = None  # the adapter training went on from, and its held-out metrics

    @property
    def heldout(self) -> dict[str, float]:
        return self.history[-1]["heldout"]


def split(features: list[SequenceFeatures], fraction: float) -> tuple[list[SequenceFeatures], list[SequenceFeatures]]:
    """Held-out = the first ``fraction`` of examples by index (the index order is already a seeded shuffle)."""
    n_heldout = max(1, round(len(features) * fraction))
    if n_heldout >= len(features):
        raise ConfigError(f"{len(features)} sequences are too few to hold {n_heldout} out: use more data")
    return [f for f in features if f.index >= n_heldout], [f for f in features if f.index < n_heldout]


def init_adapter(modules: KangarooModules, how: str, seed: int) -> None:
    """``copy``: the adapter starts as target layer ``exit_layer``'s attention block (and MLP) + the final norm."""
    adapter = modules.adapter
    if how == "copy":
        source = modules.deep.layers[str(modules.exit_layer)]
        own = adapter.layers["0"]
        own.input_layernorm.load_state_dict(source.input_layernorm.state_dict())
        src = source.self_attn.state_dict()  # the adapter mirrors q/k/v bias and q/k norms, never o_proj's bias
        own.self_attn.load_state_dict({k: src[k] for k in own.self_attn.state_dict()}, strict=True)
        if own.mlp is not None:
            own.post_attention_layernorm.load_state_dict(source.post_attention_layernorm.state_dict())
            own.mlp.load_state_dict(source.mlp.state_dict())
        adapter.norm.load_state_dict(modules.deep.norm.state_dict())
        return
    gen = torch.Generator().manual_seed(seed)
    for name, p in adapter.named_parameters():
        if name.endswith("_proj.weight"):
            p.data = torch.randn(p.shape, generator=gen) * 0.02
        elif name.endswith("_proj.bias"):
            p.data.zero_()
        elif name.endswith("norm.weight"):
            p.data.fill_(1.0)


def continued_adapter(path: Path, config: TrainConfig) -> AdapterCheckpoint:
    """The adapter in ``path``, to be trained further: it keeps its geometry (MLP or not) and its draft head,
    and must have been trained for ``config.exit_layer``. The held-out split is this run's: on other data drawn
    from the same source, examples the parent trained on may fall in it and flatter the held-out metrics."""
    adapter = load_adapter(path)
    if adapter.exit_layer is not None and adapter.exit_layer != config.exit_layer:
        raise ConfigError(f"{path} was trained for exit layer {adapter.exit_layer}, not {config.exit_layer}: "
                          f"pass --exit-layer {adapter.exit_layer}")
    rows = adapter.tensors.get("draft_vocab")
    if config.draft_vocab and (rows is None or rows.numel() != config.draft_vocab):
        have = "the full vocabulary" if rows is None else f"{rows.numel()} tokens"
        raise ConfigError(f"{path} drafts from {have}, not {config.draft_vocab}: drop --draft-vocab (an adapter "
                          "goes on with its own draft head)")
    if config.adapter_mlp and not adapter.spec.mlp_size:
        raise ConfigError(f"{path} is an attention-only adapter: drop --adapter-mlp to go on training it")
    parent = adapter.meta.get("training", {}).get("history", [{}])[-1].get("heldout")
    adapter.meta = {k: v for k, v in adapter.meta.items() if k == "draft_vocab"}
    adapter.meta["init_from"] = {"path": str(path), "heldout": parent}
    return adapter


def trainable(modules: KangarooModules) -> list[torch.nn.Parameter]:
    """The adapter's own parameters (its norms and attention); the LM head stays frozen."""
    params = [p for n, p in modules.adapter.named_parameters() if not n.startswith("lm_head.")]
    for p in params:
        p.requires_grad_(True)
    return params


def _lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up, then cosine decay to 10%."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _sequence(adapter, f: SequenceFeatures, exit_layer: int, rows: torch.Tensor | None, device: str,
              ) -> tuple[torch.Tensor, Metrics]:
    """Loss and metrics of one sequence; ``rows``: ``token_rows`` of a restricted head (None: full head)."""
    logits = draft_logits(adapter, f.hidden[exit_layer].to(device).float(), f.prompt_len - 1)
    ids = f.topk_ids.to(device).long()
    return soft_cross_entropy(logits, ids if rows is None else rows[ids], f.topk_probs.to(device))


@torch.no_grad()
def evaluate(modules: KangarooModules, features: list[SequenceFeatures], device: str = "cpu") -> dict[str, float]:
    """Held-out loss, expected acceptance and top-1 agreement per response token."""
    total, rows = Metrics(), token_rows(modules.adapter, modules.model_spec.vocab_size)
    for f in features:
        total.add(_sequence(modules.adapter, f, modules.exit_layer, rows, device)[1])
    return total.mean()


def train(model_dir: Path, features: list[SequenceFeatures], config: TrainConfig, out: Path,
          device: str = "cpu", log: Callable[[str], None] = print, features_key: str = "") -> TrainResult:
    """Train an adapter on ``features`` (must hold ``config.exit_layer``); resumes from ``out``'s state file."""
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    if any(config.exit_layer not in f.hidden for f in features):
        raise ConfigError(f"the teacher features hold no hidden states for exit layer {config.exit_layer}")
    train_set, heldout = split(features, config.heldout_fraction)
    model_spec = ModelSpec.from_hf_config(load_hf_config(model_dir))
    check_exit_layer(model_spec, config.exit_layer)
    if config.init_from:
        adapter = continued_adapter(Path(config.init_from), config)
        log(f"going on from the adapter in {config.init_from}")
    else:
        adapter = random_adapter(AdapterSpec.like(model_spec, mlp=config.adapter_mlp), config.seed)
        if config.draft_vocab:  # chosen from the training split only, so the held-out metrics stay honest
            adapter, coverage = restrict(adapter, train_set, model_spec.vocab_size, config.draft_vocab)
            log(f"draft head: {config.draft_vocab} tokens ({coverage:.1%} of the training response tokens)")
    modules = build_modules(model_dir, adapter, config.exit_layer)
    if not config.init_from:
        init_adapter(modules, config.init, config.seed)
    del modules.deep.layers  # the verifier is not needed for training: free its memory
    modules.adapter.to(device)
    rows = token_rows(modules.adapter, model_spec.vocab_size)
    params = trainable(modules)
    optimizer = torch.optim.AdamW(params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(train_set) / config.sequences_per_step)
    total_steps = steps_per_epoch * config.epochs
    identity = {"config": dataclasses.asdict(config), "features": features_key}
    step, history = _resume(out / STATE_FILE, identity, modules, optimizer, log)
    log(f"training adapter at exit layer {config.exit_layer}: {len(train_set)} sequences "
        f"({sum(f.response_len for f in train_set)} response tokens), {len(heldout)} held out, "
        f"{total_steps} steps on {device}")
    bar = tqdm(total=total_steps, initial=step, desc="train", unit="step")
    while step < total_steps:
        epoch, offset = divmod(step, steps_per_epoch)
        order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(config.seed * 1000 + epoch))
        running = Metrics()
        for s in range(offset, steps_per_epoch):
            batch = [train_set[i] for i in order[s * config.sequences_per_step:(s + 1) * config.sequences_per_step]]
            step_metrics = _step(modules, batch, rows, optimizer, params, config,
                                 _lr_factor(step, config.warmup_steps, total_steps), device)
            running.add(step_metrics)
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{step_metrics.mean()['loss']:.3f}", top1=f"{step_metrics.mean()['top1']:.3f}")
            if step % config.checkpoint_every == 0 and step < total_steps:
                _save_state(out / STATE_FILE, identity, modules, optimizer, step, history)
        record = {"epoch": epoch + 1, "step": step, "train": running.mean(), "heldout": evaluate(modules, heldout, device)}
        history.append(record)
        h = record["heldout"]
        log(f"epoch {epoch + 1}/{config.epochs}: held-out loss {h['loss']:.4f}, expected acceptance "
            f"{h['acceptance']:.4f}, top-1 agreement {h['top1']:.4f}")
        if step < total_steps:
            _save_state(out / STATE_FILE, identity, modules, optimizer, step, history)
    bar.close()
    modules.adapter.cpu().requires_grad_(False)
    return TrainResult(modules, step, time.perf_counter() - start, sum(f.response_len for f in train_set),
                       sum(f.response_len for f in heldout), history, adapter.meta.get("draft_vocab"),
                       adapter.meta.get("init_from"))


def _step(modules, batch, rows, optimizer, params, config: TrainConfig, lr_factor: float, device: str) -> Metrics:
    """One optimizer step: token-weighted mean soft cross-entropy over the batch's response tokens."""
    for group in optimizer.param_groups:
        group["lr"] = config.lr * lr_factor
    optimizer.zero_grad(set_to_none=True)
    tokens = sum(f.response_len for f in batch)
    metrics = Metrics()
    for f in batch:
        loss, m = _sequence(modules.adapter, f, config.exit_layer, rows, device)
        (loss / tokens).backward()
        metrics.add(m)
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    return metrics


def _save_state(path: Path, identity: dict, modules, optimizer, step: int, history: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    adapter = {k: v for k, v in modules.adapter.state_dict().items() if not k.startswith(("lm_head.", "draft_vocab"))}
    tmp = path.with_suffix(".tmp")
    torch.save({"identity": identity, "adapter": adapter, "optimizer": optimizer.state_dict(), "step": step,
                "history": history}, tmp)
    tmp.replace(path)


def _resume(path: Path, identity: dict, modules, optimizer, log) -> tuple[int, list]:
    if not path.is_file():
        return 0, []
    state = torch.load(path, weights_only=False)
    if state["identity"] != identity:
        raise ConfigError(f"{path} belongs to a run with other settings or data: delete it, or use another --out")
    result = modules.adapter.load_state_dict(state["adapter"], strict=False)  # the frozen head is not saved
    if result.unexpected_keys or set(result.missing_keys) - {"draft_vocab"} != {"lm_head.weight"}:
        raise ConfigError(f"{path} does not hold this adapter's weights: delete it, or use another --out")
    optimizer.load_state_dict(state["optimizer"])
    log(f"resuming from {path} at step {state['step']}")
    return state["step"], state["history"]


def finish(out: Path) -> None:
    """Remove the resume state once the adapter is saved."""
    (out / STATE_FILE).unlink(missing_ok=True)
