"""Exact mode: a multi-row call's rows are bitwise those of one-row calls (runner/exactness.py, kangaroo-check).

The graphs' attention is slot-ordered and exact mode pads decoding steps to the row count a backend needs
(runner/decode.py), so greedy Kangaroo equals greedy AR by construction; the export records the check per backend
and precision; kangaroo-check catches a graph whose rows depend on the row count; the runner refuses exact mode
where it cannot hold.
"""

import dataclasses
import json
import subprocess

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from kangaroo_trt.contract.manifest import Manifest, sha256
from kangaroo_trt.errors import ConfigError
from kangaroo_trt.runner.api import KangarooEngine
from kangaroo_trt.runner.exactness import CHECK_PROMPTS, check_engine

from test_bad_inputs import cli_command, cli_env


@pytest.fixture(scope="module")
def engine_dir(tiny_engine):
    out, _ = tiny_engine("llama-gqa-tied", max_seq_len=64, prefill_chunk=8, precisions=("fp32", "fp16", "int8"),
                         tensorrt="off")
    return out


def _prompts(engine, count=2):
    return [engine.encode(text, chat=False) for text in CHECK_PROMPTS[:count]]


@pytest.mark.parametrize("backend,precision", [("onnxruntime-cpu", "fp32"), ("onnxruntime-cpu", "fp16"),
                                               ("onnxruntime-cpu", "int8"), ("torch-cpu", "fp32"),
                                               ("torch-cpu", "fp16")])
def test_exact_mode_rows_are_bitwise_invariant(engine_dir, backend, precision):
    with KangarooEngine.open(engine_dir, backend=backend, precision=precision, threads=1) as engine:
        report = check_engine(engine, _prompts(engine), new_tokens=24, fills_per_prompt=2)
    assert report.ok, report.table()
    assert all(t.rows > 0 and t.max_abs_diff == 0.0 for t in report.graphs.values())
    assert report.identical == report.prompts == 2


def test_export_records_the_check_per_backend_and_precision(engine_dir):
    manifest = Manifest.read(engine_dir)
    for precision in ("fp32", "fp16", "int8"):
        record = manifest.exact_check("onnxruntime-cpu", precision)
        assert record["ok"] and record["row_invariant"] and record["exact"], (precision, record)
        assert record["kangaroo_equals_ar"]["identical"] == record["kangaroo_equals_ar"]["prompts"] > 0
    assert manifest.exact_check("onnxruntime-cpu", "int8")["rows"] == 2  # MatMulNBits: one row takes another kernel
    assert manifest.exact_check("onnxruntime-cpu", "fp32")["rows"] == 1  # free: no padding
    assert manifest.exact_check("torch-cpu", "fp32") is None  # checked by kangaroo-check and the tests, not at export


def test_padding_is_what_makes_torch_exact(engine_dir):
    """torch-cpu's products change with the row count: without exact mode's padding the rows differ (the check
    sees it), with it they are equal; greedy output stays identical to AR with it."""
    with KangarooEngine.open(engine_dir, backend="torch-cpu", threads=1, exact=False) as engine:
        loose = check_engine(engine, _prompts(engine, 1), new_tokens=8, fills_per_prompt=1)
    assert loose.rows == 1 and not loose.row_invariant and not loose.ok
    assert "exact: NO" in loose.table()


