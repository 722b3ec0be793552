"""draft_floor: a round whose first adapter draft is not confident enough verifies no draft (a plain step).

Lossless like any drafting choice (the deep pass decides), and the adapter's cache must stay in step: a gated
round's adapter pass read t_0's exit state, so nothing of that round is left for the adapter to catch up on.
"""

from __future__ import annotations

import numpy as np
import pytest

from kangaroo_trt.config import DecodeConfig
from kangaroo_trt.errors import ConfigError
from kangaroo_trt.runner.api import KangarooEngine
from kangaroo_trt.runner.decode import State

from conftest import TINY_CONFIGS
from lossless import NearTies, assert_adapter_cache_in_step


def _rounds(engine: KangarooEngine, prompt: list[int], config: DecodeConfig) -> tuple[list[int], list[int], State]:
    """Kangaroo's tokens, the number of drafts each round verified, and the generation's last state."""
    generation = engine.decoder.generate(prompt, config)
    drafts = [len(step.drafts) for step, _ in generation if step.tokens]
    return generation.transcript.tokens, drafts, generation.state


@pytest.mark.parametrize("name", list(TINY_CONFIGS))
def test_kangaroo_with_a_draft_floor_equals_ar(tiny_engine, name):
    engine = KangarooEngine.open(tiny_engine(name, max_seq_len=128, prefill_chunk=8)[0], threads=1)
    rng, ties, gated, drafted = np.random.default_rng(5), NearTies(), 0, 0
    for length in (3, 9, 20):
        prompt = rng.integers(2, engine.manifest.model.vocab_size, size=length).tolist()
        ar = engine.generate(prompt_ids=prompt, config=engine.decode_config(mode="ar", max_new_tokens=30), record_margins=True)
        for floor in (0.05, 0.2, 0.5):
            config = engine.decode_config(max_new_tokens=30, gamma=4, tau=0.0, lookup_ngram=0, draft_floor=floor)
            tokens, per_round, state = _rounds(engine, prompt, config)
            ties.check(ar, type("R", (), {"output_ids": tokens})(), f"{name} floor={floor} prompt={length}")
            assert_adapter_cache_in_step(engine.decoder, state, prompt + tokens, at_least=length)
            gated += per_round.count(0)
            drafted += len(per_round) - per_round.count(0)
    assert gated and drafted, "both gated rounds and drafted rounds must occur"


def test_a_floor_of_one_makes_every_round_a_plain_step(oracle_engine):
    prompt = [5, 17, 42, 9, 33, 8]
    ar = oracle_engine.generate(prompt_ids=prompt, config=oracle_engine.decode_config(mode="ar", max_new_tokens=20))
    config = oracle_engine.decode_config(max_new_tokens=20, gamma=4, tau=0.0, lookup_ngram=0, draft_floor=1.0)
    tokens, per_round, state = _rounds(oracle_engine, prompt, config)
    assert tokens == ar.output_ids and set(per_round) == {0} and len(per_round) == 20
    assert_adapter_cache_in_step(oracle_engine.decoder, state, prompt + tokens, at_least=len(prompt) + 18)  # the last round is never committed


@pytest.mark.parametrize("bad", [-0.1, 1.5, True, "0.3"])
def test_draft_floor_is_a_probability(bad):
    with pytest.raises(ConfigError, match="draft_floor must lie in"):
        DecodeConfig(draft_floor=bad)
