"""Prompt lookup drafting (runner/lookup.py) and adaptive gamma: what lookup proposes, and that Kangaroo with
either stays lossless (greedy: token for token equal to AR; sampling: the same first-token distribution) while
keeping the adapter's cache in step with the committed positions."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from conftest import TINY_CONFIGS
from lossless import NearTies, assert_adapter_cache_in_step
from kangaroo_trt.config import DecodeConfig
from kangaroo_trt.errors import ConfigError
from kangaroo_trt.runner.api import KangarooEngine
from kangaroo_trt.runner.decode import State
from kangaroo_trt.runner.lookup import lookup_drafts


def test_lookup_proposes_what_followed_the_longest_repeated_suffix():
    #         0  1  2  3  4  5  6  7  8  9 10
    context = [1, 2, 3, 4, 9, 2, 3, 5, 7, 2, 3]
    assert lookup_drafts(context, 1, 4) == [5, 7, 2, 3]  # "2 3" occurs twice: the latest occurrence wins
    assert lookup_drafts([1, 2, 3, 4, 9, 8, 2, 3], 1, 2) == [4, 9]
    assert lookup_drafts([5, 1, 2, 3, 4, 6, 2, 3, 7, 1, 2, 3], 1, 3) == [4, 6, 2]  # "1 2 3" beats the later "2 3"
    assert lookup_drafts([1, 2, 3, 4, 9, 8, 2, 3], 3, 2) == []  # only a 2-token suffix repeats
    assert lookup_drafts([4, 5, 6, 7], 1, 3) == []  # nothing repeats
    assert lookup_drafts([7, 7, 7, 7], 1, 5) == [7]  # "7 7 7" at 0..2 is followed by the last token only
    assert lookup_drafts([1, 2, 1, 2], 0, 3) == [] and lookup_drafts([1, 2, 1, 2], 1, 0) == []
    with pytest.raises(ConfigError, match="lookup_ngram must be an integer >= 0"):
        DecodeConfig(lookup_ngram=-1)


def _kangaroo(engine: KangarooEngine, prompt: list[int], max_new_tokens: int, **fields) -> tuple[list[int], list[str], State]:
    """Kangaroo's tokens, each round's kind ("lookup" / "adapter" / "plain") and the last state, with ``fields`` of
    DecodeConfig."""
    config = engine.decode_config(max_new_tokens=max_new_tokens, **fields)
    decoder, kinds = engine.decoder, []
    originals = {name: getattr(decoder, name) for name in ("lookup_round", "kangaroo_round", "ar_step")}

    def spy(name, kind):
        def call(*args, **kwargs):
            kinds.append(kind)
            return originals[name](*args, **kwargs)
        return call

    for name, kind in zip(originals, ("lookup", "adapter", "plain")):
        setattr(decoder, name, spy(name, kind))
    try:
        generation = decoder.generate(prompt, config)
        for _ in generation:
            pass
    finally:
        for name in originals:
            delattr(decoder, name)
    return generation.transcript.tokens, kinds, generation.state


def _repetitive_prompts(engine: KangarooEngine) -> list[list[int]]:
    """Prompts whose continuation repeats their own spans: a random prompt followed by its greedy continuation,
    then by the prompt again (so lookup finds long matches and partial ones)."""
    rng = np.random.default_rng(3)
    prompts = []
    for length in (5, 12):
        head = rng.integers(2, engine.manifest.model.vocab_size, size=length).tolist()
        tail = engine.generate(prompt_ids=head, config=engine.decode_config(mode="ar", max_new_tokens=12)).output_ids
        prompts.append(head + tail + head[:3])
    return prompts


@pytest.mark.parametrize("name", list(TINY_CONFIGS))
def test_kangaroo_with_lookup_equals_ar(tiny_engine, name):
    engine = KangarooEngine.open(tiny_engine(name, max_seq_len=128, prefill_chunk=8)[0], threads=1)
    ties, kinds_seen = NearTies(), set()
    for prompt in _repetitive_prompts(engine):
        ar = engine.generate(prompt_ids=prompt, config=engine.decode_config(mode="ar", max_new_tokens=30), record_margins=True)
        for gamma, ngram, adaptive in ((1, 1, False), (4, 2, False), (6, 1, True), (4, 3, True)):
            tokens, kinds, _ = _kangaroo(engine, prompt, 30, gamma=gamma, tau=0.0, lookup_ngram=ngram, adaptive_gamma=adaptive)
            ties.check(ar, type("R", (), {"output_ids": tokens})(), f"{name} gamma={gamma} lookup={ngram} adaptive={adaptive}")
            kinds_seen.update(kinds)
    assert {"lookup", "adapter"} <= kinds_seen, kinds_seen


def test_adapter_cache_stays_in_step_across_lookup_rounds(oracle_engine):
    """Lookup rounds leave the adapter behind; after interleaved lookup and adapter rounds each valid adapter cache row
    must equal one adapter pass over the committed sequence, and (all drafts being right) the output equal AR."""
    prompt = [5, 17, 42, 9, 33, 8, 5, 17, 42]
    ar = oracle_engine.generate(prompt_ids=prompt, config=oracle_engine.decode_config(mode="ar", max_new_tokens=40))
    tokens, kinds, state = _kangaroo(oracle_engine, prompt, 40, gamma=4, tau=0.0, lookup_ngram=1)
    assert tokens == ar.output_ids
    assert "lookup" in kinds and "adapter" in kinds[kinds.index("lookup"):], kinds
    assert_adapter_cache_in_step(oracle_engine.decoder, state, prompt + tokens, at_least=len(prompt) + 9)


def test_lookup_drafts_sample_the_same_first_token_as_plain_sampling(oracle_engine):
    """Sampling with lookup drafts: the first round's drafts come from the prompt (a deterministic proposal), and
    the first sampled token must follow plain sampling's distribution (1000 seeds each: the total variation between two samples of 400 is often 0.08 by chance)."""
    head = [5, 17, 42, 9]
    greedy = oracle_engine.generate(prompt_ids=head, config=oracle_engine.decode_config(mode="ar", max_new_tokens=6)).output_ids
    prompt = head + greedy + head  # lookup drafts the greedy continuation again: often accepted, sometimes not
    n, counts, kinds = 1000, {}, []
    for mode in ("ar", "kangaroo"):
        seen: dict[int, int] = {}
        for seed in range(n):
            if mode == "ar":
                config = oracle_engine.decode_config(max_new_tokens=2, temperature=0.8, top_k=4, seed=seed)
                first = oracle_engine.generate(prompt_ids=prompt, config=replace(config, mode="ar")).output_ids[0]
            else:
                tokens, round_kinds, _ = _kangaroo(oracle_engine, prompt, 2, gamma=3, tau=0.0, temperature=0.8, top_k=4,
                                                seed=seed, lookup_ngram=1)
                first, kinds = tokens[0], kinds + round_kinds[:1]
            seen[first] = seen.get(first, 0) + 1
        counts[mode] = seen
    assert set(kinds) == {"lookup"}, "the first round must draft from the prompt"
    keys = set(counts["ar"]) | set(counts["kangaroo"])
    tv = 0.5 * sum(abs(counts["ar"].get(k, 0) - counts["kangaroo"].get(k, 0)) for k in keys) / n
    top = max(counts["ar"].values()) / n
    assert len(keys) > 1 and 0.2 < top < 0.9, counts
    assert tv < 0.1, counts
