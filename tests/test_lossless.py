"""Greedy Kangaroo == greedy AR on the same graphs == transformers' generate, on tiny random models.

Includes the cases that exercise the cache bookkeeping: every draft accepted (the adapter's one-token lag),
EOS and max-new-tokens falling inside an accepted run, and a prompt that fills the cache.
"""

import itertools

import numpy as np
import pytest
import torch

from conftest import TINY_CONFIGS
from lossless import NearTies, assert_adapter_cache_in_step
from kangaroo_trt.config import ExportConfig
from kangaroo_trt.errors import ConfigError, InputError
from kangaroo_trt.build import build_engine_dir
from kangaroo_trt.model.weights import load_hf_config, random_adapter
from kangaroo_trt.config import AdapterSpec, ModelSpec
from kangaroo_trt.runner.api import KangarooEngine

GRID = list(itertools.product((1, 4, 6), (0.0, 0.6, 1.0)))
MAX_SEQ_LEN = 128


def _prompts(vocab_size: int, count: int = 3) -> list[list[int]]:
    rng = np.random.default_rng(7)
    return [rng.integers(2, vocab_size, size=length).tolist() for length in (1, 6, 23)[:count]]


def _engine(directory, out, adapter=None) -> KangarooEngine:
    build_engine_dir(str(directory), out, ExportConfig(max_seq_len=MAX_SEQ_LEN, prefill_chunk=8), adapter=adapter,
                     allow_random_adapter=adapter is None, log=lambda _: None)
    return KangarooEngine.open(out)


def _hf_greedy(directory, prompt: list[int], max_new_tokens: int, eos: int) -> list[int]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(directory).eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=eos, pad_token_id=eos)
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("name", list(TINY_CONFIGS))
def test_kangaroo_equals_ar_equals_transformers(tiny_model, tmp_path, name):
    directory = tiny_model(name)
    engine = _engine(directory, tmp_path / "engine")
    ties = NearTies()
    for prompt in _prompts(engine.manifest.model.vocab_size):
        ar = engine.generate(prompt_ids=prompt, record_margins=True, config=engine.decode_config(mode="ar", max_new_tokens=24))
        hf = _hf_greedy(directory, prompt, 24, engine.manifest.eos_token_ids[0])
        NearTies(exact=False).check(ar, type("R", (), {"output_ids": hf})(), f"{name} AR vs transformers, prompt len {len(prompt)}")
        for gamma, tau in GRID:
            kg = engine.generate(prompt_ids=prompt, config=engine.decode_config(mode="kangaroo", gamma=gamma, tau=tau, max_new_tokens=24))
            ties.check(ar, kg, f"{name} gamma={gamma} tau={tau} prompt len {len(prompt)}")
            assert kg.stop_reason == ar.stop_reason
            assert kg.stats.acceptance.rounds <= len(kg.output_ids)
    print(f"{name}: {len(ties.cases)} near-tie divergences", *ties.cases, sep="\n  ")


@pytest.mark.parametrize("gamma", (1, 4, 6))
def test_every_draft_accepted_exercises_adapter_lag(oracle_engine, gamma):
    ties = NearTies()
    for prompt in _prompts(oracle_engine.manifest.model.vocab_size):
        ar = oracle_engine.generate(prompt_ids=prompt, record_margins=True, config=oracle_engine.decode_config(mode="ar", max_new_tokens=40))
        config = oracle_engine.decode_config(gamma=gamma, tau=0.0, max_new_tokens=40, lookup_ngram=0)  # adapter drafts only
        kg = oracle_engine.generate(prompt_ids=prompt, config=config)
        ties.check(ar, kg, f"oracle gamma={gamma}")
        full_rounds = kg.stats.acceptance.accepted[:-1]  # the last round may be cut by the token budget
        assert full_rounds and all(a == gamma for a in full_rounds), f"not every draft accepted: {kg.stats.acceptance.accepted}"
        assert kg.stats.acceptance.mean_accepted > gamma * 0.8
        assert kg.stats.to_dict()["ctar"][0] == 1.0


