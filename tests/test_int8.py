"""INT8 Q/DQ graphs: how they are quantized, the build-time quality report, and Kangaroo == AR on them."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from kangaroo_trt.contract.manifest import GRAPHS, Manifest
from kangaroo_trt.runner.api import KangarooEngine

PROMPTS = ["the quick brown fox", "kangaroo decoding drafts with shallow layers", "def add(a, b):"]


@pytest.fixture(scope="module")
def int8_engine(tiny_engine):
    return tiny_engine("llama-gqa-tied", max_seq_len=96, prefill_chunk=16, precisions=("fp32", "int8"), tensorrt="off")


def _load(path):
    return onnx.load(str(path))


def test_manifest_lists_int8_graphs_and_report(int8_engine):
    out, logs = int8_engine
    manifest = Manifest.read(out)
    assert manifest.precisions == ["fp32", "int8"]
    manifest.verify_files(out)
    report = json.loads((out / "onnx" / "int8" / "quality.json").read_text())
    assert report == {k: v for k, v in manifest.info["int8"].items() if k != "report"}
    for key in ("shallow", "adapter", "deep", "all_target", "all_draft"):
        assert 0.0 <= report["agreement"][key] <= 1.0
    assert report["agreement"]["tokens"] > 50
    assert report["lossless"] == {"fp32": True, "int8": True}
    assert set(report["acceptance"]) == set(report["ar_ms_per_token"]) == {"fp32", "int8"}
    for g in GRAPHS:
        assert manifest.graphs["int8"][g].parity["top1_agreement"] == report["agreement"][g]
        # int8 graphs keep the fp32 I/O contract: the runner's buffers do not change.
        assert manifest.graphs["int8"][g].spec.inputs == manifest.graphs["fp32"][g].spec.inputs
    assert any(line.startswith("int8 top-1 agreement") for line in logs)


def test_only_linear_projections_are_quantized_symmetric_per_channel(int8_engine):
    """shallow / adapter: W8A8 (per-tensor activations); deep: weight-only, no activation Q/DQ at all."""
    out, _ = int8_engine
    for g in GRAPHS:
        model = _load(out / "onnx" / "int8" / f"{g}.onnx")
        init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        producers = {o: n for n in model.graph.node for o in n.output}
        matmuls = [n for n in model.graph.node if n.op_type == "MatMul"]
        quantized = [n for n in matmuls if n.input[1] in producers and producers[n.input[1]].op_type == "DequantizeLinear"]
        # shallow: 2 layers x (q,k,v,o,gate,up); adapter: q,k,v,o; deep: 2 layers x all seven, weight-only
        expected = {"shallow": 2 * 6, "adapter": 4, "deep": 2 * 7}[g]
        assert len(quantized) == expected, g
        if g == "deep":
            assert not any(n.op_type == "QuantizeLinear" for n in model.graph.node)
        for node in quantized:
            assert "lm_head" not in node.name  # kept fp32 (calib/quantize.py)
            dq = producers[node.input[1]]
            weight, scale, zero = (init[i] for i in dq.input)
            assert weight.dtype == np.int8 and zero.dtype == np.int8 and not zero.any()
            assert scale.shape == (weight.shape[1],)  # one scale per output channel
            if g == "deep":
                continue
            assert "down_proj" not in node.name  # W8A8 keeps it fp32
            act = producers[node.input[0]]
            assert act.op_type == "DequantizeLinear" and init[act.input[1]].size == 1  # per-tensor activations
            assert not init[act.input[2]].any()  # symmetric
        # attention's activation x activation MatMuls stay fp32
        assert len(matmuls) > len(quantized)


def test_kangaroo_equals_ar_on_int8(int8_engine):
    out, _ = int8_engine
    engine = KangarooEngine.open(out, precision="int8")
    assert engine.precision == "int8"
    for prompt in PROMPTS:
        ar = engine.generate(prompt, config=engine.decode_config(mode="ar", max_new_tokens=24))
        for gamma, tau in ((1, 0.0), (4, 0.0), (6, 0.6)):
            kangaroo = engine.generate(prompt, config=engine.decode_config(mode="kangaroo", gamma=gamma, tau=tau, max_new_tokens=24))
            assert kangaroo.output_ids == ar.output_ids, (prompt, gamma, tau)
        assert ar.stats.precision == "int8"


def test_int8_differs_from_fp32_but_stays_close(int8_engine):
    """Sanity: the int8 graphs really are different graphs, and their output is the fp32 one within INT8 noise."""
    out, _ = int8_engine
    fp32, int8 = KangarooEngine.open(out, precision="fp32"), KangarooEngine.open(out, precision="int8")
    feeds = {"input_ids": np.array([[5, 17, 42, 7]], np.int64), "position_ids": np.arange(4)[None]}
    a = fp32.backend.graph("shallow").run(feeds, 0)["hidden"].copy()
    b = int8.backend.graph("shallow").run(feeds, 0)["hidden"].copy()
    err = float(np.abs(a - b).max())
    assert 0 < err < 0.25 * float(np.abs(a).max())


def test_cli_int8_without_fp32_uses_a_scratch_export(tiny_model, tmp_path):
    from click.testing import CliRunner

    from kangaroo_trt.cli.export_cli import main

    out = tmp_path / "engine"
    result = CliRunner().invoke(main, ["build", "--model", str(tiny_model("qwen2-bias-gqa")), "--out", str(out),
                                       "--random-adapter", "--max-seq-len", "64", "--precision", "int8", "--tensorrt", "off"])
    assert result.exit_code == 0, result.output
    assert "int8 top-1 agreement" in result.output
    manifest = Manifest.read(out)
    assert manifest.precisions == ["int8"]
    assert not (out / "onnx" / "fp32").exists() and not any(p.name.startswith(".") for p in out.rglob("*"))
    with KangarooEngine.open(out) as engine:
        result = engine.generate("hello world", config=engine.decode_config(max_new_tokens=12))
    assert result.stats.precision == "int8" and result.output_ids


def test_int8_deep_rows_do_not_depend_on_n(int8_engine):
    """Kangaroo's verify pass computes position p among n > 1 rows; AR computes it alone. The int8 deep graph
    must give the same row either way, up to fp32 rounding (W8A8 or ORT's int8-activation MatMulNBits did not)."""
    from kangaroo_trt.runner.backend import EngineRef
    from kangaroo_trt.runner.backends import open_backend
    from kangaroo_trt.runtimes import ort_session

    out, _ = int8_engine
    manifest = Manifest.read(out)
    engine = EngineRef(out, manifest, "int8")
    options = ort_session(engine.graphs()["deep"][0]).get_session_options()
    assert options.get_session_config_entry("session.qdq_matmulnbits_accuracy_level") == "1"
    deep = open_backend("onnxruntime-cpu", engine, threads=1).graph("deep")
    hidden = np.random.default_rng(0).standard_normal((1, 20, 64)).astype(np.float32)
    deep.run({"hidden": hidden[:, :10], "position_ids": np.arange(10)[None]}, 0)
    alone = deep.run({"hidden": hidden[:, 10:11], "position_ids": np.arange(10, 11)[None]}, 10)["logits"][0, 0].copy()
    for n in (2, 5):
        among = deep.run({"hidden": hidden[:, 10:10 + n], "position_ids": np.arange(10, 10 + n)[None]}, 10)["logits"][0, 0]
        np.testing.assert_allclose(among, alone, atol=1e-4, rtol=1e-4)
