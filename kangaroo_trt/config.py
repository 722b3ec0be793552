"""Typed configuration, normalised once and carried everywhere.

* ``ModelSpec``: the target model's geometry, read once from a Hugging Face config.
* ``AdapterSpec``: the Kangaroo adapter's attention geometry (one attention block, two RMSNorms).
* ``DecodeConfig``: one generation's decoding settings: the mode (Kangaroo or plain AR), gamma (max drafts per round),
  tau (early-exit confidence threshold), the token budget, sampling and drafting knobs.
* ``ExportConfig``: exit layer, KV-cache capacity and precisions of an engine directory.

All are frozen dataclasses that round-trip through plain dicts (the manifest stores them).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn")
# int8: Q/DQ graphs calibrated from the fp32 ones (kangaroo_trt.calib). bf16: no ONNX graphs (ONNX Runtime CPU has no
# bf16 MatMul kernel), the PyTorch backends run it from the modules (runner/torch_backend.py).
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
POLICIES = ("cost", "tau")  # how Kangaroo picks a round's drafts (DecodeConfig.policy)
MODES = ("kangaroo", "ar")  # decoding modes: Kangaroo, and plain autoregressive decoding (the baseline)
TENSORRT_MODES = ("auto", "off", "require")
MIN_MAX_VERIFY = 8  # default verify capacity of an engine (see verify_capacity)
# Below this, logits / temperature overflow float64 (NaN probabilities); any temperature this small is already
# the argmax for logits that differ by more than ~1e-2, so 0 (greedy) is what such a setting means.
MIN_TEMPERATURE = 1e-4
MIN_SEQ_LEN = 16  # the export's parity check runs cases up to 16 positions; a shorter cache holds almost nothing


def _fits(value, hint) -> bool:
    """Whether a value read from JSON has the type a dataclass field declares (int, float, bool, str, tuples, None)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is tuple:
        return isinstance(value, (list, tuple)) and all(_fits(v, args[0]) for v in value)
    return True