def test_eos_and_budget_inside_an_accepted_run(oracle_engine):
    prompt = _prompts(oracle_engine.manifest.model.vocab_size)[1]
    ar = oracle_engine.generate(prompt_ids=prompt, config=oracle_engine.decode_config(mode="ar", max_new_tokens=30))
    # A budget that ends mid-round: gamma 6 commits 7 tokens per round.
    for budget in (1, 3, 9, 10):
        kg = oracle_engine.generate(prompt_ids=prompt, config=oracle_engine.decode_config(mode="kangaroo", gamma=6, tau=0.0, max_new_tokens=budget))
        assert kg.output_ids == ar.output_ids[:budget] and kg.stop_reason == "max_new_tokens"
    # Make a token in the middle of a full round an EOS id: generation must stop right after it.
    eos_at = 4
    eos = ar.output_ids[eos_at]
    first = ar.output_ids.index(eos)
    decoder = oracle_engine.decoder
    saved = decoder.eos_ids
    decoder.eos_ids = frozenset({eos})
    try:
        kg = oracle_engine.generate(prompt_ids=prompt, config=oracle_engine.decode_config(mode="kangaroo", gamma=6, tau=0.0, max_new_tokens=30))
        ar2 = oracle_engine.generate(prompt_ids=prompt, config=oracle_engine.decode_config(mode="ar", max_new_tokens=30))
    finally:
        decoder.eos_ids = saved
    assert kg.stop_reason == ar2.stop_reason == "eos"
    assert kg.output_ids == ar2.output_ids == ar.output_ids[:first + 1]
    assert kg.stats.acceptance.rounds == 1, "the EOS fell inside the first accepted run"


def test_cache_limits(tiny_model, tmp_path):
    engine = _engine(tiny_model("llama-mha-untied"), tmp_path / "engine")
    with pytest.raises(InputError, match=f"holds {MAX_SEQ_LEN} positions"):
        engine.generate(prompt_ids=[5] * MAX_SEQ_LEN, config=engine.decode_config(max_new_tokens=4))
    prompt = [5, 6, 7] * 40  # 120 tokens: only 8 more positions fit
    ar = engine.generate(prompt_ids=prompt, record_margins=True, config=engine.decode_config(mode="ar", max_new_tokens=50))
    kg = engine.generate(prompt_ids=prompt, config=engine.decode_config(mode="kangaroo", gamma=6, tau=0.0, max_new_tokens=50))
    NearTies().check(ar, kg, "cache-filling prompt")
    assert ar.stop_reason == kg.stop_reason
    assert len(prompt) + len(kg.output_ids) <= MAX_SEQ_LEN + 1 or kg.stop_reason == "eos"


def test_decode_settings_are_validated(tiny_model, tmp_path):
    engine = _engine(tiny_model("llama-mha-untied"), tmp_path / "engine")
    with pytest.raises(ConfigError, match="gamma must be an integer >= 1"):
        engine.generate(prompt_ids=[3, 4], config=engine.decode_config(gamma=0))
    with pytest.raises(ConfigError, match=r"tau must lie in \[0, 1\]"):
        engine.generate(prompt_ids=[3, 4], config=engine.decode_config(tau=1.5))
    with pytest.raises(ConfigError, match="gamma 9 exceeds"):
        engine.generate(prompt_ids=[3, 4], config=engine.decode_config(gamma=9))
    with pytest.raises(ConfigError, match="mode must be one of"):
        engine.generate(prompt_ids=[3, 4], config=engine.decode_config(mode="beam"))
    with pytest.raises(ConfigError, match="mode must be one of"):
        engine.generate(prompt_ids=[3, 4], mode="beam")  # the older keyword
    with pytest.raises(InputError, match="prompt is empty"):
        engine.generate(prompt_ids=[])


def test_adapter_cache_after_lagging_rounds_matches_a_fresh_pass(oracle_engine):
    """After rounds in which every draft was accepted, each valid adapter cache row must hold exactly the key and
    value that one adapter pass over the whole committed sequence gives (catches a dropped or misplaced backlog)."""
    prompt = _prompts(oracle_engine.manifest.model.vocab_size)[2]
    config = oracle_engine.decode_config(gamma=4, tau=0.0, max_new_tokens=30, lookup_ngram=0)  # adapter drafts only
    generation = oracle_engine.decoder.generate(prompt, config)
    for _ in generation:
        pass
    assert generation.transcript.tokens == oracle_engine.generate(prompt_ids=prompt, config=config).output_ids
    assert_adapter_cache_in_step(oracle_engine.decoder, generation.state, prompt + generation.transcript.tokens,
                                 at_least=len(prompt) + 9)


