"""Compiled decoding steps on the PyTorch backends (runner/compiled.py): same tokens as the plain modules, exact mode
still bitwise (Kangaroo == AR), fewer operators per step. Runs Inductor's CPU backend (needs a C++ compiler); skips
with the reason where Inductor cannot compile at all. The CUDA path has not run (no GPU here).
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from kangaroo_trt.errors import BackendError
from kangaroo_trt.runner.api import KangarooEngine
from kangaroo_trt.runner.compiled import COMPILE_ENV, compile_enabled
from kangaroo_trt.runner.exactness import CHECK_PROMPTS, check_engine
from kangaroo_trt.runner.opcount import profile_kernels, step_ops

PROMPTS = ["the quick brown fox jumps", "def add(a, b):"]


def _inductor_problem() -> str | None:
    """Why Inductor cannot compile on this machine (None: it can), from compiling a one-op function."""
    import torch

    try:
        torch.compile(lambda x: x.sin() + 1, fullgraph=True, dynamic=False)(torch.ones(3))
    except Exception as err:  # no C++ compiler, missing Python headers, ...
        return f"torch.compile (Inductor) cannot compile here: {type(err).__name__}: {str(err).strip()[:200]}"
    return None


@pytest.fixture(scope="module")
def engine_dir(tiny_engine):  # the engine of test_exactness.py (GQA: the grouped reshape is compiled too)
    out, _ = tiny_engine("llama-gqa-tied", max_seq_len=64, prefill_chunk=8, precisions=("fp32", "fp16", "int8"),
                         tensorrt="off")
    return out


def test_compile_setting(monkeypatch):
    monkeypatch.delenv(COMPILE_ENV, raising=False)
    assert compile_enabled(None) is False  # off unless asked for
    monkeypatch.setenv(COMPILE_ENV, "1")
    assert compile_enabled(None) is True and compile_enabled(False) is False  # the parameter wins
    monkeypatch.setenv(COMPILE_ENV, "yes")
    with pytest.raises(BackendError, match=f"{COMPILE_ENV} must be 0 or 1"):
        compile_enabled(None)


def test_compiled_steps_give_the_plain_tokens_and_stay_exact(engine_dir, monkeypatch):
    if problem := _inductor_problem():
        pytest.skip(problem)
    profile_kernels()  # the compiled kernels show up in the operator count below
    monkeypatch.setenv(COMPILE_ENV, "0")
    plain = KangarooEngine.open(engine_dir, backend="torch-cpu", threads=1)
    monkeypatch.setenv(COMPILE_ENV, "1")  # through the public API, as a user turns it on
    compiled = KangarooEngine.open(engine_dir, backend="torch-cpu", threads=1)
    calls = dict.fromkeys(("shallow", "adapter", "deep"), 0)
    for name in calls:  # count the compiled steps' calls: the decoding steps must run them, not the plain modules
        runner = compiled.backend.graph(name)
        step = runner._compiled

        def counted(*args, _step=step, _name=name):
            calls[_name] += 1
            return _step(*args)

        runner._compiled = counted
    assert plain.backend.graph("deep")._compiled is None

    for prompt in PROMPTS:  # greedy AR: the compiled steps' tokens are the plain modules'
        config = plain.decode_config(max_new_tokens=16)
        assert compiled.generate(prompt, config=replace(config, mode="ar")).output_ids == \
            plain.generate(prompt, config=replace(config, mode="ar")).output_ids, prompt
    report = check_engine(compiled, [compiled.encode(t, chat=False) for t in CHECK_PROMPTS[:2]], new_tokens=24)
    assert report.ok and report.identical == report.prompts == 2, report.table()  # rows bitwise, Kangaroo == AR
    assert all(count > 0 for count in calls.values()), calls

    ids = plain.encode(CHECK_PROMPTS[0], chat=False)[:40]
    eager_ops, compiled_ops = (step_ops(e, "ar", ids, e.manifest.max_verify) for e in (plain, compiled))
    assert 0 < compiled_ops.compute < eager_ops.compute / 2, (eager_ops, compiled_ops)
    plain.close()
    compiled.close()
