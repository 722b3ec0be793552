"""Reduced precisions: fp16 graphs are judged against the fp32 modules, with the PyTorch fp16 modules' own error
as the yardstick (kangaroo_trt/export/validate.py); the real model's fp16 export passes that check. bf16 has no
ONNX graphs: only the PyTorch backends run it, the manifest says so, and other backends refuse it in one line."""

import copy
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from kangaroo_trt.config import ExportConfig
from kangaroo_trt.contract.manifest import Manifest
from kangaroo_trt.errors import BackendError, ConfigError
from kangaroo_trt.contract.spec import graph_specs
from kangaroo_trt.export.onnx_export import export_graph
from kangaroo_trt.export.validate import ParityError, check_parity
from kangaroo_trt.model.weights import build_modules


def _deep_fp16(model_dir, tmp_path, export: ExportConfig, wrong_layer: int | None = None):
    """(fp32 modules, fp16 modules, the deep graph's fp16 spec, its ONNX path); ``wrong_layer``: the fp16 modules
    (and so the ONNX) have that layer's MLP output doubled, a graph that is not the model."""
    modules = build_modules(model_dir, None, export.exit_layer, verify_rows=export.max_verify)
    typed = modules.to_dtype(torch.float16)
    if wrong_layer is not None:
        typed = copy.deepcopy(typed)
        typed.deep.layers[str(wrong_layer)].mlp.down_proj.weight.data *= 2
    spec = graph_specs(modules.model_spec, modules.adapter_spec, export, "fp16")["deep"]
    path = tmp_path / "deep.onnx"
    export_graph(typed.deep, spec, path, export.opset, modules.model_spec.vocab_size)
    return modules, typed, spec, path


def test_fp16_parity_is_measured_against_fp32(tiny_model, tmp_path):
    export = ExportConfig(max_seq_len=32, precisions=("fp16",))
    modules, typed, spec, path = _deep_fp16(tiny_model("llama-gqa-tied"), tmp_path, export)
    vocab = modules.model_spec.vocab_size
    parity = check_parity(typed.deep, spec, path, "fp16", vocab, exact=modules.deep)
    errors = parity.max_abs_error
    for name in ("logits", "present_key.3", "present_value.3"):
        assert 0 < errors[f"{name}:torch_fp16"] < 0.05, "the yardstick is fp16 rounding: small, not zero"
        assert errors[name] > 0
    assert "onnx - fp32" in parity.summary() and "torch fp16" in parity.summary()


def test_fp16_parity_refuses_a_graph_that_is_not_the_model(tiny_model, tmp_path):
    """The fp32 reference catches an ONNX graph that differs from the model, and the yardstick cannot be inflated:
    fp16 modules that are not a rounding of the fp32 ones are refused too (comparing the ONNX with the modules it
    was exported from, as the check did before, passes this wrong graph)."""
    export = ExportConfig(max_seq_len=32, precisions=("fp16",))
    modules, typed, spec, path = _deep_fp16(tiny_model("llama-gqa-tied"), tmp_path, export, wrong_layer=3)
    vocab = modules.model_spec.vocab_size
    right = modules.to_dtype(torch.float16)
    with pytest.raises(ParityError, match=r"max \|onnx - fp32 \(torch fp16: .*\)\| = .* > "):
        check_parity(right.deep, spec, path, "fp16", vocab, exact=modules.deep)
    with pytest.raises(ParityError, match="fp16 cannot hold this model's activations"):
        check_parity(typed.deep, spec, path, "fp16", vocab, exact=modules.deep)
    check_parity(typed.deep, spec, path, "fp16", vocab)  # the old check: onnx vs its own module


UNSEEN_CHAT = ("What should I pack for a weekend of hiking in the rain?",
               "Write a limerick about a forgetful robot.",
               "How do I convert Celsius to Fahrenheit in my head?")