def test_restricted_draft_vocabulary_stays_lossless(tiny_model, tmp_path):
    """A draft head over the most frequent tokens only: cheaper drafts, same output (deep verifies everything)."""
    from kangaroo_trt.model.weights import restrict_draft_vocab

    directory = tiny_model("qwen2-bias-gqa")
    spec = AdapterSpec.like(ModelSpec.from_hf_config(load_hf_config(directory)))
    full = _engine(directory, tmp_path / "full")
    prompts = _prompts(full.manifest.model.vocab_size)
    ar_runs = [full.generate(prompt_ids=p, record_margins=True, config=full.decode_config(mode="ar", max_new_tokens=24)) for p in prompts]
    counts = torch.zeros(full.manifest.model.vocab_size)
    for run in ar_runs:
        counts.index_add_(0, torch.tensor(run.output_ids), torch.ones(len(run.output_ids)))
    adapter = restrict_draft_vocab(random_adapter(spec, seed=2), counts, 40)
    small = _engine(directory, tmp_path / "small", adapter)
    assert small.manifest.adapter.draft_vocab_size == 40
    top = set(torch.topk(counts, 40).indices.tolist())
    ties = NearTies()
    for prompt, ar in zip(prompts, ar_runs):
        kg = small.generate(prompt_ids=prompt, config=small.decode_config(mode="kangaroo", gamma=4, tau=0.0, max_new_tokens=24))
        ties.check(ar, kg, "restricted draft vocabulary")
    draft_ids = set()
    decoder = small.decoder
    original = decoder._adapter

    def spy(hidden, start):
        draft, confidence = original(hidden, start)
        draft_ids.add(int(draft[0, 0]))
        return draft, confidence

    decoder._adapter = spy
    try:
        small.generate(prompt_ids=prompts[2], config=small.decode_config(mode="kangaroo", gamma=4, tau=0.0, max_new_tokens=12))
    finally:
        decoder._adapter = original
    assert draft_ids and draft_ids <= top, "drafts must come from the restricted vocabulary"


@pytest.mark.parametrize("name", ["qwen2-bias-gqa", "llama-gqa-tied"])
def test_mlp_adapter_variant_stays_lossless(tiny_model, tmp_path, name):
    """The MLP variant of the adapter (this project's, AdapterSpec.mlp_size) exports, passes the build's parity
    check against PyTorch, keeps its cache in step, and Kangaroo with it equals AR."""
    import onnx

    directory = tiny_model(name)
    spec = AdapterSpec.like(ModelSpec.from_hf_config(load_hf_config(directory)), mlp=True)
    assert spec.mlp_size == 128  # the tiny models' intermediate size
    engine = _engine(directory, tmp_path / "mlp", random_adapter(spec, seed=4, std=0.2))
    assert engine.manifest.adapter.mlp_size == spec.mlp_size
    adapter_graph = onnx.load(tmp_path / "mlp" / engine.manifest.graphs["fp32"]["adapter"].file, load_external_data=False)
    assert any("/mlp/" in node.name for node in adapter_graph.graph.node), "the adapter graph has no MLP"
    ties = NearTies()
    for prompt in _prompts(engine.manifest.model.vocab_size):
        ar = engine.generate(prompt_ids=prompt, record_margins=True, config=engine.decode_config(mode="ar", max_new_tokens=24))
        for gamma, tau in ((1, 0.0), (4, 0.0), (6, 0.6)):
            config = engine.decode_config(gamma=gamma, tau=tau, max_new_tokens=24, lookup_ngram=0)
            ties.check(ar, engine.generate(prompt_ids=prompt, config=config), f"mlp adapter g{gamma} t{tau}")
    prompt = _prompts(engine.manifest.model.vocab_size)[2]
    generation = engine.decoder.generate(prompt, engine.decode_config(gamma=4, tau=0.0, max_new_tokens=30, lookup_ngram=0))
    for _ in generation:
        pass
    assert_adapter_cache_in_step(engine.decoder, generation.state, prompt + generation.transcript.tokens, at_least=30)


def test_mlp_adapter_variant_builds_int8_and_stays_lossless(tiny_model, tmp_path):
    """The int8 build calibrates and smooths the adapter's MLP too (calib/smooth.py finds it by name); greedy
    Kangaroo on the int8 graphs still equals AR on them."""
    directory = tiny_model("llama-gqa-tied")
    spec = AdapterSpec.like(ModelSpec.from_hf_config(load_hf_config(directory)), mlp=True)
    out = tmp_path / "mlp-int8"
    build_engine_dir(str(directory), out, ExportConfig(max_seq_len=MAX_SEQ_LEN, prefill_chunk=8, precisions=("fp32", "int8"),
                                                       tensorrt="off"),
                     adapter=random_adapter(spec, seed=5, std=0.2), log=lambda _: None)
    engine = KangarooEngine.open(out, precision="int8")
    ties = NearTies()
    for prompt in _prompts(engine.manifest.model.vocab_size):
        ar = engine.generate(prompt_ids=prompt, record_margins=True, config=engine.decode_config(mode="ar", max_new_tokens=20))
        kg = engine.generate(prompt_ids=prompt,
                             config=engine.decode_config(gamma=4, tau=0.0, max_new_tokens=20, lookup_ngram=0))
        ties.check(ar, kg, "mlp adapter int8")
