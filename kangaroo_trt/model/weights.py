"""Checkpoints in and out, through explicit name tables that account for every key and shape.

Target weights come from a local Hugging Face directory (``*.safetensors`` or ``pytorch_model*.bin``,
sharded or not). Adapters come in two formats:

* official Kangaroo: ``config.json`` (a LlamaConfig with one layer) + ``pytorch_model.bin`` with keys
  ``norm.weight``, ``layers.0.input_layernorm.weight``, ``layers.0.self_attn.{q,k,v,o}_proj.weight``;
* this project's: ``adapter_config.json`` + ``adapter.safetensors`` with the same key names (the MLP variant
  adds Llama's ``layers.0.post_attention_layernorm.weight`` and ``layers.0.mlp.{gate,up,down}_proj.weight``).

Nothing is loaded with ``strict=False``: a missing key, a leftover key or a wrong shape is an error.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import AdapterSpec, ModelSpec, check_exit_layer
from ..errors import ConfigError, WeightsError
from .graphs import KangarooModules

ADAPTER_FORMAT = "kangaroo-trt-adapter"
ADAPTER_FORMAT_VERSION = 1
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter.safetensors"

# Keys some checkpoints carry that hold no weights (recomputed rotary tables).
_IGNORABLE = re.compile(r"(^|\.)rotary_emb\.inv_freq$")


def _layer_keys(spec: ModelSpec) -> list[str]:
    keys = ["input_layernorm.weight", "post_attention_layernorm.weight"]
    keys += [f"self_attn.{p}_proj.weight" for p in "qkvo"]
    keys += [f"self_attn.{p}_proj.bias" for p in "qkv" if spec.attention_bias]
    keys += ["self_attn.o_proj.bias"] if spec.output_bias else []
    keys += ["self_attn.q_norm.weight", "self_attn.k_norm.weight"] if spec.qk_norm else []
    keys += [f"mlp.{p}_proj.weight" for p in ("gate", "up", "down")]
    keys += [f"mlp.{p}_proj.bias" for p in ("gate", "up", "down") if spec.mlp_bias]
    return keys


def target_name_table(spec: ModelSpec, exit_layer: int) -> dict[str, list[str]]:
    """HF checkpoint key -> the ``KangarooModules`` keys it fills (the LM head fills two graphs)."""
    table: dict[str, list[str]] = {"model.embed_tokens.weight": ["shallow.embed_tokens.weight"]}
    for i in range(spec.num_layers):
        graph = "shallow" if i < exit_layer else "deep"
        for key in _layer_keys(spec):
            table[f"model.layers.{i}.{key}"] = [f"{graph}.layers.{i}.{key}"]
    table["model.norm.weight"] = ["deep.norm.weight"]
    head = "model.embed_tokens.weight" if spec.tie_word_embeddings else "lm_head.weight"
    table.setdefault(head, []).append("deep.lm_head.weight")
    return table


def adapter_name_table(spec: AdapterSpec) -> dict[str, list[str]]:
    table = {"norm.weight": ["adapter.norm.weight"], "layers.0.input_layernorm.weight": ["adapter.layers.0.input_layernorm.weight"]}
    for p in "qkvo":
        table[f"layers.0.self_attn.{p}_proj.weight"] = [f"adapter.layers.0.self_attn.{p}_proj.weight"]
    for p in "qkv" if spec.attention_bias else "":
        table[f"layers.0.self_attn.{p}_proj.bias"] = [f"adapter.layers.0.self_attn.{p}_proj.bias"]
    for p in "qk" if spec.qk_norm else "":
        table[f"layers.0.self_attn.{p}_norm.weight"] = [f"adapter.layers.0.self_attn.{p}_norm.weight"]
    if spec.mlp_size:  # this project's MLP variant: Llama's key names for the block's second half
        keys = ["post_attention_layernorm.weight"] + [f"mlp.{p}_proj.weight" for p in ("gate", "up", "down")]
        keys += [f"mlp.{p}_proj.bias" for p in ("gate", "up", "down")] if spec.mlp_bias else []
        table.update({f"layers.0.{k}": [f"adapter.layers.0.{k}"] for k in keys})
    if spec.draft_vocab_size:
        table["draft_vocab"] = ["adapter.draft_vocab"]
    return table


def _apply(table: dict[str, list[str]], tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
           what: str, allowed_extra: set[str] = frozenset()) -> dict[str, torch.Tensor]:
    missing = sorted(k for k in table if k not in tensors)
    leftover = sorted(k for k in tensors if k not in table and k not in allowed_extra and not _IGNORABLE.search(k))
    if missing or leftover:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys (e.g. {missing[:3]})")
        if leftover:
            parts.append(f"{len(leftover)} unexpected keys (e.g. {leftover[:3]})")
        raise WeightsError(f"{what}: {'; '.join(parts)}: is it a checkpoint of a supported model with this config?")
    out = {}
    for src, dsts in table.items():
        for dst in dsts:
            want = tuple(expected[dst].shape)
            if tuple(tensors[src].shape) != want:
                raise WeightsError(f"{what}: {src} has shape {tuple(tensors[src].shape)}, expected {want}")
            out[dst] = tensors[src]
    return out


def checkpoint_files(directory: Path, what: str = "model") -> list[Path]:
    """The weight files of a checkpoint directory: its ``*.safetensors``, else its ``pytorch_model*.bin``."""
    files = sorted(directory.glob("*.safetensors")) or sorted(directory.glob("pytorch_model*.bin"))
    if not files:
        raise WeightsError(f"{what}: no *.safetensors or pytorch_model*.bin in {directory}")
    return files


def weights_digest(model_dir: Path) -> str:
    """sha256 over a model directory's config.json and weight files (names and contents): what an engine
    directory records of its source model, so a backend that rebuilds from it can refuse other weights."""
    import hashlib

    from ..contract.manifest import sha256

    h = hashlib.sha256()
    for f in [model_dir / "config.json", *checkpoint_files(model_dir)]:
        h.update(f"{f.name}\0{sha256(f)}\n".encode())
    return h.hexdigest()


def read_checkpoint(directory: Path, what: str) -> dict[str, torch.Tensor]:
    """All tensors of a (possibly sharded) safetensors or PyTorch checkpoint directory."""
    tensors: dict[str, torch.Tensor] = {}
    for f in checkpoint_files(directory, what):
        tensors.update(load_tensors(f, what))
    return tensors


def load_tensors(f: Path, what: str) -> dict[str, torch.Tensor]:
    """One safetensors or PyTorch weight file; any failure (missing, corrupt, a pickle holding more than tensors,
    which ``weights_only`` blocks) is a one-line ``WeightsError``."""
    from safetensors.torch import load_file

    if not f.is_file():
        raise WeightsError(f"{what}: {f} is missing")
    try:
        tensors = load_file(f) if f.suffix == ".safetensors" else torch.load(f, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt file, or pickled objects other than tensors: say which, never how to unblock
        reason = "it holds pickled objects other than tensors (refused)" if "weights_only" in str(err) else \
            f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else 'unreadable'}"
        raise WeightsError(f"{what}: cannot read {f.name} ({reason}): re-download or re-save it from a source you trust") from None
    if not isinstance(tensors, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in tensors.items()):
        raise WeightsError(f"{what}: {f.name} is not a mapping of names to tensors: re-save it as a state dict")
    return tensors


def load_hf_config(model_dir: Path):
    from transformers import AutoConfig

    if not (model_dir / "config.json").is_file():
        raise ConfigError(f"{model_dir} has no config.json: pass a Hugging Face model directory or a bundled model name")
    try:
        return AutoConfig.from_pretrained(model_dir, local_files_only=True)
    except (ValueError, KeyError, OSError) as err:
        raise ConfigError(f"cannot read {model_dir / 'config.json'}: {err}") from err


@dataclass
class AdapterCheckpoint:
    """An adapter's geometry, weights (official key names) and the settings it was trained with."""

    spec: AdapterSpec
    tensors: dict[str, torch.Tensor]
    exit_layer: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def load_adapter(path: Path) -> AdapterCheckpoint:
    """Read an adapter directory in this project's format or the official Kangaroo format; every failure is a
    one-line ``KangarooError``."""
    path = Path(path)
    if (path / ADAPTER_CONFIG).is_file():
        try:
            cfg = json.loads((path / ADAPTER_CONFIG).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(f"{path / ADAPTER_CONFIG} is not valid JSON ({err}): retrain or re-save the adapter") from None
        if not isinstance(cfg, dict) or cfg.get("format") != ADAPTER_FORMAT or cfg.get("version") != ADAPTER_FORMAT_VERSION:
            got = cfg if not isinstance(cfg, dict) else f"format {cfg.get('format')!r} v{cfg.get('version')}"
            raise ConfigError(
                f"{path / ADAPTER_CONFIG} is {got}, expected {ADAPTER_FORMAT!r} v{ADAPTER_FORMAT_VERSION}: retrain or convert the adapter"
            )
        if not isinstance(cfg.get("adapter"), dict):
            raise ConfigError(f"{path / ADAPTER_CONFIG} has no 'adapter' object (the adapter's geometry): retrain or re-save it")
        try:
            spec = AdapterSpec.from_dict(cfg["adapter"])
        except TypeError as err:
            raise ConfigError(f"{path / ADAPTER_CONFIG}: 'adapter' is incomplete ({err}): retrain or re-save it") from None
        if not isinstance(cfg.get("meta", {}), dict) or not isinstance(cfg.get("exit_layer"), (int, type(None))):
            raise ConfigError(f"{path / ADAPTER_CONFIG}: 'meta' must be an object and 'exit_layer' an integer")
        tensors = _checked(load_tensors(path / ADAPTER_WEIGHTS, f"adapter {path}"), path)
        return AdapterCheckpoint(spec, tensors, cfg.get("exit_layer"), cfg.get("meta", {}))
    if (path / "config.json").is_file() and (path / "pytorch_model.bin").is_file():
        hf = load_hf_config(path)
        if getattr(hf, "num_hidden_layers", None) != 1:
            raise ConfigError(f"{path} config has {getattr(hf, 'num_hidden_layers', None)} layers: an official Kangaroo adapter has 1")
        try:
            head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
            spec = AdapterSpec(hf.hidden_size, hf.num_attention_heads, hf.num_key_value_heads or hf.num_attention_heads,
                               head_dim, float(hf.rms_norm_eps), bool(getattr(hf, "attention_bias", False)))
        except (AttributeError, TypeError, ZeroDivisionError) as err:
            raise ConfigError(f"{path / 'config.json'} is not a Llama attention config ({err})") from None
        tensors = _checked(load_tensors(path / "pytorch_model.bin", f"adapter {path}"), path)
        return AdapterCheckpoint(spec, tensors, None, {"source": "official"})
    raise ConfigError(
        f"{path} is not an adapter directory: expected {ADAPTER_CONFIG} + {ADAPTER_WEIGHTS} "
        "(kangaroo-trt) or config.json + pytorch_model.bin (official Kangaroo)"
    )


def _checked(tensors: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """Weights are floating point (only ``draft_vocab``, the draft head's token ids, is integer)."""
    for name, t in tensors.items():
        if not _IGNORABLE.search(name) and name.endswith("draft_vocab") != (not t.is_floating_point()):
            kind = "integer token ids" if name.endswith("draft_vocab") else "floating-point weights"
            raise WeightsError(f"adapter {path}: {name} has dtype {t.dtype}, expected {kind}: re-save the adapter")
    return tensors


def save_adapter(modules: KangarooModules, path: Path, meta: dict[str, Any] | None = None) -> None:
    """Write the adapter of ``modules`` in this project's format (official key names, safetensors)."""
    own = modules.state_dict()
    tensors = {src: own[dst].detach().contiguous().clone() for src, (dst,) in adapter_name_table(modules.adapter_spec).items()}
    save_checkpoint(AdapterCheckpoint(modules.adapter_spec, tensors, modules.exit_layer, meta or {}), path)


def save_checkpoint(adapter: AdapterCheckpoint, path: Path) -> None:
    """Write ``adapter`` as ``adapter_config.json`` + ``adapter.safetensors`` (what ``load_adapter`` reads)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in adapter.tensors.items()}, path / ADAPTER_WEIGHTS)
    cfg = {"format": ADAPTER_FORMAT, "version": ADAPTER_FORMAT_VERSION, "adapter": adapter.spec.to_dict(),
           "exit_layer": adapter.exit_layer, "meta": adapter.meta}
    (path / ADAPTER_CONFIG).write_text(json.dumps(cfg, indent=2) + "\n")


def restrict_draft_vocab(adapter: AdapterCheckpoint, token_counts: torch.Tensor, size: int) -> AdapterCheckpoint:
    """The same adapter with a draft head over the ``size`` most frequent tokens of ``token_counts`` [vocab]."""
    from dataclasses import replace

    if not 0 < size <= token_counts.numel():
        raise ConfigError(f"draft vocabulary size must lie in [1, {token_counts.numel()}], got {size}")
    vocab = torch.sort(torch.topk(token_counts.double(), size).indices).values.to(torch.int64)
    tensors = {**{k: v for k, v in adapter.tensors.items() if k != "draft_vocab"}, "draft_vocab": vocab}
    return AdapterCheckpoint(replace(adapter.spec, draft_vocab_size=size), tensors, adapter.exit_layer, dict(adapter.meta))


def random_adapter(spec: AdapterSpec, seed: int = 0, std: float = 0.02) -> AdapterCheckpoint:
    """A randomly initialised adapter: correct graphs, useless drafts (it will not speed anything up)."""
    gen = torch.Generator().manual_seed(seed)
    shapes = {
        "norm.weight": (spec.hidden_size,),
        "layers.0.input_layernorm.weight": (spec.hidden_size,),
        "layers.0.self_attn.q_proj.weight": (spec.num_heads * spec.head_dim, spec.hidden_size),
        "layers.0.self_attn.k_proj.weight": (spec.num_kv_heads * spec.head_dim, spec.hidden_size),
        "layers.0.self_attn.v_proj.weight": (spec.num_kv_heads * spec.head_dim, spec.hidden_size),
        "layers.0.self_attn.o_proj.weight": (spec.hidden_size, spec.num_heads * spec.head_dim),
    }
    tensors = {k: torch.ones(s) if k.endswith("layernorm.weight") or k == "norm.weight" else torch.randn(s, generator=gen) * std
               for k, s in shapes.items()}
    heads = {"q": spec.num_heads, "k": spec.num_kv_heads, "v": spec.num_kv_heads}
    for p in "qkv" if spec.attention_bias else "":
        tensors[f"layers.0.self_attn.{p}_proj.bias"] = torch.zeros(heads[p] * spec.head_dim)
    for p in "qk" if spec.qk_norm else "":
        tensors[f"layers.0.self_attn.{p}_norm.weight"] = torch.ones(spec.head_dim)
    if spec.mlp_size:
        tensors["layers.0.post_attention_layernorm.weight"] = torch.ones(spec.hidden_size)
        for p, shape in (("gate", (spec.mlp_size, spec.hidden_size)), ("up", (spec.mlp_size, spec.hidden_size)),
                         ("down", (spec.hidden_size, spec.mlp_size))):
            tensors[f"layers.0.mlp.{p}_proj.weight"] = torch.randn(shape, generator=gen) * std
            if spec.mlp_bias:
                tensors[f"layers.0.mlp.{p}_proj.bias"] = torch.zeros(shape[0])
    return AdapterCheckpoint(spec, tensors, None, {"source": "random", "seed": seed})


def build_modules(model_dir: Path, adapter: AdapterCheckpoint | None, exit_layer: int,
                  dtype: torch.dtype = torch.float32, verify_rows: int | None = None) -> KangarooModules:
    """Target weights from ``model_dir`` + ``adapter`` (random if None) -> the three graphs, every key checked.

    ``verify_rows``: the deep head's row cap (the export's ``max_verify``; None: every row, as training uses).
    """
    config = load_hf_config(model_dir)
    spec = ModelSpec.from_hf_config(config)
    if adapter is None:
        adapter = random_adapter(AdapterSpec.like(spec))
    adapter.spec.check_fits(spec)
    check_exit_layer(spec, exit_layer)
    with torch.device("meta"):
        modules = KangarooModules(spec, adapter.spec, exit_layer, verify_rows)
    expected = modules.state_dict()
    tensors = read_checkpoint(model_dir, f"target model {model_dir}")
    allowed = {"lm_head.weight"} if spec.tie_word_embeddings else set()
    state = _apply(target_name_table(spec, exit_layer), tensors, expected, f"target model {model_dir}", allowed)
    state.update(_apply(adapter_name_table(adapter.spec), adapter.tensors, expected, "adapter"))
    head = state["deep.lm_head.weight"]
    if adapter.spec.draft_vocab_size:
        vocab = state["adapter.draft_vocab"]
        if not (bool((vocab[1:] > vocab[:-1]).all()) and 0 <= int(vocab[0]) and int(vocab[-1]) < spec.vocab_size):
            raise WeightsError(f"adapter draft_vocab must be strictly increasing token ids below {spec.vocab_size}")
        head = head[vocab]
    state["adapter.lm_head.weight"] = head  # the draft head is the target's own (rows of it when restricted)
    modules.load_state_dict({k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()},
                            strict=True, assign=True)
    # Non-persistent buffers (rotary tables) were created on the meta device: rebuild them for real.
    for graph in modules.graphs().values():
        graph.rotary.inv_freq = torch.tensor(spec.rope_inv_freq, dtype=torch.float32)
    return modules.eval().requires_grad_(False)