def _from_dict(cls, data: dict[str, Any]):
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{cls.__name__} got unknown fields {sorted(unknown)}: the file was written by another version")
    hints = typing.get_type_hints(cls)
    for k, v in data.items():
        if not _fits(v, hints[k]):
            raise ConfigError(f"{cls.__name__} field {k!r} is {v!r}, expected {getattr(hints[k], '__name__', hints[k])}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return cls(**kwargs)


def _positive(obj, *names: str) -> None:
    for name in names:
        if getattr(obj, name) < 1:
            raise ConfigError(f"{type(obj).__name__} field {name!r} must be >= 1, got {getattr(obj, name)!r}")


@dataclass(frozen=True)
class ModelSpec:
    """Geometry of a Llama-family decoder, independent of where its weights live."""

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_inv_freq: tuple[float, ...]
    rope_scaling: float
    attention_bias: bool
    output_bias: bool
    mlp_bias: bool
    tie_word_embeddings: bool
    max_position_embeddings: int
    eos_token_ids: tuple[int, ...]
    sliding_window: int | None = None
    qk_norm: bool = False  # Qwen3: RMSNorm over each head's query and key before the rotary embedding

    def __post_init__(self) -> None:
        _positive(self, "vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
                  "head_dim")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
        if len(self.rope_inv_freq) * 2 != self.head_dim:
            raise ConfigError(f"rotary table has {len(self.rope_inv_freq)} frequencies, head_dim {self.head_dim} needs half")

    @property
    def kv_groups(self) -> int:
        return self.num_heads // self.num_kv_heads

    @classmethod
    def from_hf_config(cls, config) -> "ModelSpec":
        """Normalise a transformers ``PretrainedConfig``; refuse anything this exporter cannot reproduce exactly."""
        arch = getattr(config, "model_type", None)
        if arch not in SUPPORTED_ARCHITECTURES:
            raise ConfigError(
                f"model type {arch!r} is not supported (supported: {', '.join(SUPPORTED_ARCHITECTURES)}): "
                "use a Llama-family decoder"
            )
        if getattr(config, "hidden_act", "silu") != "silu":
            raise ConfigError(f"hidden_act {config.hidden_act!r} is not supported: only SiLU-gated MLPs are")
        rope = dict(getattr(config, "rope_parameters", None) or {})
        rope_type = rope.get("rope_type", "default")
        if rope_type not in SUPPORTED_ROPE_TYPES:
            raise ConfigError(
                f"rope type {rope_type!r} is not supported (supported: {', '.join(SUPPORTED_ROPE_TYPES)})"
            )
        inv_freq, scaling = _rope_table(config)
        sliding = getattr(config, "sliding_window", None)
        if arch in ("qwen2", "qwen3") and not getattr(config, "use_sliding_window", False):
            sliding = None
        # Qwen2 hard-codes bias on q/k/v (not o); Llama, Mistral and Qwen3 put ``attention_bias`` on all four.
        qkv_bias = True if arch == "qwen2" else bool(getattr(config, "attention_bias", False))
        out_bias = False if arch == "qwen2" else qkv_bias
        eos = config.eos_token_id
        eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (int(eos),))
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return cls(
            architecture=arch,
            vocab_size=config.vocab_size,
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            num_layers=config.num_hidden_layers,
            num_heads=config.num_attention_heads,
            num_kv_heads=getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
            head_dim=head_dim,
            rms_norm_eps=float(config.rms_norm_eps),
            rope_inv_freq=tuple(float(x) for x in inv_freq),
            rope_scaling=float(scaling),
            attention_bias=qkv_bias,
            output_bias=out_bias,
            mlp_bias=bool(getattr(config, "mlp_bias", False)),
            tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
            max_position_embeddings=int(config.max_position_embeddings),
            eos_token_ids=eos_ids,
            sliding_window=sliding,
            qk_norm=arch == "qwen3",
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelSpec":
        return _from_dict(cls, data)


def _rope_table(config) -> tuple[list[float], float]:
    """Inverse frequencies and attention scaling exactly as transformers computes them for this config."""
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    rotary = LlamaRotaryEmbedding(config)
    return rotary.inv_freq.tolist(), float(rotary.attention_scaling)


@dataclass(frozen=True)
class AdapterSpec:
    """The Kangaroo adapter: ``h = x + Attn(RMSNorm_1(x))``, then ``RMSNorm_2(h)``, then the LM head."""

    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    attention_bias: bool = False  # on q/k/v
    qk_norm: bool = False  # per-head RMSNorm of queries and keys (as Qwen3's attention)
    # 0: the draft head is the target's full LM head. K > 0: it keeps only K rows (the tokens in the adapter's
    # `draft_vocab`), which makes a draft step cheaper; the deep graph still verifies over the full vocabulary.
    draft_vocab_size: int = 0
    # 0: the paper's adapter (attention only). M > 0: this project's variant adds the block's MLP (SwiGLU of inner
    # size M, with its own RMSNorm) after the attention; it runs only on the rows whose draft is read.
    mlp_size: int = 0
    mlp_bias: bool = False

    def __post_init__(self) -> None:
        _positive(self, "hidden_size", "num_heads", "num_kv_heads", "head_dim")
        if self.mlp_size < 0:
            raise ConfigError(f"adapter mlp_size must be >= 0 (0: no MLP), got {self.mlp_size}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"adapter num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")

    @property
    def kv_groups(self) -> int:
        return self.num_heads // self.num_kv_heads

    @classmethod
    def like(cls, model: ModelSpec, mlp: bool = False) -> "AdapterSpec":
        """The paper's choice: the adapter's attention has the target model's geometry (and its q/k/v bias and
        q/k norms, so it can start as a copy of a target layer's attention). ``mlp``: add an MLP of the target's
        geometry too (a whole decoder block, so it can start as a copy of one)."""
        return cls(model.hidden_size, model.num_heads, model.num_kv_heads, model.head_dim, model.rms_norm_eps,
                   model.attention_bias, model.qk_norm, mlp_size=model.intermediate_size if mlp else 0,
                   mlp_bias=model.mlp_bias if mlp else False)

    def check_fits(self, model: ModelSpec) -> None:
        if self.hidden_size != model.hidden_size:
            raise ConfigError(
                f"adapter hidden size {self.hidden_size} != model hidden size {model.hidden_size}: "
                "the adapter was trained for another model"
            )
        if self.head_dim != model.head_dim:
            raise ConfigError(f"adapter head_dim {self.head_dim} != model head_dim {model.head_dim}: it shares the model's rotary table")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AdapterSpec":
        return _from_dict(cls, data)


@dataclass(frozen=True)
class DecodeConfig:
    """One generation's decoding settings. mode: "kangaroo", or "ar" (plain decoding on the same graphs, the
    baseline); gamma: max drafts per round; tau: stop drafting below this confidence.

    temperature 0 (the default) is greedy decoding, token for token equal to plain greedy decoding; above 0,
    tokens are sampled from the target's logits / temperature, restricted to the top_k (0: all) tokens and
    the top_p nucleus, with lossless speculative sampling (``runner/verify.py``); ``seed`` makes it repeatable.
    """

    gamma: int = 6
    tau: float = 0.6
    max_new_tokens: int = 128
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    # Prompt lookup drafting (runner/lookup.py): when the context's last >= lookup_ngram tokens occurred before,
    # the tokens that followed are the round's drafts instead of the adapter's; 0 turns it off.
    lookup_ngram: int = 2
    adaptive_gamma: bool = True  # adapter drafts per round: one more after a fully accepted round, one fewer otherwise
    # A round whose first adapter draft has a confidence below draft_floor verifies no draft (a plain step): the
    # paper verifies the first draft whatever its confidence (0.0); a draft that is likely rejected costs a
    # shallow pass and a wider deep pass for nothing.
    draft_floor: float = 0.0
    # How a round picks its drafts. "cost": as many as the expected committed tokens pay for, from measured graph
    # costs and the adapter's calibrated confidence (runner/policy.py); gamma still caps them, tau, adaptive_gamma
    # and draft_floor are not used. "tau": the paper's rule (draft until a confidence falls below tau), with
    # adaptive_gamma and draft_floor.
    policy: str = "cost"
    mode: str = MODES[0]  # one of MODES

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not isinstance(self.gamma, int) or self.gamma < 1:
            raise ConfigError(f"gamma must be an integer >= 1, got {self.gamma!r}: it is the max number of drafts per round")
        if isinstance(self.tau, bool) or not isinstance(self.tau, (int, float)) or not 0.0 <= self.tau <= 1.0:
            raise ConfigError(f"tau must lie in [0, 1], got {self.tau!r}: it is a softmax-probability threshold")
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens!r}")
        if not (self.temperature == 0.0 or MIN_TEMPERATURE <= self.temperature < math.inf):
            raise ConfigError(f"temperature must be 0 (greedy) or a finite number >= {MIN_TEMPERATURE}, got "
                              f"{self.temperature!r}: smaller ones overflow (use 0 for the most likely token)")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise ConfigError(f"top_k must be an integer >= 0, got {self.top_k!r}: 0 keeps every token")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p must lie in (0, 1], got {self.top_p!r}: 1 keeps every token")
        if isinstance(self.lookup_ngram, bool) or not isinstance(self.lookup_ngram, int) or self.lookup_ngram < 0:
            raise ConfigError(f"lookup_ngram must be an integer >= 0, got {self.lookup_ngram!r}: 0 turns prompt lookup off")
        if isinstance(self.draft_floor, bool) or not isinstance(self.draft_floor, (int, float)) or not 0.0 <= self.draft_floor <= 1.0:
            raise ConfigError(f"draft_floor must lie in [0, 1], got {self.draft_floor!r}: it is a softmax-probability threshold")
        if self.policy not in POLICIES:
            raise ConfigError(f"policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        if self.policy == "cost" and (self.draft_floor or not self.adaptive_gamma):
            raise ConfigError("draft_floor and fixed gamma belong to the tau policy: add --policy tau (policy='tau'), "
                              "or leave them out for the cost policy")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0):
            raise ConfigError(f"seed must be an integer >= 0, got {self.seed!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class ExportConfig:
    """What an engine directory holds: graphs split at ``exit_layer``, caches of ``max_seq_len`` positions."""

    exit_layer: int = 2
    max_seq_len: int = 1024
    precisions: tuple[str, ...] = ("fp32",)
    prefill_chunk: int = 128
    max_verify: int | None = None  # largest verify step the engines are profiled for [verify_capacity(decode.gamma)]
    opset: int = 17
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    tensorrt: str = "auto"  # one of TENSORRT_MODES: plans are built only where TensorRT imports

    def __post_init__(self) -> None:
        if self.max_verify is None:
            object.__setattr__(self, "max_verify", verify_capacity(self.decode.gamma))
        for p in self.precisions:
            if p not in PRECISIONS:
                raise ConfigError(f"precision {p!r} is not supported (supported: {', '.join(PRECISIONS)})")
        if not self.precisions:
            raise ConfigError("at least one precision is needed, e.g. --precision fp32")
        if self.max_seq_len < MIN_SEQ_LEN:
            raise ConfigError(f"max_seq_len must be >= {MIN_SEQ_LEN}, got {self.max_seq_len}: pass a larger --max-seq-len")
        if self.prefill_chunk < 1:
            raise ConfigError(f"prefill_chunk must be >= 1, got {self.prefill_chunk}")
        if self.tensorrt not in TENSORRT_MODES:
            raise ConfigError(f"tensorrt must be one of {', '.join(TENSORRT_MODES)}, got {self.tensorrt!r}")
        if self.decode.gamma + 1 > self.max_verify:
            raise ConfigError(f"default gamma {self.decode.gamma} needs max_verify >= {self.decode.gamma + 1}")

    def check_fits(self, model: ModelSpec) -> None:
        check_exit_layer(model, self.exit_layer)
        if self.max_seq_len > model.max_position_embeddings:
            raise ConfigError(
                f"max_seq_len {self.max_seq_len} exceeds the model's max_position_embeddings "
                f"{model.max_position_embeddings}: pass a smaller --max-seq-len"
            )
        if model.sliding_window is not None and self.max_seq_len > model.sliding_window:
            raise ConfigError(
                f"max_seq_len {self.max_seq_len} exceeds the sliding window {model.sliding_window}, which the "
                f"exported full-attention graphs do not reproduce: pass --max-seq-len {model.sliding_window} or less"
            )


def verify_capacity(gamma: int) -> int:
    """The verify step (tokens per deep pass) engines are profiled for by default: 8, or gamma + 1 if larger, so
    gamma can be raised at run time up to 7 without a rebuild."""
    return max(MIN_MAX_VERIFY, gamma + 1)


def check_exit_layer(model: ModelSpec, exit_layer: int) -> None:
    """The draft needs at least one shallow layer and the verifier at least one deep layer."""
    if not 1 <= exit_layer < model.num_layers:
        raise ConfigError(
            f"exit layer {exit_layer} must lie in [1, {model.num_layers - 1}] for a {model.num_layers}-layer model"
        )
