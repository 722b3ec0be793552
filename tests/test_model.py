"""The export-shaped PyTorch modules reproduce transformers' own forward pass, cache by cache."""

import pytest
import torch

from conftest import TINY_CONFIGS
from kangaroo_trt.errors import ConfigError, WeightsError
from kangaroo_trt.model.weights import build_modules, load_adapter, random_adapter, save_adapter


def _empty(spec, s_max, fill=0.0):
    return torch.full((1, spec.num_kv_heads, s_max, spec.head_dim), fill)


@pytest.mark.parametrize("name", list(TINY_CONFIGS))
def test_chunked_cached_forward_matches_transformers(tiny_model, name):
    from transformers import AutoModelForCausalLM

    directory = tiny_model(name)
    hf = AutoModelForCausalLM.from_pretrained(directory).eval()
    modules = build_modules(directory, None, exit_layer=2)
    spec, s_max = modules.model_spec, 32
    ids = torch.randint(0, spec.vocab_size, (1, 12), generator=torch.Generator().manual_seed(1))
    pos = torch.arange(12)[None]
    # Stale garbage in every cache slot: only slots < past_len may be read.
    shallow_past = [_empty(spec, s_max, 7.0) for _ in range(4)]
    deep_past = [_empty(spec, s_max, -3.0) for _ in range(4)]
    logits = []
    for lo, hi in ((0, 5), (5, 6), (6, 12)):  # prefill chunk, one token, a verify-sized chunk
        out = modules.shallow(ids[:, lo:hi], pos[:, lo:hi], *shallow_past)
        for buf, new in zip(shallow_past, out[1:]):
            buf[:, :, lo:hi] = new
        deep = modules.deep(out[0], pos[:, lo:hi], *deep_past)
        for buf, new in zip(deep_past, deep[2:]):
            buf[:, :, lo:hi] = new
        logits.append(deep[0])
    with torch.no_grad():
        ref = hf(ids).logits
    err = (torch.cat(logits, dim=1) - ref).abs().max().item()
    assert err < 1e-4, f"{name}: max |ours - transformers| logits = {err:.2e}"


def test_adapter_roundtrip_and_key_checks(tiny_model, tmp_path):
    directory = tiny_model("llama-gqa-tied")
    modules = build_modules(directory, random_adapter(build_modules(directory, None, 2).adapter_spec, seed=3), 2)
    save_adapter(modules, tmp_path / "a", meta={"note": "test"})
    loaded = load_adapter(tmp_path / "a")
    assert loaded.exit_layer == 2 and loaded.meta == {"note": "test"}
    again = build_modules(directory, loaded, 2)
    for k, v in modules.adapter.state_dict().items():
        assert torch.equal(v, again.adapter.state_dict()[k]), k

    loaded.tensors.pop("norm.weight")
    with pytest.raises(WeightsError, match="missing 1 keys"):
        build_modules(directory, loaded, 2)
    loaded.tensors["norm.weight"] = torch.ones(64)
    loaded.tensors["layers.0.mlp.up_proj.weight"] = torch.ones(3)
    with pytest.raises(WeightsError, match="unexpected keys"):
        build_modules(directory, loaded, 2)


def test_official_adapter_format(tiny_model, tmp_path):
    """config.json (1-layer LlamaConfig) + pytorch_model.bin with the official key names."""
    from transformers import LlamaConfig

    directory = tiny_model("llama-gqa-tied")
    spec = build_modules(directory, None, 2).adapter_spec
    ckpt = random_adapter(spec, seed=5)
    out = tmp_path / "official"
    out.mkdir()
    LlamaConfig(hidden_size=64, num_attention_heads=spec.num_heads, num_key_value_heads=spec.num_kv_heads,
                num_hidden_layers=1, intermediate_size=128, vocab_size=320).save_pretrained(out)
    torch.save(ckpt.tensors, out / "pytorch_model.bin")
    loaded = load_adapter(out)
    assert loaded.spec == spec
    modules = build_modules(directory, loaded, 2)
    assert torch.equal(modules.adapter.layers["0"].self_attn.q_proj.weight, ckpt.tensors["layers.0.self_attn.q_proj.weight"])
    torch.save({"model." + k: v for k, v in ckpt.tensors.items()}, out / "pytorch_model.bin")  # wrong prefix
    with pytest.raises(WeightsError):
        build_modules(directory, load_adapter(out), 2)


def test_unsupported_architecture_is_refused(tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_layer=2, n_embd=32, n_head=2).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="model type 'gpt2' is not supported"):
        build_modules(tmp_path, None, 1)


def test_exit_layer_range(tiny_model):
    with pytest.raises(ConfigError, match="exit layer 4 must lie in"):
        build_modules(tiny_model("llama-mha-untied"), None, 4)