@pytest.mark.slow
def test_smollm2_fp16_export_passes_parity_and_is_exact(tmp_path):
    """The real model's fp16 export: its deep graph failed the old check (|onnx - torch fp16| 1.05 > 0.58); it is
    closer to fp32 than PyTorch's fp16 modules are (ONNX Runtime's CPU provider runs most fp16 ops in fp32). In
    exact mode its rows are bitwise row-invariant (the export's check) and Kangaroo equals AR on unseen chat prompts."""
    from kangaroo_trt.build import build_engine_dir
    from kangaroo_trt.runner.api import KangarooEngine

    manifest = build_engine_dir("smollm2-135m", tmp_path / "engine", ExportConfig(max_seq_len=160, precisions=("fp16",),
                                tensorrt="off"), log=lambda _: None)
    record = manifest.exact_check("onnxruntime-cpu", "fp16")
    assert record["ok"] and record["row_invariant"], record
    with KangarooEngine.open(tmp_path / "engine", backend="onnxruntime-cpu") as engine:
        config = engine.decode_config(max_new_tokens=48)
        for prompt in UNSEEN_CHAT:
            ar = engine.generate(prompt, chat=True, config=replace(config, mode="ar"))
            kangaroo = engine.generate(prompt, chat=True, config=config)
            assert kangaroo.output_ids == ar.output_ids, prompt
    for graph, entry in manifest.graphs["fp16"].items():
        floats = [k for k in entry.parity if ":" not in k and not k.endswith("_ids")]
        assert floats and all(np.isfinite(entry.parity[k]) for k in floats), graph
    deep = manifest.graphs["fp16"]["deep"].parity
    assert deep["logits"] <= deep["logits:torch_fp16"]


@pytest.fixture(scope="module")
def bf16_engine(tiny_engine):
    return tiny_engine("llama-gqa-tied", max_seq_len=64, prefill_chunk=8, precisions=("fp32", "bf16"), tensorrt="off")


def test_bf16_engine_holds_no_onnx_and_says_who_runs_it(bf16_engine):
    out, logs = bf16_engine
    manifest = Manifest.read(out)
    assert Manifest.read(out).to_dict() == manifest.to_dict()
    assert manifest.precisions == ["fp32", "bf16"] and manifest.onnx_precisions == ["fp32"]
    assert all(e.file is None for e in manifest.graphs["bf16"].values()) and not (out / "onnx" / "bf16").exists()
    assert manifest.backends["bf16"] == ("torch-cuda", "torch-cpu")
    assert set(manifest.backends["fp32"]) == {"tensorrt", "onnxruntime-cuda", "torch-cuda", "onnxruntime-cpu", "torch-cpu"}
    deep = manifest.graphs["bf16"]["deep"]
    assert deep.spec.caches[0].dtype == "bfloat16" and deep.spec.inputs[0].dtype == "float32"  # hidden crosses as fp32
    assert 0 < deep.parity["logits:torch_bf16"] < float("inf")
    assert any("deep/bf16: no ONNX graph" in line for line in logs)


def test_torch_cpu_runs_bf16_losslessly(bf16_engine):
    from kangaroo_trt.runner.api import KangarooEngine

    engine = KangarooEngine.open(bf16_engine[0], backend="torch-cpu", precision="bf16", threads=1)
    assert engine.backend.graph("deep").caches["past_key.2"].dtype == torch.bfloat16
    ar = engine.generate(prompt_ids=[5, 9, 11, 40], config=engine.decode_config(mode="ar", max_new_tokens=12))
    kg = engine.generate(prompt_ids=[5, 9, 11, 40],
                         config=engine.decode_config(gamma=3, tau=0.0, max_new_tokens=12))
    assert kg.output_ids == ar.output_ids and len(ar.output_ids) == 12
    assert kg.stats.precision == "bf16" and kg.stats.backend == "torch-cpu"


def test_a_backend_that_cannot_run_bf16_says_which_can(bf16_engine):
    from kangaroo_trt.runner.backend import EngineRef
    from kangaroo_trt.runner.backends import open_backend

    out, _ = bf16_engine
    ref = EngineRef(out, Manifest.read(out), "bf16")
    with pytest.raises(BackendError, match=r"backend onnxruntime-cpu cannot run bf16 .*runs on torch-cuda, torch-cpu: "
                                           r"pass --backend torch-cpu"):
        open_backend("onnxruntime-cpu", ref)
    with pytest.raises(BackendError, match="onnxruntime-cpu: backend onnxruntime-cpu cannot run bf16"):
        open_backend("auto", ref)
    proc = subprocess.run([sys.executable, "-m", "kangaroo_trt.cli.run_cli", "--engine-dir", str(out), "--precision",
                           "bf16", "--prompt", "the quick", "--max-new-tokens", "2"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1 and "--backend torch-cpu" in proc.stderr


def test_tensorrt_plans_are_not_asked_of_bf16(bf16_engine):
    from kangaroo_trt.engines.builder import add_plans

    with pytest.raises(ConfigError, match="bf16 has no ONNX graphs"):
        add_plans(bf16_engine[0], ("bf16",), log=lambda _: None)
