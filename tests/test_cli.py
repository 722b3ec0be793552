"""The command lines: --json contract, streaming output, and one-line errors with a non-zero exit."""

import json

import pytest
from click.testing import CliRunner

from kangaroo_trt.cli import export_cli, run_cli

STATS_KEYS = {"tokens_per_s", "rounds", "mean_accepted", "accepted_by_position", "ctar", "backend", "precision", "mode"}


@pytest.fixture(scope="module")
def engine_dir(tiny_engine):
    return tiny_engine("llama-gqa-tied", max_seq_len=64)[0]


def _run(args):
    return CliRunner().invoke(run_cli.main, [str(a) for a in args])


def test_json_contract(engine_dir):
    result = _run(["--engine-dir", engine_dir, "--prompt", "the quick brown fox", "--json", "--max-new-tokens", "8",
                   "--gamma", "3", "--tau", "0.2"])
    assert result.exit_code == 0, result.output
    d = json.loads(result.output)
    assert {"prompt_ids", "output_ids", "text", "stats"} <= set(d)
    assert STATS_KEYS <= set(d["stats"])
    assert len(d["stats"]["ctar"]) == len(d["stats"]["accepted_by_position"]) == 3
    assert d["stats"]["backend"] == "onnxruntime-cpu" and d["stats"]["mode"] == "kangaroo"
    assert 0 < len(d["output_ids"]) <= 8
    ar = json.loads(_run(["--engine-dir", engine_dir, "--prompt", "the quick brown fox", "--json", "--max-new-tokens",
                          "8", "--mode", "ar"]).output)
    assert ar["output_ids"] == d["output_ids"] and ar["prompt_ids"] == d["prompt_ids"]


def test_streams_text(engine_dir):
    result = _run(["--engine-dir", engine_dir, "--prompt", "hello world", "--max-new-tokens", "6"])
    assert result.exit_code == 0
    d = json.loads(_run(["--engine-dir", engine_dir, "--prompt", "hello world", "--max-new-tokens", "6", "--json"]).output)
    assert result.stdout.startswith(d["text"])


@pytest.mark.parametrize("args,message", [
    (["--gamma", "0"], "gamma must be an integer >= 1"),
    (["--tau", "1.5"], "tau must lie in [0, 1]"),
    (["--chat"], "no chat template"),
    (["--precision", "fp16"], "has no fp16 graphs"),
    (["--backend", "nonesuch"], "unknown backend"),
])
def test_bad_run_options(engine_dir, args, message):
    result = _run(["--engine-dir", engine_dir, "--prompt", "hi", *args])
    assert result.exit_code == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_prompt_longer_than_cache(engine_dir):
    result = _run(["--engine-dir", engine_dir, "--prompt", "the quick brown fox " * 40])
    assert result.exit_code == 2 and "holds 64 positions" in result.stderr


def test_missing_engine_dir(tmp_path):
    result = _run(["--engine-dir", tmp_path / "nope", "--prompt", "hi"])
    assert result.exit_code == 2 and "does not exist" in result.stderr


def test_export_errors(tmp_path, tiny_model):
    runner = CliRunner()
    result = runner.invoke(export_cli.main, ["build", "--model", "no-such-model", "--out", str(tmp_path / "e"), "--random-adapter"])
    assert result.exit_code == 2 and "unknown model 'no-such-model'" in result.stderr
    result = runner.invoke(export_cli.main, ["build", "--model", str(tiny_model("llama-gqa-tied")), "--out", str(tmp_path / "e")])
    assert result.exit_code == 2 and "no adapter given" in result.stderr
    assert not (tmp_path / "e").exists()
