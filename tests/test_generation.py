"""One home per generation: the mode is a DecodeConfig field, per-request state lives in the Generation (not on the
long-lived Decoder), and stats carry the DecodeConfig whole."""

from __future__ import annotations

import dataclasses
import json

import pytest
from click.testing import CliRunner

from kangaroo_trt.cli import run_cli
from kangaroo_trt.config import DecodeConfig
from kangaroo_trt.errors import ConfigError
from kangaroo_trt.runner.api import KangarooEngine
from kangaroo_trt.runner.decode import Generation, State

PROMPT = "the quick brown fox"


@pytest.fixture(scope="module")
def engine_dir(tiny_engine):
    return tiny_engine("llama-gqa-tied", max_seq_len=128)[0]


@pytest.fixture(scope="module")
def engine(engine_dir):
    with KangarooEngine.open(engine_dir, threads=1) as engine:
        yield engine


def test_the_mode_is_a_config_field_and_the_old_keyword_must_agree(engine):
    ar = engine.generate(PROMPT, config=engine.decode_config(mode="ar", max_new_tokens=12))
    assert ar.stats.mode == "ar" and ar.stats.acceptance.rounds == len(ar.output_ids)  # plain steps: one token each
    kangaroo = engine.generate(PROMPT, config=engine.decode_config(max_new_tokens=12, gamma=4, tau=0.0))
    assert kangaroo.stats.mode == "kangaroo" and kangaroo.output_ids == ar.output_ids
    # an older call: mode= alone, or with a config (whose mode it replaces), still works
    assert engine.generate(PROMPT, mode="ar").stats.mode == "ar"
    old_style = engine.generate(PROMPT, mode="ar", config=engine.decode_config(max_new_tokens=12))
    assert old_style.stats.mode == "ar" and old_style.output_ids == ar.output_ids
    with pytest.raises(ConfigError, match="mode must be one of kangaroo, ar, got 'beam'"):
        engine.generate(PROMPT, mode="beam", config=engine.decode_config(max_new_tokens=12))
    with pytest.raises(ConfigError, match="mode must be one of kangaroo, ar, got 'beam'"):
        DecodeConfig(mode="beam")
    with pytest.raises(TypeError, match="the mode is a DecodeConfig field"):  # Decoder.generate(ids, mode, config)
        engine.decoder.generate([5, 6], "kangaroo", engine.decode_config())


def test_per_request_state_lives_in_the_generation(engine):
    decoder = engine.decoder
    assert not {"timings", "rule", "record_margins", "state"} & set(vars(decoder))  # only long-lived things stay
    sampled = decoder.generate([5, 9, 11], engine.decode_config(max_new_tokens=8, temperature=0.9, seed=3))
    greedy = decoder.generate([5, 9, 11], engine.decode_config(mode="ar", max_new_tokens=6), record_margins=True)
    assert isinstance(greedy, Generation) and greedy.state is None  # nothing runs before it is iterated
    rounds = list(greedy)
    assert isinstance(greedy.state, State) and type(greedy.state.rule).__name__ == "Greedy"
    assert greedy.transcript.tokens == [t for step, _ in rounds for t in step.tokens] and len(greedy.transcript.tokens) == 6
    assert len(greedy.transcript.margins) == 6 and greedy.transcript.stop == "max_new_tokens"
    assert greedy.timings["prefill"] > 0 and greedy.timings["verify"] > 0
    list(sampled)  # the other generation's settings are its own: it samples and records no margins
    assert type(sampled.state.rule).__name__ == "Sampling" and sampled.transcript.margins == []
    assert sampled.timings is not greedy.timings and greedy.state.record_margins and not sampled.state.record_margins


def test_stats_take_the_config_whole(engine):
    config = engine.decode_config(max_new_tokens=6, gamma=3, tau=0.0, lookup_ngram=0, temperature=0.8, seed=4)
    stats = engine.generate(PROMPT, config=config).stats
    d = stats.to_dict()
    assert d["decode"] == dataclasses.asdict(config) and set(d["decode"]) == {f.name for f in dataclasses.fields(DecodeConfig)}
    assert (d["mode"], d["gamma"], d["tau"]) == ("kangaroo", 3, 0.0) and len(d["ctar"]) == 3
    assert d["sampling"] == {"temperature": 0.8, "top_k": 0, "top_p": 1.0, "seed": 4}
    ar = engine.generate(PROMPT, config=dataclasses.replace(config, mode="ar", temperature=0.0)).stats.to_dict()
    assert (ar["mode"], ar["gamma"], ar["sampling"], ar["ctar"]) == ("ar", 0, None, [])
    json.dumps(d)


def test_cli_mode_reaches_the_config(engine_dir):
    result = CliRunner().invoke(run_cli.main, ["--engine-dir", str(engine_dir), "--prompt", PROMPT, "--json",
                                               "--max-new-tokens", "5", "--mode", "ar"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.output)["stats"]
    assert stats["mode"] == stats["decode"]["mode"] == "ar" and stats["decode"]["max_new_tokens"] == 5
