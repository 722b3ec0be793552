"""TensorRT without TensorRT: every exported graph passes the parser's operator table, profiles cover every
call shape, stale plans are refused, and a missing TensorRT is one line that says what to install."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from kangaroo_trt.build import build_engine_dir
from kangaroo_trt.config import ExportConfig
from kangaroo_trt.contract.manifest import GRAPHS, Manifest, PlanEntry, TensorRTRecord, sha256
from kangaroo_trt.contract.plans import BUILD_LOG, TIMING_CACHE, fresh_plan, plan_file
from kangaroo_trt.contract.profiles import pick, profiles
from kangaroo_trt.engines import builder
from kangaroo_trt.engines.onnx_support import MAX_OPSET, check_onnx, problems
from kangaroo_trt.errors import BackendError, EngineDirError
from kangaroo_trt.runtimes import TENSORRT_HINT, tensorrt_available

tensorrt_missing = pytest.mark.skipif(tensorrt_available(), reason="TensorRT is installed here")


@pytest.fixture(scope="module")
def engine(tiny_engine):
    return tiny_engine("mistral-gqa", max_seq_len=64, prefill_chunk=16, precisions=("fp32", "fp16", "int8"))


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
@pytest.mark.parametrize("graph", GRAPHS)
def test_graph_uses_only_ops_tensorrt_parses(engine, precision, graph):
    out, _ = engine
    path = out / Manifest.read(out).graphs[precision][graph].file
    assert check_onnx(path) == []
    ops = {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}
    assert ("DequantizeLinear" in ops) == (precision == "int8")


def test_checker_rejects_what_tensorrt_would():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    unique = helper.make_model(helper.make_graph([helper.make_node("Unique", ["x"], ["y"], name="u")], "g", [x], [y]),
                               opset_imports=[helper.make_opsetid("", 17)])
    assert any("Unique is not supported" in p for p in problems(unique))
    contrib = helper.make_model(helper.make_graph([helper.make_node("FastGelu", ["x"], ["y"], domain="com.microsoft")],
                                                  "g", [x], [y]),
                                opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    assert any("custom-domain" in p for p in problems(contrib))
    zp = helper.make_tensor("zp", TensorProto.INT8, [], [3])
    scale = helper.make_tensor("s", TensorProto.FLOAT, [], [0.1])
    q = helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], name="q")
    dq = helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"], name="dq")
    asym = helper.make_model(helper.make_graph([q, dq], "g", [x], [y], initializer=[zp, scale]),
                             opset_imports=[helper.make_opsetid("", MAX_OPSET + 1)])
    found = problems(asym)
    assert any("zero point" in p for p in found) and any("opset" in p for p in found)


def test_profiles_cover_every_call_the_loop_makes():
    step, prefill = profiles(max_verify=8, prefill_chunk=128)
    assert pick((step, prefill), 1) == 0 and pick((step, prefill), 2) == 0 and pick((step, prefill), 8) == 0
    assert pick((step, prefill), 9) == 1 and pick((step, prefill), 128) == 1
    with pytest.raises(ValueError):
        pick((step, prefill), 129)


def test_profile_shapes_come_from_the_graph_spec(engine):
    out, _ = engine
    spec = Manifest.read(out).graphs["fp16"]["deep"].spec
    step = profiles(8, 16)[0]
    shapes = step.shapes(spec)
    assert shapes["hidden"] == ((1, 1, 64), (1, 1, 64), (1, 8, 64))
    cache = spec.caches[0]
    assert shapes[cache.past_key] == (cache.shape,) * 3  # static: one shape


def test_polygraphy_plan_loader_has_our_profiles_pools_and_cache(engine, tmp_path):
    """The loader chain the plan builder hands to Polygraphy (built without TensorRT; running it needs TensorRT)."""
    out, _ = engine
    manifest = Manifest.read(out)
    entry = manifest.graphs["fp16"]["deep"]
    export = builder.manifest_export(manifest)
    cache = tmp_path / "timing.cache"
    loader = builder.plan_loader(out / entry.file, entry.spec, export, cache, {"workspace": 123}, strongly_typed=True)
    config = loader._config
    expected = [p.shapes(entry.spec) for p in profiles(manifest.max_verify, manifest.prefill_chunk)]
    assert [{name: tuple(map(tuple, shapes)) for name, shapes in profile.items()} for profile in config.profiles] == expected
    assert config.memory_pool_limits == {"workspace": 123}
    assert config.timing_cache_path is None and loader.timing_cache_path == str(cache)  # no cache yet: start empty
    assert loader._network.path == str(out / entry.file) and loader._network.strongly_typed
    cache.write_bytes(b"cache")
    again = builder.plan_loader(out / entry.file, entry.spec, export, cache, {}, strongly_typed=False)
    assert again._config.timing_cache_path == str(cache) and not again._network.strongly_typed


@tensorrt_missing
def test_build_without_tensorrt_says_what_to_install(engine, tiny_model, tmp_path):
    _, logs = engine
    notes = [line for line in logs if "TensorRT is not installed" in line]
    assert len(notes) == 1 and notes[0].startswith(f"note: {TENSORRT_HINT}")
    assert "\n" not in TENSORRT_HINT and "pip install" in TENSORRT_HINT
    with pytest.raises(BackendError, match="pip install"):
        build_engine_dir(str(tiny_model("mistral-gqa")), tmp_path / "e", ExportConfig(max_seq_len=32, tensorrt="require"),
                         allow_random_adapter=True, log=lambda _: None)
    assert not (tmp_path / "e").exists()  # nothing half-written


@tensorrt_missing
def test_engines_command_without_tensorrt_is_one_line(engine):
    from kangaroo_trt.cli.export_cli import main

    out, _ = engine
    before = (out / "manifest.json").read_text()
    result = CliRunner().invoke(main, ["engines", "--engine-dir", str(out), "--precision", "fp16,int8"])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and "pip install" in result.output
    assert (out / "manifest.json").read_text() == before


def _with_plan(out, manifest, tmp_path, onnx_sha=None):
    """A copy of the manifest that records a (fake) plan for deep/fp16."""
    rel = plan_file("fp16", "deep")
    plan = tmp_path / "engine" / rel
    onnx_rel = manifest.graphs["fp16"]["deep"].file
    entry = PlanEntry(rel, onnx_rel, onnx_sha or manifest.files[onnx_rel])
    record = TensorRTRecord({"tensorrt": "11.0"}, profiles(8, 16), 1 << 30, TIMING_CACHE, BUILD_LOG, {"fp16": {"deep": entry}})
    return dataclasses.replace(manifest, tensorrt=record), plan


def test_stale_or_missing_plans_are_refused(engine, tmp_path):
    out, _ = engine
    manifest = Manifest.read(out)
    with pytest.raises(EngineDirError, match="no TensorRT plan.*kangaroo-export engines"):
        fresh_plan(out, manifest, "fp16", "deep")
    stale, _ = _with_plan(out, manifest, tmp_path, onnx_sha="0" * 64)
    with pytest.raises(EngineDirError, match="stale plan"):
        fresh_plan(out, stale, "fp16", "deep")
    current, _ = _with_plan(out, manifest, tmp_path)
    (tmp_path / "written").mkdir()
    current.write(tmp_path / "written")
    assert Manifest.read(tmp_path / "written").tensorrt == current.tensorrt  # the typed record round-trips
    with pytest.raises(EngineDirError, match="missing"):
        fresh_plan(out, current, "fp16", "deep")
    plan = out / plan_file("fp16", "deep")
    plan.parent.mkdir(parents=True)
    try:
        plan.write_bytes(b"not really a plan")
        with pytest.raises(EngineDirError, match="no recorded sha256"):  # every file a backend opens is checked
            fresh_plan(out, current, "fp16", "deep")
        checked = dataclasses.replace(current, files={**current.files, plan_file("fp16", "deep"): sha256(plan)})
        assert fresh_plan(out, checked, "fp16", "deep") == plan.read_bytes()  # the bytes whose digest was checked
        recorded = dataclasses.replace(current, files={**current.files, plan_file("fp16", "deep"): "f" * 64})
        with pytest.raises(EngineDirError, match="sha256"):
            fresh_plan(out, recorded, "fp16", "deep")
    finally:
        plan.unlink()
        plan.parent.rmdir()
        plan.parent.parent.rmdir()
    assert sha256(out / manifest.graphs["fp16"]["deep"].file) == manifest.files[manifest.graphs["fp16"]["deep"].file]


def test_int8_graph_scales_are_finite(engine):
    """A degenerate calibration (zero range) would give TensorRT a zero or infinite scale."""
    out, _ = engine
    model = onnx.load(str(out / "onnx" / "int8" / "deep.onnx"))
    init = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            scale = init[node.input[1]]
            assert np.all(np.isfinite(scale)) and np.all(scale > 0), node.name
    json.dumps(Manifest.read(out).info["int8"])  # the report is plain JSON
