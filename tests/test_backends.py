"""Backends: the PyTorch backend (CPU here) is lossless and agrees with ONNX Runtime; selection and errors.

GPU backends (TensorRT, ONNX Runtime CUDA, PyTorch CUDA) are tested by the ``gpu`` tests at the end, which
skip cleanly without CUDA (run them with scripts/gpu_check.sh on a GPU machine).
"""

from __future__ import annotations

import numpy as np
import pytest

from kangaroo_trt.errors import BackendError
from kangaroo_trt.contract.manifest import Manifest
from kangaroo_trt.runner.api import KangarooEngine
from kangaroo_trt.runner.backend import EngineRef
from kangaroo_trt.runner.backends import AUTO_ORDER, BACKENDS, open_backend
from kangaroo_trt.runner.arrays import to_host
from kangaroo_trt.runner.backend import prefix_view

PROMPTS = ["the quick brown fox jumps", "def add(a, b):"]
GRID = ((1, 0.0), (3, 0.0), (6, 0.6))  # (gamma, tau): one draft, full drafts, early exit by confidence


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


gpu = pytest.mark.skipif(not _cuda(), reason="needs an NVIDIA GPU with a CUDA build of torch")


@pytest.fixture(scope="module")
def engine_dir(tiny_engine):
    return tiny_engine("llama-mha-untied", max_seq_len=96, prefill_chunk=8, precisions=("fp32", "fp16", "int8"),
                       tensorrt="off")[0]


def _graphs(directory, precision):
    return EngineRef(directory, Manifest.read(directory), precision)


def _lossless(engine: KangarooEngine, grid=GRID) -> list[list[int]]:
    outputs = []
    for prompt in PROMPTS:
        ar = engine.generate(prompt, config=engine.decode_config(mode="ar", max_new_tokens=16))
        for gamma, tau in grid:
            k = engine.generate(prompt, config=engine.decode_config(mode="kangaroo", gamma=gamma, tau=tau, max_new_tokens=16))
            assert k.output_ids == ar.output_ids, (engine.backend.name, engine.precision, prompt, gamma, tau)
        outputs.append(ar.output_ids)
    return outputs


def test_torch_cpu_kangaroo_equals_ar_and_matches_onnxruntime(engine_dir):
    engine = KangarooEngine.open(engine_dir, backend="torch-cpu", precision="fp32", threads=1)
    torch_out = _lossless(engine)
    ort = KangarooEngine.open(engine_dir, backend="onnxruntime-cpu", precision="fp32", threads=1)
    assert torch_out == [ort.generate(p, config=ort.decode_config(mode="ar", max_new_tokens=16)).output_ids for p in PROMPTS]
    stats = engine.generate(PROMPTS[0], config=engine.decode_config(max_new_tokens=4)).stats.to_dict()
    assert stats["backend"] == "torch-cpu" and stats["precision"] == "fp32"


def test_torch_cpu_fp16_kangaroo_equals_ar(engine_dir):
    engine = KangarooEngine.open(engine_dir, backend="torch-cpu", precision="fp16", threads=1)
    _lossless(engine, grid=((3, 0.0),))
    assert engine.generate(PROMPTS[0], config=engine.decode_config(max_new_tokens=2)).stats.precision == "fp16"


def test_torch_and_onnxruntime_graphs_agree_call_by_call(engine_dir):
    """Same feeds through both backends' runners (prefill chunk, draft step, verify step): same caches, outputs."""
    graphs = _graphs(engine_dir, "fp32")
    ref, other = open_backend("onnxruntime-cpu", graphs, threads=1), open_backend("torch-cpu", graphs, threads=1)
    rng = np.random.default_rng(0)
    start = 0
    for n in (8, 1, 5):
        feeds = {"input_ids": rng.integers(0, 300, (1, n)), "position_ids": np.arange(start, start + n)[None]}
        a, b = ref.graph("shallow").run(feeds, start)["hidden"].copy(), other.graph("shallow").run(feeds, start)["hidden"]
        np.testing.assert_allclose(b, a, atol=1e-4, rtol=1e-4)
        deep = {"hidden": a, "position_ids": feeds["position_ids"]}
        ta, tb = ref.graph("deep").run(deep, start), other.graph("deep").run(deep, start)
        np.testing.assert_allclose(tb["logits"], ta["logits"], atol=1e-4, rtol=1e-4)
        np.testing.assert_array_equal(tb["target_ids"], ta["target_ids"])
        start += n
    for name, buf in ref.graph("deep").caches.items():  # the caches the runners keep agree too
        np.testing.assert_allclose(other.graph("deep").caches[name][:, :, :start].numpy(), buf[:, :, :start], atol=1e-4)


def test_onnxruntime_sessions_do_not_spin(engine_dir):
    """Per-session pools (the library's default) run in turn: an idle pool must sleep, not spin on the cores the
    next graph needs."""
    from kangaroo_trt.runtimes import ort_session, thread_pool

    assert thread_pool() == "per-session"
    path = _graphs(engine_dir, "fp32").graphs()["shallow"][0]
    assert ort_session(path, threads=2).get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_shared_thread_pool_gives_the_same_tokens(engine_dir, tmp_path):
    """kangaroo-run's default, one process-wide pool (share_thread_pool), in a fresh process: its sessions use it,
    and both modes give the tokens a pool per session gives."""
    import json
    import os
    import subprocess
    import sys

    probe = ("from kangaroo_trt.runtimes import share_thread_pool, thread_pool, ort_session\n"
             "import sys\nassert share_thread_pool(2) and thread_pool() == 'shared'\n"
             "assert ort_session(sys.argv[1]).get_session_options().use_per_session_threads is False\n")
    path = _graphs(engine_dir, "fp32").graphs()["shallow"][0]
    subprocess.run([sys.executable, "-c", probe, str(path)], check=True)
    outputs = {}
    for pool in ("shared", "per-session"):
        for mode in ("ar", "kangaroo"):
            proc = subprocess.run([sys.executable, "-m", "kangaroo_trt.cli.run_cli", "--engine-dir", str(engine_dir),
                                   "--prompt", "the quick brown fox", "--max-new-tokens", "24", "--mode", mode,
                                   "--thread-pool", pool, "--json"], capture_output=True, text=True,
                                  env={**os.environ, "KANGAROO_TRT_THREAD_POOL": ""})
            assert proc.returncode == 0, proc.stderr
            outputs[pool, mode] = json.loads(proc.stdout)["output_ids"]
    assert len(set(map(tuple, outputs.values()))) == 1, outputs


