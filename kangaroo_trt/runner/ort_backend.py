"""ONNX Runtime backends with IOBinding on buffers allocated once: CPU (numpy) and CUDA (CuPy device buffers).

CPU: numpy buffers bound by pointer once per call size ``n`` (caches, token inputs, outputs); a call copies
its feeds into the bound input buffers and runs, so ONNX Runtime neither copies the caches nor allocates
outputs, and nothing is rebound per call.

CUDA (``onnxruntime-gpu``; UNVERIFIED, never run: no GPU on this project's machines): the same design with
CuPy device buffers bound as ``"cuda"`` memory. Token inputs and outputs live in buffers of the largest
``n`` (the contiguous prefix is bound for a call), the new cache rows are copied device to device, and
outputs are returned as CuPy arrays (see ``trt_backend.py``: exit states never leave the device; only
the accept/reject ids are read back). ONNX Runtime runs on its own CUDA stream, so the runner synchronizes
CuPy's stream before each run; ``run_with_iobinding`` returns once its outputs are ready.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..contract.spec import GraphSpec
from ..errors import BackendError, EngineDirError
from .backend import Backend, EngineRef, GraphRunner, importable


def ort_session(path: Path, threads: int | None = None, providers: tuple[str, ...] = ("CPUExecutionProvider",)):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # ONNX Runtime fuses a weight-only INT8 MatMul (DequantizeLinear on a constant weight, our int8 deep graph)
    # into MatMulNBits; at its default accuracy level it quantizes the activations to int8 on the fly, with
    # a different result for n = 1 than for the same row inside n > 1 (0.47 in SmolLM2's logits), which
    # breaks Kangaroo == AR. Level 1 computes in fp32: same numerics class as the fp32 graphs (2.6e-5).
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
    # The three graphs run one after another, each on its own session's thread pool. With ONNX Runtime's default
    # spin-waiting, the pools that just finished keep their cores busy while the next graph runs: on 2 cores that
    # cost SmolLM2 AR 20.3 -> 28.1 tok/s and Kangaroo (more graph switches) 17.1 -> 33.4 tok/s. Idle pools sleep.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), options, providers=list(providers))
    except Exception as err:  # ORT raises its own exception types for corrupt or unloadable graphs
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        raise EngineDirError(f"ONNX Runtime cannot load {path.name} ({first}): the graph is corrupt or was changed, "
                             "rebuild the engine directory") from err


def _bind(binding, name: str, array: np.ndarray, output: bool) -> None:
    bind = binding.bind_output if output else binding.bind_input
    bind(name, "cpu", 0, array.dtype, list(array.shape), array.ctypes.data)


class OrtGraphRunner(GraphRunner):
    """One IOBinding per call size ``n``, bound once: the caches, the token inputs (copied into this binding's
    own buffers) and every output. A call then copies its feeds in and runs; nothing is rebound."""

    def __init__(self, session, spec: GraphSpec) -> None:
        super().__init__(spec)
        self._session = session
        self.caches = {}  # past name -> buffer [1, kv_heads, max_seq_len, head_dim]
        for c in spec.caches:
            for name in (c.past_key, c.past_value):
                self.caches[name] = np.zeros(c.shape, dtype=c.dtype)
        self._bound: dict[int, tuple[object, dict[str, np.ndarray], dict[str, np.ndarray]]] = {}

    def _binding(self, n: int):
        """(binding, token input buffers, output buffers) for calls with ``n`` new tokens."""
        if n not in self._bound:
            binding = self._session.io_binding()
            inputs = {t.name: np.zeros(t.concrete(n), dtype=t.dtype) for t in self.spec.token_inputs}
            outputs = {t.name: np.empty(t.concrete(n), dtype=t.dtype) for t in self.spec.outputs}
            for name, array in (*self.caches.items(), *inputs.items()):
                _bind(binding, name, array, output=False)
            for name, array in outputs.items():
                _bind(binding, name, array, output=True)
            self._bound[n] = binding, inputs, outputs
        return self._bound[n]

    def _run(self, feeds, start, n):
        binding, inputs, outputs = self._binding(n)
        for name, buffer in inputs.items():
            buffer[...] = feeds[name]
        self._session.run_with_iobinding(binding)
        self._write_rows(outputs, start, n)
        return {t.name: outputs[t.name] for t in self.spec.token_outputs}

    def close(self) -> None:
        super().close()
        self._bound, self._session = {}, None


class OrtCpuBackend(Backend):
    name = "onnxruntime-cpu"
    device = "cpu"
    install = "pip install onnxruntime"

    @classmethod
    def available(cls) -> bool:
        return importable("onnxruntime")

    def __init__(self, graphs: dict[str, tuple[Path, GraphSpec]], threads: int | None = None) -> None:
        if not self.available():
            raise BackendError("onnxruntime is not installed: pip install onnxruntime")
        self._runners = {name: OrtGraphRunner(ort_session(path, threads), spec) for name, (path, spec) in graphs.items()}


class OrtCudaGraphRunner(GraphRunner):
    def __init__(self, session, spec: GraphSpec, max_n: int) -> None:
        from .trt_backend import import_cupy

        cp = self._cp = import_cupy()
        super().__init__(spec)
        self._session = session
        self._binding = session.io_binding()
        self.caches = {}  # past name -> device buffer [1, kv_heads, max_seq_len, head_dim], bound once
        for c in spec.caches:
            for name in (c.past_key, c.past_value):
                self.caches[name] = cp.zeros(c.shape, dtype=c.dtype)
                self._bind(name, self.caches[name], output=False)
        self._buffers = {t.name: cp.empty(t.concrete(max_n), dtype=t.dtype) for t in (*spec.token_inputs, *spec.outputs)}

    def _bind(self, name: str, array, output: bool) -> None:
        bind = self._binding.bind_output if output else self._binding.bind_input
        bind(name, "cuda", 0, np.dtype(array.dtype), list(array.shape), array.data.ptr)

    def _run(self, feeds, start, n):
        cp = self._cp
        views = self._views(self._buffers, n)
        for t in self.spec.token_inputs:
            src = feeds[t.name]
            if isinstance(src, np.ndarray):
                views[t.name].set(np.ascontiguousarray(src))
            else:
                views[t.name][...] = src
            self._bind(t.name, views[t.name], output=False)
        for t in self.spec.outputs:
            self._bind(t.name, views[t.name], output=True)
        cp.cuda.get_current_stream().synchronize()  # ORT's stream does not wait for CuPy's
        self._session.run_with_iobinding(self._binding)
        self._write_rows(views, start, n)  # device to device
        return {t.name: views[t.name] for t in self.spec.token_outputs}

    def close(self) -> None:
        super().close()
        self._buffers, self._binding, self._session = {}, None, None
        self._cp.get_default_memory_pool().free_all_blocks()  # hand the freed buffers back to the device


class OrtCudaBackend(Backend):
    name = "onnxruntime-cuda"
    device = "cuda"
    install = "pip install onnxruntime-gpu cupy-cuda13x (NVIDIA GPU, CUDA 13)"

    @classmethod
    def available(cls) -> bool:
        try:
            import cupy
            import onnxruntime as ort

            return "CUDAExecutionProvider" in ort.get_available_providers() and cupy.cuda.runtime.getDeviceCount() > 0
        except Exception:  # ImportError, or a CUDA library / driver missing
            return False

    @classmethod
    def open(cls, engine: EngineRef, threads: int | None = None) -> "OrtCudaBackend":
        return cls(engine.graphs(), threads, max_n=max(engine.manifest.prefill_chunk, engine.manifest.max_verify))

    def __init__(self, graphs: dict[str, tuple[Path, GraphSpec]], threads: int | None = None, max_n: int = 128) -> None:
        """``max_n``: the largest number of new tokens any call makes (its token buffers are that size)."""
        if not self.available():
            raise BackendError(f"ONNX Runtime CUDA is not available here: {self.install}")
        self._runners = {}
        for name, (path, spec) in graphs.items():
            session = ort_session(path, threads, providers=("CUDAExecutionProvider", "CPUExecutionProvider"))
            self._runners[name] = OrtCudaGraphRunner(session, spec, max_n)

