"""KangarooEngine.open's options reach every backend."""

import dataclasses

import pytest

from kangaroo_trt.contract.manifest import Manifest
from kangaroo_trt.runner.api import KangarooEngine


def test_verify_false_reaches_the_torch_backend(tiny_engine, tmp_path):
    """verify=False skips the sha256 checks on every backend: the PyTorch one checks the stored adapter (and the
    source weights) itself, and used to do it whatever ``verify`` said."""
    import shutil

    from kangaroo_trt.errors import EngineDirError

    source, _ = tiny_engine("llama-gqa-tied", max_seq_len=64, prefill_chunk=8, tensorrt="off")
    out = tmp_path / "engine"
    shutil.copytree(source, out)
    manifest = Manifest.read(out)
    adapter = next(rel for rel in manifest.files if rel.startswith(manifest.adapter_dir + "/"))
    dataclasses.replace(manifest, files={**manifest.files, adapter: "0" * 64}).write(out)  # a digest that cannot match
    with pytest.raises(EngineDirError, match="sha256"):
        KangarooEngine.open(out, backend="torch-cpu")
    with KangarooEngine.open(out, backend="torch-cpu", verify=False) as engine:
        assert engine.generate("hello", config=engine.decode_config(max_new_tokens=2)).output_ids