def test_torch_backend_refuses_int8(engine_dir):
    with pytest.raises(BackendError, match="int8"):
        open_backend("torch-cpu", _graphs(engine_dir, "int8"))


def test_auto_picks_the_best_available_and_never_torch_cpu(engine_dir):
    assert AUTO_ORDER[:2] == ("tensorrt", "onnxruntime-cuda") and "torch-cpu" not in AUTO_ORDER
    engine = KangarooEngine.open(engine_dir)
    expected = next(n for n in AUTO_ORDER if BACKENDS[n].available())
    if expected == "tensorrt":  # no plans in this directory: auto moves on
        expected = next(n for n in AUTO_ORDER[1:] if BACKENDS[n].available())
    assert engine.backend.name == expected
    if not _cuda():
        assert engine.backend.name == "onnxruntime-cpu"


def test_forcing_a_backend(engine_dir):
    graphs = _graphs(engine_dir, "fp32")
    with pytest.raises(BackendError, match="unknown backend"):
        open_backend("vulkan", graphs)
    for name in ("tensorrt", "onnxruntime-cuda", "torch-cuda"):
        if not BACKENDS[name].available():
            with pytest.raises(BackendError, match="not available on this machine: .*(pip install|GPU)"):
                open_backend(name, graphs)


def test_prefix_view_shares_the_buffer():
    buf = np.zeros((1, 8, 4), np.float32)
    view = prefix_view(buf, (1, 3, 4))
    view[...] = 1.0
    assert np.shares_memory(view, buf) and buf.sum() == 12 and buf[0, :3].all()


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("cuda_graphs", ["1", "0"])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_torch_cuda_kangaroo_equals_ar(engine_dir, precision, cuda_graphs, monkeypatch):
    monkeypatch.setenv("KANGAROO_TRT_CUDA_GRAPHS", cuda_graphs)
    engine = KangarooEngine.open(engine_dir, backend="torch-cuda", precision=precision)
    _lossless(engine)
    captured = {name: sorted(engine.backend.graph(name)._graphs) for name in ("shallow", "adapter", "deep")}
    assert all(captured.values()) == (cuda_graphs == "1"), captured  # step shapes were captured, and replayed since


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_onnxruntime_cuda_kangaroo_equals_ar(engine_dir, precision):
    if not BACKENDS["onnxruntime-cuda"].available():
        pytest.skip("onnxruntime-gpu and cupy are not installed")
    _lossless(KangarooEngine.open(engine_dir, backend="onnxruntime-cuda", precision=precision))


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("cuda_graphs", ["1", "0"])
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_tensorrt_kangaroo_equals_ar(engine_dir, precision, cuda_graphs, monkeypatch):
    if not BACKENDS["tensorrt"].available():
        pytest.skip("TensorRT and cupy are not installed")
    _ensure_plans(engine_dir, precision)
    monkeypatch.setenv("KANGAROO_TRT_CUDA_GRAPHS", cuda_graphs)
    _lossless(KangarooEngine.open(engine_dir, backend="tensorrt", precision=precision))


def _ensure_plans(engine_dir, precision: str) -> None:
    """Build the TensorRT plans of one precision into the shared engine directory, once."""
    from kangaroo_trt.engines.builder import add_plans

    record = Manifest.read(engine_dir).tensorrt
    if record is None or precision not in record.plans:
        add_plans(engine_dir, (precision,), log=lambda _: None)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("name", ["torch-cuda", "onnxruntime-cuda", "tensorrt"])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_cuda_backend_graphs_match_onnxruntime_cpu(engine_dir, name, precision):
    """Per graph, call by call: a CUDA backend vs ONNX Runtime CPU on the same feeds (prefill, draft, verify)."""
    from kangaroo_trt.export.validate import TOLERANCES

    if not BACKENDS[name].available():
        pytest.skip(f"{name} is not installed")
    if name == "tensorrt":
        _ensure_plans(engine_dir, precision)
    graphs = _graphs(engine_dir, precision)
    ref, other = open_backend("onnxruntime-cpu", graphs, threads=1), open_backend(name, graphs)
    atol, rtol = TOLERANCES[precision]
    rng, start = np.random.default_rng(0), 0
    for n in (8, 1, 2, 5):
        feeds = {"input_ids": rng.integers(0, 300, (1, n)), "position_ids": np.arange(start, start + n)[None]}
        a = ref.graph("shallow").run(feeds, start)["hidden"].copy()
        b = to_host(other.graph("shallow").run(feeds, start)["hidden"])
        np.testing.assert_allclose(b.astype(np.float32), a.astype(np.float32), atol=atol * 10, rtol=rtol * 10)
        deep = {"hidden": a, "position_ids": feeds["position_ids"]}
        la = ref.graph("deep").run(deep, start)["logits"].copy()
        lb = to_host(other.graph("deep").run(deep, start)["logits"])
        np.testing.assert_allclose(lb, la, atol=atol * 10 + rtol * 10 * float(np.abs(la).max()))
        start += n
