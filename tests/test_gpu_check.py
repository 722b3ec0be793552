"""scripts/gpu_check.py end to end on the CPU, as a GPU machine would run it: a tiny chat model is built into an
engine, measured on ONNX Runtime CPU and PyTorch CPU, and the JSON and report.md it writes hold every row field."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kangaroo_trt.runner.costs import CostTable

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_check.py"
ROW_FIELDS = ("backend", "precision", "exact", "ar_ms_per_token", "kangaroo_ms_per_token", "kangaroo_speedup",
              "tokens_per_deep_pass", "equal", "n_prompts", "divergences", "kernels_per_step", "check",
              "ar_ms_per_token_with_prefill", "kangaroo_ms_per_token_with_prefill", "drafts_per_deep_pass",
              "drafts_per_drafting_pass", "cost_table")


def _run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=timeout)


def test_gpu_check_rehearsal_on_cpu_writes_every_row_field(tiny_model, tmp_path):
    out = tmp_path / "results" / "results.json"
    done = _run("--model", str(tiny_model("llama-gqa-tied", chat=True)), "--backends", "onnxruntime-cpu,torch-cpu",
                "--precisions", "fp32", "--prompts", "2", "--max-new-tokens", "4", "--peer-prompts", "2",
                "--check-prompts", "1", "--check-new-tokens", "4", "--max-seq-len", "128", "--out", str(tmp_path / "work"),
                "--json", str(out))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    results = json.loads(out.read_text())
    assert results["gpu"] == "cpu"
    rows = {r["backend"]: r for r in results["rows"]}
    assert sorted(rows) == ["onnxruntime-cpu", "torch-cpu"]
    for r in rows.values():
        assert set(ROW_FIELDS) <= set(r), set(ROW_FIELDS) - set(r)
        assert (r["precision"], r["exact"], r["n_prompts"]) == ("fp32", True, 2)
        assert r["equal"] is True and r["divergences"] == [] and r["ar_tokens"] == r["kangaroo_tokens"] > 0
        assert 0 < r["ar_ms_per_token"] < r["ar_ms_per_token_with_prefill"]
        assert r["kangaroo_speedup"] == pytest.approx(r["ar_ms_per_token"] / r["kangaroo_ms_per_token"])
        assert r["tokens_per_deep_pass"] >= 1
        # the cost policy's depth and the table it decided with, measured on this row's backend
        table = CostTable.from_dict(r["cost_table"])
        assert table.backend == r["backend"] and table.precision == "fp32" and table.rows >= 2
        assert r["drafts_per_deep_pass"] >= 0
        assert r["drafts_per_drafting_pass"] is None or r["drafts_per_drafting_pass"] >= 1
        assert r["check"]["ok"] and (r["check"]["backend"], r["check"]["precision"]) == (r["backend"], "fp32")
        assert r["check"]["kangaroo_equals_ar"]["prompts"] == 1
    assert rows["onnxruntime-cpu"]["kernels_per_step"] is None  # torch.profiler cannot see inside ONNX Runtime
    ops = rows["torch-cpu"]["kernels_per_step"]
    assert ops["unit"] == "top-level ATen ops" and 0 < ops["ar_step"] < ops["kangaroo_round"]
    assert rows["onnxruntime-cpu"]["host_reads_per_round"] is None
    reads = rows["torch-cpu"]["host_reads_per_round"]  # device-resident rounds: one read each, never the logits
    assert 0 < reads["ar"] <= 1 and 0 < reads["kangaroo"] <= 1 and reads["largest_read"] < 64
    peer = results["peer"]
    assert (peer["device"], peer["n_prompts"], [p["precision"] for p in peer["runs"]]) == ("cpu", 2, ["fp32"])
    assert peer["runs"][0]["tokens_per_s"] > 0 and peer["runs"][0]["same_tokens_as_ar"] in (0, 1, 2)
    settings = results["settings"]
    assert settings["prompts"] == 2 and settings["max_new_tokens"] == 4 and settings["chat_template"] is True
    assert all(s.startswith(("spec-bench", "extra")) for s in settings["prompt_sources"])
    report = (out.parent / "report.md").read_text()
    assert "| onnxruntime-cpu | fp32 | exact |" in report and "| torch-cpu | fp32 | exact |" in report


@pytest.mark.parametrize("bad, message", [
    (("--backends", "onnxruntime-cpu,cuda-magic"), "error: unknown backend 'cuda-magic' in --backends: choose from "
                                                   "tensorrt, onnxruntime-cuda, torch-cuda, onnxruntime-cpu, torch-cpu"),
    (("--precisions", "fp32,fp8"), "error: unknown precision 'fp8' in --precisions: choose from fp32, fp16, bf16, int8"),
    (("--json", "{file}/out.json"), "error: --json {file}: {file} is not a directory: choose another path"),
])
def test_gpu_check_bad_input_is_one_error_line_before_any_work(tmp_path, bad, message):
    file = tmp_path / "a-file"
    file.write_text("")
    done = _run(*(a.format(file=file) for a in bad), "--out", str(tmp_path / "work"), timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [message.format(file=file)]
    assert not (tmp_path / "work").exists()  # nothing was built


def test_a_divergence_is_reported_with_its_margin_and_fails_the_run(tiny_engine, tmp_path, monkeypatch):
    """A planted fault that changes the first target of every multi-row deep pass (verify, lookup): the run reports
    each prompt's divergence at output position 0 with AR's top-2 margin there, the check fails, and it exits 1."""
    import importlib.util

    from kangaroo_trt.runner.arrays import snapshot
    from kangaroo_trt.runner.decode import Decoder

    engine_dir = tiny_engine("llama-gqa-tied", max_seq_len=128)[0]  # built (and its export checked) before the fault
    real_deep = Decoder._deep

    def planted(self, hidden, start, pad=True):
        targets, logits = real_deep(self, hidden, start, pad)
        if pad and hidden.shape[1] > 1:  # a decoding step over several tokens (prefill passes pad=False)
            targets = snapshot(targets)
            targets[0, 0] = (targets[0, 0] + 1) % logits.shape[-1]
        return targets, logits

    monkeypatch.setattr(Decoder, "_deep", planted)
    # The paper's drafting rule verifies a draft in every round, so the first round already runs a multi-row pass
    # (the cost policy may choose plain steps on a random adapter, and then nothing multi-row runs in 4 tokens).
    from kangaroo_trt.runner.api import KangarooEngine

    real_config = KangarooEngine.decode_config
    monkeypatch.setattr(KangarooEngine, "decode_config", lambda self, *a, **k: real_config(self, *a, **{"policy": "tau", **k}))
    spec = importlib.util.spec_from_file_location("gpu_check_under_test", SCRIPT)
    gpu_check = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, gpu_check)  # its dataclasses look their module up there
    spec.loader.exec_module(gpu_check)
    out = tmp_path / "out.json"
    status = gpu_check.main(["--engine-dir", str(engine_dir),
                             "--backends", "onnxruntime-cpu", "--precisions", "fp32", "--prompts", "2",
                             "--max-new-tokens", "4", "--peer-prompts", "0", "--check-prompts", "1",
                             "--check-new-tokens", "4", "--json", str(out)])
    assert status == 1
    (row,) = json.loads(out.read_text())["rows"]
    assert row["equal"] is False and row["identical"] == 0 and len(row["divergences"]) == 2
    for i, d in enumerate(row["divergences"]):
        assert (d["prompt"], d["position"], d["ar_repeatable"]) == (i, 0, True)
        assert d["margin"] > 0 and d["kangaroo_token"] != d["ar_token"]
    deep = row["check"]["graphs"]["deep"]
    assert not row["check"]["ok"] and deep["equal"] < deep["rows"] and row["check"]["graphs"]["shallow"]["equal"] > 0
    assert "## Divergences" in (tmp_path / "report.md").read_text()
