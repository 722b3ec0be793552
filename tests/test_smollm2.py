"""The real default model (SmolLM2-135M-Instruct): Kangaroo == AR on the same graphs == transformers' generate."""

import itertools

import pytest
import torch

from lossless import NearTies
from kangaroo_trt.runner.api import KangarooEngine

pytestmark = pytest.mark.slow

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about autumn leaves.",
    "Explain recursion to a five-year-old.",
    "List three prime numbers greater than 50.",
    "Translate 'good morning' into Spanish and German.",
    "def fibonacci(n):",
    "Summarize the plot of Romeo and Juliet in two sentences.",
    "What is 17 times 23?",
    "Give me a tip for learning to play the guitar.",
    "Why do cats purr?",
    # The answer copies the prompt: prompt lookup drafts from it.
    "Repeat exactly: The committee will meet on Tuesday at noon in the main hall to discuss the budget.",
    "Correct the spelling and repeat the rest unchanged: The wether was nice and we walked along the river to the old mill.",
]
NEW_TOKENS = 24


@pytest.fixture(scope="module")
def engine(smollm2_engine):
    return KangarooEngine.open(smollm2_engine)


@pytest.fixture(scope="module")
def ar_runs(engine):
    return {p: engine.generate(p, chat=True, record_margins=True, config=engine.decode_config(mode="ar", max_new_tokens=NEW_TOKENS)) for p in PROMPTS}


def test_ar_equals_transformers_generate(engine, ar_runs, smollm2_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(smollm2_dir).eval()
    ties = NearTies(exact=False)  # another runtime: its rounding may flip a near-tie
    for prompt, ar in ar_runs.items():
        with torch.no_grad():
            out = model.generate(torch.tensor([ar.prompt_ids]), max_new_tokens=NEW_TOKENS, do_sample=False,
                                 eos_token_id=list(engine.manifest.eos_token_ids), pad_token_id=2)
        hf = out[0, len(ar.prompt_ids):].tolist()
        ties.check(ar, type("R", (), {"output_ids": hf})(), f"transformers vs AR: {prompt!r}")
    print(f"{len(ties.cases)} near-tie divergences", *ties.cases, sep="\n  ")


@pytest.mark.parametrize("gamma,tau", list(itertools.product((1, 4, 6), (0.0, 0.6, 1.0))))
def test_kangaroo_equals_ar(engine, ar_runs, gamma, tau):
    ties = NearTies()
    for prompt, ar in ar_runs.items():
        config = engine.decode_config(gamma=gamma, tau=tau, max_new_tokens=NEW_TOKENS, lookup_ngram=0)  # adapter drafts only
        kg = engine.generate(prompt, chat=True, config=config)
        ties.check(ar, kg, f"gamma={gamma} tau={tau} {prompt!r}")
        assert kg.prompt_ids == ar.prompt_ids and kg.stop_reason == ar.stop_reason
        drafted = kg.stats.acceptance.drafted
        assert max(drafted) <= gamma
        if tau == 1.0:  # nothing is that confident: exactly one draft per round
            assert set(drafted[:-1]) <= {1}
    print(f"gamma={gamma} tau={tau}: {len(ties.cases)} near-tie divergences", *ties.cases, sep="\n  ")


@pytest.mark.parametrize("lookup_ngram,adaptive,tau", [(1, False, 1.0), (2, True, 0.6), (3, False, 0.0)])
def test_kangaroo_with_lookup_equals_ar(engine, ar_runs, lookup_ngram, adaptive, tau):
    ties, drafted = NearTies(), []
    for prompt, ar in ar_runs.items():
        config = engine.decode_config(gamma=6, tau=tau, max_new_tokens=NEW_TOKENS, lookup_ngram=lookup_ngram,
                                      adaptive_gamma=adaptive)
        kg = engine.generate(prompt, chat=True, config=config)
        ties.check(ar, kg, f"lookup_ngram={lookup_ngram} adaptive={adaptive} tau={tau} {prompt!r}")
        assert kg.stop_reason == ar.stop_reason
        drafted += kg.stats.acceptance.drafted
    if tau == 1.0:  # the adapter drafts one token per round here: longer rounds were drafted by lookup
        assert max(drafted) > 1, drafted
    print(f"lookup_ngram={lookup_ngram}: {len(ties.cases)} near-tie divergences", *ties.cases, sep="\n  ")


def test_chat_template_and_streaming(engine):
    ids = engine.encode("Hi!", chat=True)
    assert engine.tokenizer.decode(ids).startswith("<|im_start|>")
    stream = engine.stream("Name a color.", chat=True, config=engine.decode_config(max_new_tokens=12))
    pieces = list(stream)
    assert "".join(pieces) == stream.result.text
    assert stream.result.stats.new_tokens == len(stream.result.output_ids) <= 12