def _plant_row_dependence(directory, precision="fp32", eps=1e-3):
    """Make the deep graph add eps * (its row count) to the logits: a one-row call and an n-row call then differ."""
    path = directory / "onnx" / precision / "deep.onnx"
    model = onnx.load(str(path))
    graph = model.graph
    logits = next(o for o in graph.output if o.name == "logits")
    producer = next(n for n in graph.node if "logits" in n.output)
    producer.output[list(producer.output).index("logits")] = "logits_before_plant"
    for node in graph.node:  # other readers of the logits (argmax) read the planted ones
        node.input[:] = ["logits_planted" if i == "logits" else i for i in node.input]
    graph.node.extend([
        helper.make_node("Shape", ["hidden"], ["plant_shape"]),
        helper.make_node("Gather", ["plant_shape", "plant_axis"], ["plant_rows"]),
        helper.make_node("Cast", ["plant_rows"], ["plant_rows_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["plant_rows_f", "plant_eps"], ["plant_offset"]),
        helper.make_node("Add", ["logits_before_plant", "plant_offset"], ["logits_planted"]),
        helper.make_node("Identity", ["logits_planted"], [logits.name]),
    ])
    graph.initializer.extend([helper.make_tensor("plant_axis", TensorProto.INT64, [], [1]),
                              helper.make_tensor("plant_eps", TensorProto.FLOAT, [], [eps])])
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + ".data", size_threshold=1024)
    manifest = Manifest.read(directory)
    files = dict(manifest.files)
    for rel in (f"onnx/{precision}/deep.onnx", f"onnx/{precision}/deep.onnx.data"):
        files[rel] = sha256(directory / rel)
    dataclasses.replace(manifest, files=files).write(directory)


@pytest.fixture(scope="module")
def planted(tiny_engine, tmp_path_factory):
    import shutil

    source, _ = tiny_engine("llama-gqa-tied", max_seq_len=64, prefill_chunk=8, tensorrt="off")
    out = tmp_path_factory.mktemp("planted") / "engine"
    shutil.copytree(source, out)
    _plant_row_dependence(out)
    return out


def test_check_catches_a_planted_row_dependence(planted):
    with KangarooEngine.open(planted, backend="onnxruntime-cpu", threads=1) as engine:
        report = check_engine(engine, _prompts(engine), new_tokens=8, fills_per_prompt=1)
    assert not report.ok and not report.graphs["deep"].ok
    assert report.graphs["shallow"].ok  # only the deep graph was planted
    assert 0 < report.graphs["deep"].max_abs_diff < 0.01


def test_kangaroo_check_cli_exit_status_and_json(engine_dir, planted):
    args = ["--backend", "onnxruntime-cpu", "--prompts", "1", "--fills", "1", "--new-tokens", "8", "--threads", "1"]
    good = subprocess.run(cli_command("check", "--engine-dir", str(engine_dir), *args), capture_output=True, text=True,
                          env=cli_env(), timeout=300)
    assert good.returncode == 0, good.stderr
    assert "| deep" in good.stdout and "exact: yes" in good.stdout
    bad = subprocess.run(cli_command("check", "--engine-dir", str(planted), *args, "--json"), capture_output=True,
                         text=True, env=cli_env(), timeout=300)
    assert bad.returncode == 1, bad.stderr
    report = json.loads(bad.stdout)
    assert report["ok"] is False and report["graphs"]["deep"]["equal"] < report["graphs"]["deep"]["rows"]


def test_exact_mode_is_refused_where_it_cannot_hold(tiny_engine, tmp_path):
    """Graphs built before exact mode (no record) and a failed recorded check: exact mode is refused in one line;
    --no-exact still runs."""
    import shutil

    source, _ = tiny_engine("llama-gqa-tied", max_seq_len=64, prefill_chunk=8, tensorrt="off")
    for name, change in (("old", lambda m: None),
                         ("failed", lambda m: {p: {b: {**r, "ok": False} for b, r in bs.items()}
                                               for p, bs in m.exactness.items()})):
        out = tmp_path / name
        shutil.copytree(source, out)
        manifest = Manifest.read(out)
        dataclasses.replace(manifest, exactness=change(manifest)).write(out)
        with pytest.raises(ConfigError, match="exact=False"):
            KangarooEngine.open(out, backend="onnxruntime-cpu")
        run = subprocess.run(cli_command("run", "--engine-dir", str(out), "--prompt", "hello", "--max-new-tokens", "4",
                                         "--backend", "onnxruntime-cpu"), capture_output=True, text=True, env=cli_env(),
                             timeout=300)
        assert run.returncode == 2 and run.stderr.startswith("error: ") and run.stderr.count("\n") == 1, run.stderr
        assert "--no-exact" in run.stderr
        ok = subprocess.run(cli_command("run", "--engine-dir", str(out), "--prompt", "hello", "--max-new-tokens", "4",
                                        "--backend", "onnxruntime-cpu", "--no-exact"), capture_output=True, text=True,
                            env=cli_env(), timeout=300)
        assert ok.returncode == 0, ok.stderr


def test_padded_rows_never_reach_the_cache_or_the_output(engine_dir):
    """A padded call writes only its real rows: the slots past them keep what they held."""
    with KangarooEngine.open(engine_dir, backend="torch-cpu", threads=1) as engine:
        decoder = engine.decoder
        assert decoder.rows == engine.manifest.max_verify
        ids = _prompts(engine, 1)[0]
        decoder.prefill(ids[:6], with_adapter=False, gamma=1)
        deep = decoder.deep
        before = {k: np.array(v[:, :, 6:]) for k, v in deep.caches.items()}
        hidden = decoder._shallow(ids[5:7], 5)
        targets, logits = decoder._deep(hidden, 5)
        assert hidden.shape[1] == 2 and targets.shape[1] == 2 and logits.shape[0] == 2
        for k, v in deep.caches.items():
            assert np.array_equal(np.array(v[:, :, 7:]), before[k][:, :, 1:]), k

