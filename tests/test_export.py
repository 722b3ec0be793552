"""Export: every graph matches PyTorch, the directory describes itself and is written atomically."""

import json
import shutil

import onnx
import pytest

from conftest import TINY_CONFIGS
from kangaroo_trt.config import ExportConfig
from kangaroo_trt.errors import ConfigError, EngineDirError
from kangaroo_trt import build as build_module
from kangaroo_trt.build import build_engine_dir
from kangaroo_trt.contract.manifest import Manifest
from kangaroo_trt.export.validate import TOLERANCES
from kangaroo_trt.runner.api import KangarooEngine


def _build(tiny_model, name, out, **kw):
    return build_engine_dir(str(tiny_model(name)), out, ExportConfig(max_seq_len=96, **kw),
                            allow_random_adapter=True, log=lambda _: None)


@pytest.mark.parametrize("name", list(TINY_CONFIGS))
def test_export_parity_and_manifest(tiny_model, tmp_path, name):
    out = tmp_path / "engine"
    manifest = _build(tiny_model, name, out, precisions=("fp32", "fp16"))
    assert Manifest.read(out).to_dict() == manifest.to_dict()
    manifest.verify_files(out)
    for precision, graphs in manifest.graphs.items():
        atol, _ = TOLERANCES[precision]
        for graph, entry in graphs.items():
            model = onnx.load(out / entry.file, load_external_data=False)
            assert [i.name for i in model.graph.input] == entry.spec.input_names
            assert [o.name for o in model.graph.output] == entry.spec.output_names
            assert {op.domain for op in model.opset_import} <= {"", "ai.onnx"}, "no runtime-specific contrib ops"
            assert any(n.name.startswith(f"/{graph}/layers.") for n in model.graph.node), "readable node names"
            assert entry.parity, f"{graph}/{precision}: parity not recorded"
    deep_nodes = {n.name for n in onnx.load(out / manifest.graphs["fp32"]["deep"].file, load_external_data=False).graph.node}
    assert any(n.startswith("/deep/layers.3/self_attn/") for n in deep_nodes), "deep layers keep absolute indices"
    assert manifest.eos_token_ids and (out / "tokenizer" / "tokenizer.json").is_file()


def test_heads_run_only_on_the_rows_a_step_reads(tiny_engine, tiny_model):
    """A 20-token prefill chunk: the deep graph's head covers the last max_verify rows, the adapter's the last one,
    and those rows equal the all-rows PyTorch graphs' (the head cap drops work, never changes a value)."""
    import numpy as np
    import torch

    from kangaroo_trt.model.weights import build_modules, load_adapter
    from kangaroo_trt.runner.backend import EngineRef
    from kangaroo_trt.runner.backends import open_backend

    out, _ = tiny_engine("llama-gqa-tied", max_seq_len=64)
    manifest = Manifest.read(out)
    ref = EngineRef(out, manifest, "fp32")
    assert ref.graphs()["deep"][1].head_rows == manifest.max_verify == 8 and ref.graphs()["adapter"][1].head_rows == 1
    backend = open_backend("onnxruntime-cpu", ref, threads=1)
    full = build_modules(tiny_model("llama-gqa-tied"), load_adapter(out / manifest.adapter_dir), manifest.exit_layer)
    rng = np.random.default_rng(0)
    feeds = {"hidden": rng.standard_normal((1, 20, manifest.model.hidden_size)).astype(np.float32),
             "position_ids": np.arange(20)[None]}
    deep, adapter = backend.graph("deep").run(feeds, 0), backend.graph("adapter").run(feeds, 0)
    assert deep["logits"].shape == (1, 8, manifest.model.vocab_size) and adapter["draft_ids"].shape == (1, 1)
    args = lambda graph: [torch.from_numpy(feeds["hidden"]), torch.from_numpy(feeds["position_ids"]),  # noqa: E731
                          *[torch.zeros(c.shape) for c in ref.graphs()[graph][1].caches for _ in (0, 1)]]
    with torch.no_grad():
        logits = full.deep(*args("deep"))[0].numpy()
        draft_logits, _ = full.adapter.logits(*args("adapter"))
    assert logits.shape[1] == 20
    np.testing.assert_allclose(deep["logits"], logits[:, -8:], atol=1e-4, rtol=1e-4)
    assert int(adapter["draft_ids"][0, 0]) == int(draft_logits[0, -1].argmax())


