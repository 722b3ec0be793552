"""Stop strings (runner/stops.py): where generation ends, what is streamed, same cut for Kangaroo and AR."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from kangaroo_trt.cli import run_cli
from kangaroo_trt.errors import InputError
from kangaroo_trt.runner.api import KangarooEngine
from kangaroo_trt.runner.stops import StopStrings


def test_find_held_and_token_cut():
    stops = StopStrings(["\n\n", "END"])
    assert stops.find("abc\n\nEND") == 3 and stops.find("abcEN") is None
    assert stops.held("abc\n") == 1 and stops.held("xEN") == 2 and stops.held("xE") == 1 and stops.held("xyz") == 0
    words = ["a", "b", "E", "N", "D", "z"]
    assert stops.tokens_through(lambda n: "".join(words[:n]), 2, len(words)) == 5  # "abEND": the first prefix holding "END"
    assert stops.find("END abc END", 1) == 8 and stops.longest == 3
    assert not StopStrings() and StopStrings("END").stops == ("END",)
    with pytest.raises(InputError, match="empty"):
        StopStrings(["ok", ""])


@pytest.fixture(scope="module")
def engine(tiny_engine):
    return KangarooEngine.open(tiny_engine("llama-gqa-tied", max_seq_len=128)[0], threads=1)


def _stop_inside(engine) -> tuple[str, str]:
    """A stop string taken from the middle of the unstopped AR output, and the text expected before it."""
    full = engine.generate("the quick brown fox", config=engine.decode_config(mode="ar", max_new_tokens=40)).text
    stop = next(full[i:i + 2] for i in range(len(full) // 3, len(full) - 1) if full[i:i + 2].isascii() and full[i:i + 2].isalnum())
    return stop, full[:full.find(stop)]


def test_kangaroo_and_ar_stop_at_the_same_token(engine):
    stop, expected = _stop_inside(engine)
    results = [engine.generate("the quick brown fox", stop=[stop], config=engine.decode_config(mode=m, max_new_tokens=40, gamma=4, tau=0.0))
               for m in ("ar", "kangaroo")]
    for r in results:
        assert r.stop_reason == "stop" and r.text == expected
        assert stop in engine.tokenizer.decode(r.output_ids) and stop not in engine.tokenizer.decode(r.output_ids[:-1])
        assert r.stats.new_tokens == len(r.output_ids) == sum(r.stats.acceptance.committed)
    assert results[0].output_ids == results[1].output_ids


def test_streaming_never_shows_the_stop_string(engine):
    stop, expected = _stop_inside(engine)
    stream = engine.stream("the quick brown fox", stop=stop, config=engine.decode_config(mode="kangaroo", max_new_tokens=40))
    pieces = list(stream)
    assert "".join(pieces) == stream.result.text == expected and stop not in "".join(pieces)
    for budget in range(30, 41):  # without a stop string every piece comes out, also one held back as partial UTF-8
        stream = engine.stream("the quick brown fox", config=engine.decode_config(mode="kangaroo", max_new_tokens=budget))
        assert "".join(stream) == stream.result.text


def test_cli_stop(tiny_engine, engine):
    stop, expected = _stop_inside(engine)
    out = tiny_engine("llama-gqa-tied", max_seq_len=128)[0]
    result = CliRunner().invoke(run_cli.main, ["--engine-dir", str(out), "--prompt", "the quick brown fox", "--json",
                                               "--max-new-tokens", "40", "--stop", stop, "--stop", "never-said"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["text"] == expected
    piped = CliRunner().invoke(run_cli.main, ["--engine-dir", str(out), "--prompt", "-", "--json", "--max-new-tokens", "40",
                                              "--stop", stop], input="the quick brown fox")
    assert piped.exit_code == 0 and json.loads(piped.output)["text"] == expected  # --prompt - reads standard input
    empty = CliRunner().invoke(run_cli.main, ["--engine-dir", str(out), "--prompt", "hi", "--stop", ""])
    assert empty.exit_code == 2 and "stop string is empty" in empty.output
