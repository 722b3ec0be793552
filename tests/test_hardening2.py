"""Issue 19 (engine open and command lines): an engine directory replaced while it is opened, thread counts and
float options checked before any work, output paths checked up front, and smaller one-line errors."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from kangaroo_trt.build import build_engine_dir
from kangaroo_trt.config import ExportConfig
from kangaroo_trt.errors import KangarooError
from kangaroo_trt.runner.api import KangarooEngine

from conftest import make_tiny_model

MODEL = "llama-gqa-tied"
PROMPT_IDS = [5, 17, 42, 7, 99]

# Swaps two engine directories under one name as `kangaroo-export build --force` does (atomic.swap_in): the name
# is renamed away, the other directory renamed to it; between the two renames the name does not exist.
SWAPPER = """
import os, sys, time
name, side, parked, stop, pause = sys.argv[1:6]
while not os.path.exists(stop):
    os.rename(name, parked); os.rename(side, name); os.rename(parked, side)
    time.sleep(float(pause))
"""


@pytest.fixture(scope="module")
def two_engines(tiny_engine, tmp_path_factory):
    """Two engines of one architecture (same tokenizer and shapes, other weights): a mix of them loads and runs."""
    first = tiny_engine(MODEL, max_seq_len=64)[0]
    other = make_tiny_model(tmp_path_factory.mktemp("other-model"), MODEL, seed=1)
    second = tmp_path_factory.mktemp("other-engine") / "engine"
    build_engine_dir(str(other), second, ExportConfig(max_seq_len=64), allow_random_adapter=True, log=lambda _: None)
    return first, second


def _output(directory: Path) -> list[int]:
    with KangarooEngine.open(directory, backend="onnxruntime-cpu") as engine:
        return engine.generate(prompt_ids=PROMPT_IDS, config=engine.decode_config(max_new_tokens=12)).output_ids


def test_engine_swapped_during_open_is_never_mixed(two_engines, tmp_path):
    import shutil

    name, side = tmp_path / "engine", tmp_path / "side"
    shutil.copytree(two_engines[0], name)
    shutil.copytree(two_engines[1], side)
    expected = {"first": _output(name), "second": _output(side)}
    assert expected["first"] != expected["second"]
    stop = tmp_path / "stop"
    swapper = subprocess.Popen([sys.executable, "-c", SWAPPER, str(name), str(side), str(tmp_path / "parked"), str(stop),
                                "0.4"])
    outcomes: dict[str, int] = {"first": 0, "second": 0, "one-line error": 0}
    wrong = []
    try:
        end = time.monotonic() + 25
        while time.monotonic() < end and sum(outcomes.values()) + len(wrong) < 60:
            try:
                got = _output(name)
            except KangarooError as err:
                assert "\n" not in str(err), str(err)
                outcomes["one-line error"] += 1
                continue
            match = [k for k, v in expected.items() if v == got]
            if match:
                outcomes[match[0]] += 1
            else:
                wrong.append(got)
    finally:
        stop.touch()
        swapper.wait(timeout=30)
    assert not wrong, f"{len(wrong)} opens loaded a mix of two engines ({outcomes})"
    assert outcomes["first"] + outcomes["second"] > 0, outcomes  # the retry lets most opens through


# -- command lines: checked before any work ---------------------------------------------------------------------------

def _cli(cli: str, *args, cwd: Path | None = None) -> subprocess.CompletedProcess:
    from test_bad_inputs import cli_command, cli_env

    return subprocess.run(cli_command(cli, *map(str, args)), capture_output=True, text=True, env=cli_env(), cwd=cwd,
                          timeout=300)


def test_train_checks_out_before_the_teacher_pass(tiny_model, tmp_path):
    """An --out that cannot be written (here an existing file) fails at once: no teacher pass, no training, file kept."""
    from test_bad_inputs import assert_one_line_error

    data = tmp_path / "data.jsonl"
    data.write_text("".join(f'{{"text": "hello there number {i}, the quick brown fox {i}"}}\n' for i in range(8)))
    out = tmp_path / "adapter"
    out.write_text("keep")
    proc = _cli("train", "--model", tiny_model(MODEL), "--data", data, "--out", out, "--no-self-distill", "--epochs", 1,
                "--cache-dir", tmp_path / "cache")
    assert_one_line_error(proc.returncode, proc.stderr, 2, "--out")
    assert not (tmp_path / "cache").exists()  # the teacher features were never computed
    assert out.read_text() == "keep"


def test_bench_report_is_strict_json(engine_dir_for_bench, tmp_path):
    """A question_id of NaN (JSONL allows the constant) used to be written into report.json as bare NaN."""
    import json

    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question_id": NaN, "category": "qa", "turns": ["the quick brown fox"]}\n')
    proc = _cli("bench", "--engine-dir", engine_dir_for_bench, "--questions", questions, "--max-new-tokens", 4,
                "--threads", 1, "--no-warmup", "--out", tmp_path / "r")
    assert proc.returncode == 0, proc.stderr

    def refuse(constant):
        raise ValueError(f"report.json holds {constant}, which is not JSON")

    report = json.loads((tmp_path / "r" / "report.json").read_text(), parse_constant=refuse)
    assert report["questions"][0]["question_id"] is None


@pytest.fixture(scope="module")
def engine_dir_for_bench(tiny_engine):
    return tiny_engine(MODEL, max_seq_len=64)[0]