def test_fp16_engine_runs_losslessly_against_itself(tiny_model, tmp_path):
    out = tmp_path / "engine"
    _build(tiny_model, "llama-gqa-tied", out, precisions=("fp16",))
    engine = KangarooEngine.open(out)
    ar = engine.generate(prompt_ids=[5, 9, 11, 40], config=engine.decode_config(mode="ar", max_new_tokens=16))
    kg = engine.generate(prompt_ids=[5, 9, 11, 40], config=engine.decode_config(mode="kangaroo", gamma=4, tau=0.0, max_new_tokens=16))
    assert kg.stats.precision == "fp16"
    assert kg.output_ids == ar.output_ids


def test_existing_output_is_never_lost(tiny_model, tmp_path):
    user_dir = tmp_path / "mine"
    user_dir.mkdir()
    (user_dir / "notes.txt").write_text("precious")
    with pytest.raises(ConfigError, match="already exists"):
        _build(tiny_model, "llama-gqa-tied", user_dir)
    with pytest.raises(ConfigError, match="not an engine directory"):
        build_engine_dir(str(tiny_model("llama-gqa-tied")), user_dir, ExportConfig(max_seq_len=96),
                         allow_random_adapter=True, force=True, log=lambda _: None)
    assert (user_dir / "notes.txt").read_text() == "precious"


def test_failed_build_leaves_nothing_behind(tiny_model, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("injected export failure")

    monkeypatch.setattr(build_module, "check_parity", broken)
    with pytest.raises(RuntimeError, match="injected"):
        _build(tiny_model, "llama-gqa-tied", tmp_path / "engine")
    assert list(tmp_path.iterdir()) == [], "no half-written engine directory or temp dir may remain"


def test_force_replaces_an_engine_directory(tiny_model, tmp_path):
    out = tmp_path / "engine"
    _build(tiny_model, "llama-gqa-tied", out)
    manifest = build_engine_dir(str(tiny_model("llama-gqa-tied")), out, ExportConfig(max_seq_len=64),
                                allow_random_adapter=True, force=True, log=lambda _: None)
    assert Manifest.read(out).max_seq_len == 64 == manifest.max_seq_len
    assert [p.name for p in tmp_path.iterdir()] == ["engine"]


def test_corrupt_or_foreign_engine_dirs_are_refused(tiny_model, tmp_path):
    out = tmp_path / "engine"
    _build(tiny_model, "llama-gqa-tied", out)
    broken = tmp_path / "corrupt"
    shutil.copytree(out, broken)
    with open(broken / "onnx/fp32/deep.onnx.data", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(EngineDirError, match="does not match its recorded sha256"):
        KangarooEngine.open(broken)

    old = tmp_path / "old"
    shutil.copytree(out, old)
    d = json.loads((old / "manifest.json").read_text())
    d["schema_version"] = 0
    (old / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(EngineDirError, match="schema version 0"):
        KangarooEngine.open(old)

    # schemas 1 and 2 wrote each graph's "parity" as "parity_max_abs_error": still read
    old_graphs = {p: {g: {("parity_max_abs_error" if k == "parity" else k): v for k, v in e.items()} for g, e in gs.items()}
                  for p, gs in d["graphs"].items()}
    (old / "manifest.json").write_text(json.dumps({**d, "schema_version": 2, "graphs": old_graphs}))
    assert Manifest.read(old) == Manifest.read(out)

    # schema 1 (kangaroo-trt before typed backend fields) kept source_model / adapter_dir in "info": still read
    v1 = {k: v for k, v in d.items() if k not in ("source_model", "adapter_dir", "tensorrt")}
    v1.update(schema_version=1, graphs=old_graphs,
              info={**d["info"], "source_model": d["source_model"], "adapter_dir": d["adapter_dir"]})
    (old / "manifest.json").write_text(json.dumps(v1))
    lifted = Manifest.read(old)
    assert lifted == Manifest.read(out) and lifted.tensorrt is None
    with KangarooEngine.open(old) as engine:
        assert engine.generate("a", config=engine.decode_config(max_new_tokens=3)).output_ids

    (old / "manifest.json").write_text("{not json")
    with pytest.raises(EngineDirError, match="not valid JSON"):
        KangarooEngine.open(old)
    with pytest.raises(EngineDirError, match="does not exist"):
        KangarooEngine.open(tmp_path / "nowhere")
    with pytest.raises(EngineDirError, match="not an engine directory"):
        KangarooEngine.open(tiny_model("llama-gqa-tied"))
    (out / "onnx/fp32/adapter.onnx").unlink()
    with pytest.raises(EngineDirError, match="is missing"):
        KangarooEngine.open(out)
