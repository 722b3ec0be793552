"""Issue 9, in process: data loss, fenced engine directories, integrity, and inputs that gave wrong output or a
traceback. The command-line side (exit status, one line on stderr, nothing left behind) is tests/test_bad_inputs.py."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from kangaroo_trt.config import DecodeConfig, ExportConfig
from kangaroo_trt.errors import EngineDirError, InputError, KangarooError
from kangaroo_trt.build import build_engine_dir
from kangaroo_trt.contract.manifest import MANIFEST, Manifest
from kangaroo_trt.runner.api import KangarooEngine

MODEL = "llama-gqa-tied"


@pytest.fixture(scope="module")
def engine_dir(tiny_engine):
    return tiny_engine(MODEL, max_seq_len=64)[0]


@pytest.fixture
def engine_copy(engine_dir, tmp_path):
    """A copy of the shared engine directory that a test may edit."""
    return Path(shutil.copytree(engine_dir, tmp_path / "engine"))


def _edit_manifest(directory: Path, edit) -> None:
    d = json.loads((directory / MANIFEST).read_text())
    edit(d)
    (directory / MANIFEST).write_text(json.dumps(d))


def _leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


# -- 1. --force replaces only our engine directories, and only when they hold nothing else --------------------------

def test_force_refuses_a_directory_with_a_foreign_manifest(tiny_model, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / MANIFEST).write_text("{}")
    (site / "notes.txt").write_text("keep")
    with pytest.raises(KangarooError, match="not an engine directory"):
        build_engine_dir(str(tiny_model(MODEL)), site, ExportConfig(max_seq_len=64), allow_random_adapter=True,
                         force=True, log=lambda _: None)
    assert (site / "notes.txt").read_text() == "keep"


def test_force_refuses_an_engine_directory_holding_other_files(engine_copy, tiny_model):
    (engine_copy / "notes.txt").write_text("keep")
    with pytest.raises(KangarooError, match="notes.txt"):
        build_engine_dir(str(tiny_model(MODEL)), engine_copy, ExportConfig(max_seq_len=64), allow_random_adapter=True,
                         force=True, log=lambda _: None)
    assert (engine_copy / "notes.txt").read_text() == "keep"


def test_force_refuses_a_symlink(engine_dir, tiny_model, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(engine_dir, target_is_directory=True)
    with pytest.raises(KangarooError, match="symbolic link"):
        build_engine_dir(str(tiny_model(MODEL)), link, ExportConfig(max_seq_len=64), allow_random_adapter=True,
                         force=True, log=lambda _: None)
    assert link.is_symlink() and (engine_dir / MANIFEST).is_file()


def test_out_dot_inside_an_engine_directory_is_refused(engine_copy, tiny_model, monkeypatch):
    monkeypatch.chdir(engine_copy)
    with pytest.raises(KangarooError, match="current directory"):
        build_engine_dir(str(tiny_model(MODEL)), Path("."), ExportConfig(max_seq_len=64), allow_random_adapter=True,
                         force=True, log=lambda _: None)
    assert (engine_copy / MANIFEST).is_file()


# -- 2, 3. the final swap re-checks its target; stale temporary directories are swept --------------------------------

def test_directory_created_at_out_during_the_build_is_kept(tiny_model, tmp_path):
    out = tmp_path / "out"

    def log(line: str) -> None:  # the build logs each exported graph: someone creates --out meanwhile
        if line.startswith("exported") and not out.exists():
            out.mkdir()
            (out / "theirs.txt").write_text("keep")

    with pytest.raises(KangarooError, match="appeared"):
        build_engine_dir(str(tiny_model(MODEL)), out, ExportConfig(max_seq_len=64), allow_random_adapter=True, log=log)
    assert (out / "theirs.txt").read_text() == "keep"
    assert _leftovers(tmp_path, "out") == []


def test_a_second_build_to_the_same_out_fails_while_the_first_holds_it(tiny_model, tmp_path):
    from kangaroo_trt.atomic import out_lock

    out = tmp_path / "out"
    with out_lock(out):
        with pytest.raises(KangarooError, match="another export"):
            build_engine_dir(str(tiny_model(MODEL)), out, ExportConfig(max_seq_len=64), allow_random_adapter=True,
                             log=lambda _: None)
    assert not out.exists() and _leftovers(tmp_path, "out") == []


def test_stale_temporary_directories_of_dead_builds_are_swept(tiny_model, tmp_path):
    from kangaroo_trt.atomic import temp_dir

    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = temp_dir(tmp_path / "out", pid=int(dead.stdout))
    (stale / "big.onnx.data").write_bytes(b"x" * 1000)
    build_engine_dir(str(tiny_model(MODEL)), tmp_path / "out", ExportConfig(max_seq_len=64), allow_random_adapter=True,
                     log=lambda _: None)
    assert not stale.exists() and _leftovers(tmp_path, "out") == []


# -- 8. files come out with the user's umask ---------------------------------------------------------------------------

def test_engine_directory_follows_the_umask(engine_dir):
    mask = os.umask(0)
    os.umask(mask)
    for path in [engine_dir, *engine_dir.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        want = (0o777 if path.is_dir() else 0o666) & ~mask
        assert mode & want == want, f"{path} is {oct(mode)}"


# -- 4. every path the manifest names stays inside the directory, every artifact has a checked sha256 ---------------

def test_graph_path_outside_the_engine_directory_is_refused(engine_copy, tmp_path):
    outside = tmp_path / "outside"
    shutil.copytree(engine_copy / "onnx" / "fp32", outside)

    def edit(d):
        d["graphs"]["fp32"]["deep"]["file"] = "../outside/deep.onnx"
    _edit_manifest(engine_copy, edit)
    with pytest.raises(EngineDirError, match="outside"):
        KangarooEngine.open(engine_copy)


def test_absolute_graph_path_is_refused(engine_copy):
    def edit(d):
        d["graphs"]["fp32"]["deep"]["file"] = str(engine_copy / "onnx" / "fp32" / "deep.onnx")
    _edit_manifest(engine_copy, edit)
    with pytest.raises(EngineDirError, match="outside|absolute"):
        KangarooEngine.open(engine_copy)


def test_empty_file_table_does_not_disable_checking(engine_copy):
    _edit_manifest(engine_copy, lambda d: d.update(files={}))
    with pytest.raises(EngineDirError, match="no recorded sha256"):
        KangarooEngine.open(engine_copy)


def test_unrecorded_weight_file_is_refused(engine_copy):
    def edit(d):
        del d["files"]["onnx/fp32/deep.onnx.data"]
    _edit_manifest(engine_copy, edit)
    with pytest.raises(EngineDirError, match="deep.onnx.data"):
        KangarooEngine.open(engine_copy)


def test_symlink_out_of_the_engine_directory_is_refused(engine_copy, tmp_path):
    target = tmp_path / "elsewhere.onnx"
    shutil.copy(engine_copy / "onnx" / "fp32" / "deep.onnx", target)
    (engine_copy / "onnx" / "fp32" / "deep.onnx").unlink()
    (engine_copy / "onnx" / "fp32" / "deep.onnx").symlink_to(target)
    with pytest.raises(EngineDirError, match="outside"):
        KangarooEngine.open(engine_copy)


# -- 5. the PyTorch backend rebuilds from the recorded absolute path and refuses other weights ------------------------

def test_source_model_is_absolute_with_a_digest(engine_dir, tiny_model):
    manifest = Manifest.read(engine_dir)
    assert Path(manifest.source_model).is_absolute()
    assert manifest.source_model == str(tiny_model(MODEL).resolve())
    assert len(manifest.source_sha256) == 64


def test_torch_backend_refuses_a_changed_source_model(tiny_model, tmp_path, monkeypatch):
    from conftest import make_tiny_model

    model = make_tiny_model(tmp_path / "model", MODEL)
    out = tmp_path / "engine"
    monkeypatch.chdir(tmp_path)
    build_engine_dir("model", out, ExportConfig(max_seq_len=64), allow_random_adapter=True, log=lambda _: None)
    KangarooEngine.open(out, backend="torch-cpu")  # the same weights: fine
    other = tmp_path / "elsewhere"
    make_tiny_model(other / "model", MODEL, seed=7)  # same shape, other weights, reached by the same relative path
    monkeypatch.chdir(other)
    make_tiny_model(model, MODEL, seed=7)  # and the recorded directory itself now holds other weights
    with pytest.raises(EngineDirError, match="weights"):
        KangarooEngine.open(out, backend="torch-cpu")


# -- 6. chat: special tokens typed in message text are text (the encoding itself is tested in test_chat.py) ----------

# -- 7. adapter loading failures are one-line errors --------------------------------------------------------------------

def _official_adapter(directory: Path, tensors) -> Path:
    import torch
    from transformers import LlamaConfig

    directory.mkdir()
    LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=1,
                intermediate_size=128, vocab_size=320).save_pretrained(directory)
    torch.save(tensors, directory / "pytorch_model.bin")
    return directory


class _Evil:
    def __reduce__(self):
        return (os.system, ("true",))


@pytest.mark.parametrize("case", ["pickle", "corrupt-bin", "missing-weights", "bad-json", "no-adapter-key",
                                  "integer-tensors", "corrupt-safetensors"])
def test_adapter_loading_failures_are_one_line(engine_dir, tmp_path, case):
    import torch

    from kangaroo_trt.model.weights import load_adapter

    path = tmp_path / "adapter"
    if case == "pickle":
        _official_adapter(path, {"x": _Evil()})
    elif case == "corrupt-bin":
        _official_adapter(path, {})
        (path / "pytorch_model.bin").write_bytes(b"not a zip")
    elif case == "integer-tensors":
        _official_adapter(path, {"adapter.norm.weight": torch.ones(64, dtype=torch.int64)})
    else:
        shutil.copytree(engine_dir / "adapter", path)
        if case == "missing-weights":
            (path / "adapter.safetensors").unlink()
        elif case == "bad-json":
            (path / "adapter_config.json").write_text("{")
        elif case == "no-adapter-key":
            _edit_manifest_file(path / "adapter_config.json", lambda d: d.pop("adapter"))
        elif case == "corrupt-safetensors":
            (path / "adapter.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(KangarooError) as info:
        load_adapter(path)
    message = str(info.value)
    assert "\n" not in message and "weights_only=False" not in message


def _edit_manifest_file(path: Path, edit) -> None:
    d = json.loads(path.read_text())
    edit(d)
    path.write_text(json.dumps(d))


# -- 9. temperatures that give NaN or uniform noise ---------------------------------------------------------------------

@pytest.mark.parametrize("temperature", [1e-308, 1e-320, float("inf"), float("nan")])
def test_degenerate_temperatures_are_refused(temperature):
    with pytest.raises(KangarooError, match="temperature"):
        DecodeConfig(temperature=temperature)


def test_smallest_allowed_temperature_samples_the_argmax(engine_dir):
    from kangaroo_trt.config import MIN_TEMPERATURE

    engine = KangarooEngine.open(engine_dir)
    greedy = engine.generate("the quick brown fox", config=engine.decode_config(max_new_tokens=8))
    cold = engine.generate("the quick brown fox", config=engine.decode_config(max_new_tokens=8, temperature=MIN_TEMPERATURE, seed=1))
    assert cold.output_ids == greedy.output_ids


# -- 10. prompt ids are validated against the vocabulary ----------------------------------------------------------------

@pytest.mark.parametrize("ids", [[5, -1], [5, 10**6], [], [5, 2.5], [True]])
def test_bad_prompt_ids_are_refused(engine_dir, ids):
    engine = KangarooEngine.open(engine_dir)
    with pytest.raises(InputError, match="prompt_ids"):
        engine.generate(prompt_ids=ids, config=engine.decode_config(max_new_tokens=2))


# -- 11. threads -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("threads", [0, -1, 100000])
def test_bad_thread_counts_are_refused(engine_dir, threads):
    with pytest.raises(KangarooError, match="threads"):
        KangarooEngine.open(engine_dir, threads=threads)


# -- 12. tiny caches fail validation, not the parity check --------------------------------------------------------------

@pytest.mark.parametrize("n", [2, 9])
def test_too_small_cache_is_refused_at_validation(n):
    with pytest.raises(KangarooError, match="max_seq_len"):
        ExportConfig(max_seq_len=n)


# -- 14. JSONL readers split lines at \n only ----------------------------------------------------------------------------

def test_line_separators_inside_records_are_text(tmp_path):
    from kangaroo_trt.bench.questions import load_questions
    from kangaroo_trt.train.data import BenchmarkFilter, read_examples

    text = "a\u2028b\u2029c\u0085d"
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"prompt": text}, ensure_ascii=False) + "\n" + "{bad\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"data.jsonl:2:"):
        read_examples(data, warn=lambda _: None)
    data.write_text(json.dumps({"prompt": text}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert read_examples(data, warn=lambda _: None)[0].user_turns == [text]
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"question_id": 1, "category": "qa", "turns": [text * 5]}, ensure_ascii=False) + "\n",
                         encoding="utf-8")
    assert load_questions(questions)[0].turns == (text * 5,)
    assert len(BenchmarkFilter.from_files([questions]).prompts) == 1


# -- 16. hand-edited manifests ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("edit", [
    lambda d: d.update(max_seq_len="128"),
    lambda d: d.update(max_seq_len=True),
    lambda d: d.update(exit_layer=99),
    lambda d: d.update(graphs=[]),
    lambda d: d["graphs"]["fp32"].pop("deep"),
    lambda d: d.update(eos_token_ids="2"),
    lambda d: d["model"].update(num_kv_heads=0),
    lambda d: d["model"].update(vocab_size="320"),
    lambda d: d["graphs"]["fp32"]["deep"]["spec"].update(caches=[]),
    lambda d: d.update(files=[]),
    lambda d: d.update(tokenizer=None),
    lambda d: d.update(source_model=3),
    lambda d: d.update(decode_defaults={"gamma": "6", "tau": 0.5}),
], ids=["str-seq-len", "bool-seq-len", "exit-layer", "graphs-list", "graph-missing", "eos-str", "kv-heads-0",
        "vocab-str", "no-caches", "files-list", "tokenizer-null", "source-int", "gamma-str"])
def test_hand_edited_manifest_is_one_line_error(engine_copy, edit):
    _edit_manifest(engine_copy, edit)
    with pytest.raises(EngineDirError) as info:
        KangarooEngine.open(engine_copy)
    assert "\n" not in str(info.value)


# -- 17. the smaller ones that need no command line ---------------------------------------------------------------------

def test_seed_must_be_non_negative():
    with pytest.raises(KangarooError, match="seed"):
        DecodeConfig(temperature=0.7, seed=-1)


def test_engine_dir_that_is_a_file(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(EngineDirError, match="not a directory"):
        KangarooEngine.open(path)


def test_corrupt_graph_with_checksums_skipped_says_so(engine_copy):
    (engine_copy / "onnx" / "fp32" / "deep.onnx").write_bytes(b"garbage")
    with pytest.raises(KangarooError) as info:
        KangarooEngine.open(engine_copy, verify=False)
    assert "pip install" not in str(info.value) and "deep.onnx" in str(info.value)


def test_finished_stream_keeps_its_result(engine_dir):
    engine = KangarooEngine.open(engine_dir)
    stream = engine.stream("hello world", config=engine.decode_config(max_new_tokens=4))
    first = list(stream)
    result = stream.result
    assert result is not None
    assert list(stream) == [] and stream.result is result and first


def test_tensorrt_require_fails_before_exporting(tiny_model, tmp_path):
    from kangaroo_trt.engines.builder import tensorrt_available

    if tensorrt_available():
        pytest.skip("TensorRT is installed here")
    logs: list[str] = []
    with pytest.raises(KangarooError, match="TensorRT"):
        build_engine_dir(str(tiny_model(MODEL)), tmp_path / "out", ExportConfig(max_seq_len=64, tensorrt="require"),
                         allow_random_adapter=True, log=logs.append)
    assert not any(line.startswith("exported") for line in logs)
