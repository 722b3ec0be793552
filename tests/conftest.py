"""Shared fixtures: tiny random Llama-family models built from configs, and the real default model.

Tiny models get a small byte-level BPE tokenizer trained here on a few sentences, so nothing is
downloaded. The real SmolLM2-135M engine is built once per session (random adapter; ``slow`` tests).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# CLIs invoked in this process (click's CliRunner) must not switch it to ONNX Runtime's process-wide thread pool:
# afterwards the runtime would refuse onnxruntime.quantization's sessions (the int8 builds). The shared pool is
# tested in subprocesses (test_backends.py).
os.environ["KANGAROO_TRT_THREAD_POOL"] = "per-session"

# A minimal chat template for tiny models that need one (chat prompts, self-distillation).
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")

TINY_TEXT = [
    "the quick brown fox jumps over the lazy dog",
    "kangaroo decoding drafts with shallow layers and verifies with deep layers",
    "hello world, this is a tiny tokenizer for tests 0123456789",
    "def add(a, b):\n    return a + b\n",
]

# name -> (transformers config class name, overrides). MHA / GQA, tied / untied head, Qwen2-style bias.
TINY_CONFIGS = {
    "llama-mha-untied": ("LlamaConfig", dict(num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False)),
    "llama-gqa-tied": ("LlamaConfig", dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)),
    "qwen2-bias-gqa": ("Qwen2Config", dict(num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=False)),
    "mistral-gqa": ("MistralConfig", dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                                          sliding_window=None)),
    # q/k norms, and heads * head_dim (128) != hidden_size (64)
    "qwen3-qknorm": ("Qwen3Config", dict(num_attention_heads=4, num_key_value_heads=2, head_dim=32, tie_word_embeddings=True)),
}


def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<pad>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TINY_TEXT, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")


def make_tiny_model(directory: Path, name: str, num_layers: int = 4, seed: int = 0, chat: bool = False) -> Path:
    """Save a tiny random HF model + tokenizer (with ``CHAT_TEMPLATE`` if ``chat``). Larger-than-default init gives
    peaked, non-degenerate logits."""
    import transformers

    cls_name, overrides = TINY_CONFIGS[name]
    tokenizer = tiny_tokenizer()
    if chat:
        tokenizer.chat_template = CHAT_TEMPLATE
    config = getattr(transformers, cls_name)(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=num_layers,
        max_position_embeddings=512, initializer_range=0.15, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=None, **overrides,
    )
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """Factory: tiny_model(name, chat=False) -> directory of a saved tiny random model (cached per session);
    ``chat``: its tokenizer has a chat template."""
    made: dict[tuple[str, bool], Path] = {}

    def get(name: str, chat: bool = False) -> Path:
        if (name, chat) not in made:
            made[name, chat] = make_tiny_model(tmp_path_factory.mktemp(name), name, chat=chat)
        return made[name, chat]

    return get


@pytest.fixture(scope="session")
def tiny_engine(tiny_model, tmp_path_factory):
    """Factory: tiny_engine(model, chat=False, **ExportConfig fields) -> (engine directory, build log lines), built
    once per session for each distinct set of arguments, with a random adapter. Tests must not change what it returns."""
    from kangaroo_trt.config import ExportConfig
    from kangaroo_trt.build import build_engine_dir

    built: dict[tuple, tuple[Path, list[str]]] = {}

    def get(model: str, chat: bool = False, **export) -> tuple[Path, list[str]]:
        key = (model, chat, tuple(sorted(export.items())))
        if key not in built:
            out, logs = tmp_path_factory.mktemp(f"engine-{model}") / "engine", []
            build_engine_dir(str(tiny_model(model, chat)), out, ExportConfig(**export), allow_random_adapter=True, log=logs.append)
            built[key] = out, logs
        return built[key]

    return get


@pytest.fixture(scope="session")
def oracle_engine(tmp_path_factory):
    """A model whose deep layers add nothing and whose adapter reproduces the final norm: every draft is right.

    The deep layers' o_proj and down_proj are zero (their residual branches vanish) and the adapter's o_proj is
    zero with RMSNorm_2 = the final norm, so draft logits == target logits and all gamma drafts are accepted.
    """
    import torch
    from safetensors.torch import load_file, save_file

    from kangaroo_trt.config import AdapterSpec, ExportConfig, ModelSpec
    from kangaroo_trt.build import build_engine_dir
    from kangaroo_trt.model.weights import AdapterCheckpoint, load_hf_config, random_adapter
    from kangaroo_trt.runner.api import KangarooEngine

    directory = make_tiny_model(tmp_path_factory.mktemp("oracle"), "llama-gqa-tied", seed=3)
    weights = load_file(directory / "model.safetensors")
    for key in weights:
        layer = int(key.split(".")[2]) if key.startswith("model.layers.") else -1
        if layer >= 2 and key.endswith(("o_proj.weight", "down_proj.weight")):
            weights[key] = torch.zeros_like(weights[key])
    save_file(weights, directory / "model.safetensors", metadata={"format": "pt"})
    spec = AdapterSpec.like(ModelSpec.from_hf_config(load_hf_config(directory)))
    adapter = random_adapter(spec, seed=1)
    adapter.tensors["layers.0.self_attn.o_proj.weight"].zero_()
    adapter.tensors["norm.weight"] = weights["model.norm.weight"].clone()
    out = tmp_path_factory.mktemp("oracle-engine") / "e"
    build_engine_dir(str(directory), out, ExportConfig(max_seq_len=128, prefill_chunk=8),
                     adapter=AdapterCheckpoint(spec, adapter.tensors, 2, {"source": "oracle"}), log=lambda _: None)
    return KangarooEngine.open(out)


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    from kangaroo_trt.bundled import resolve_model

    return resolve_model("smollm2-135m")


@pytest.fixture(scope="session")
def smollm2_engine(tmp_path_factory, smollm2_dir) -> Path:
    """The real default model exported once with a random adapter (exactness does not depend on the adapter)."""
    from kangaroo_trt.config import ExportConfig
    from kangaroo_trt.build import build_engine_dir

    out = tmp_path_factory.mktemp("engines") / "smollm2"
    build_engine_dir("smollm2-135m", out, ExportConfig(max_seq_len=384), allow_random_adapter=True, log=lambda _: None)
    return out
