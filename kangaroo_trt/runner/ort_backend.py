"""ONNX Runtime backends with IOBinding on buffers allocated once: CPU (numpy) and CUDA (CuPy device buffers).

CPU: numpy buffers bound by pointer once per call size ``n`` (caches, token inputs, outputs); a call copies
its feeds into the bound input buffers and runs, so ONNX Runtime neither copies the caches nor allocates
outputs, and nothing is rebound per call.

CUDA (``onnxruntime-gpu``; status: the README's backend table): the same design with
CuPy device buffers bound as ``"cuda"`` memory. Token inputs and outputs live in buffers of the largest
``n`` (the contiguous prefix is bound for a call), the new cache rows are copied device to device, and
outputs are returned as CuPy arrays (``resident``: exit states and drafts never leave the device; a greedy
round reads back once, ``decode.py``). ONNX Runtime runs its kernels on the backend's CuPy stream
(``user_compute_stream``), where the runner's copies run too, so no call waits for another: the run option
``disable_synchronize_execution_providers`` keeps ``run_with_iobinding`` from waiting for its own outputs, and
the round's one readback waits for everything. Not run yet (no onnxruntime-gpu on the machines this was written
on); ORT's own CUDA graphs (``enable_cuda_graph``) are not used.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..contract.spec import GraphSpec
from ..errors import BackendError
from ..runtimes import import_cupy, importable, ort_session
from .backend import Backend, EngineRef, GraphRunner, cache_buffers


def _bind(binding, name: str, array: np.ndarray, output: bool) -> None:
    bind = binding.bind_output if output else binding.bind_input
    bind(name, "cpu", 0, array.dtype, list(array.shape), array.ctypes.data)


class OrtGraphRunner(GraphRunner):
    """One IOBinding per call size ``n``, bound once: the caches, the token inputs (copied into this binding's
    own buffers) and every output. A call then copies its feeds in and runs; nothing is rebound."""

    def __init__(self, session, spec: GraphSpec) -> None:
        super().__init__(spec)
        self._session = session
        self.caches = cache_buffers(spec, np.zeros)
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

    def _run(self, feeds, start, n, rows):
        binding, inputs, outputs = self._binding(n)
        for name, buffer in inputs.items():
            buffer[...] = feeds[name]
        self._session.run_with_iobinding(binding)
        self._write_rows(outputs, start, rows)
        return {t.name: outputs[t.name] for t in self.spec.token_outputs}

    def close(self) -> None:
        super().close()
        self._bound, self._session = {}, None


class OrtCpuBackend(Backend):
    name = "onnxruntime-cpu"
    device = "cpu"
    # Where no export check is recorded: MLAS takes another kernel for one-row products (an attention with one
    # query head per KV head, the int8 graphs' MatMulNBits), and gives every row the same bits from two rows up.
    # The export's check often finds 1 enough (SmolLM2: 3 query heads per KV head make every product >= 3 rows).
    invariant_rows = {"fp32": 2, "fp16": 2, "int8": 2}
    install = "pip install onnxruntime"

    @classmethod
    def available(cls) -> bool:
        return importable("onnxruntime")

    def __init__(self, graphs: dict[str, tuple[Path, GraphSpec]], threads: int | None = None) -> None:
        if not self.available():
            raise BackendError("onnxruntime is not installed: pip install onnxruntime")
        self._runners = {name: OrtGraphRunner(ort_session(path, threads), spec) for name, (path, spec) in graphs.items()}


class OrtCudaGraphRunner(GraphRunner):
    def __init__(self, session, spec: GraphSpec, max_n: int, stream) -> None:
        """``stream``: the CuPy stream the session computes on (its ``user_compute_stream``)."""
        import onnxruntime as ort

        cp = self._cp = import_cupy()
        super().__init__(spec)
        self._session, self._stream = session, stream
        self._binding = session.io_binding()
        self._options = ort.RunOptions()
        self._options.add_run_config_entry("disable_synchronize_execution_providers", "1")
        with stream:
            self.caches = cache_buffers(spec, cp.zeros)  # on the device, bound once
            self._buffers = {t.name: cp.empty(t.concrete(max_n), dtype=t.dtype) for t in (*spec.token_inputs, *spec.outputs)}
        for name, buffer in self.caches.items():
            self._bind(name, buffer, output=False)

    def _bind(self, name: str, array, output: bool) -> None:
        bind = self._binding.bind_output if output else self._binding.bind_input
        bind(name, "cuda", 0, np.dtype(array.dtype), list(array.shape), array.data.ptr)

    def _run(self, feeds, start, n, rows):
        views = self._views(self._buffers, n)
        with self._stream:  # the session's compute stream: feeds, run and cache writes in order, nobody waits
            for t in self.spec.token_inputs:
                src = feeds[t.name]
                if isinstance(src, np.ndarray):
                    views[t.name].set(np.ascontiguousarray(src), stream=self._stream)
                else:
                    views[t.name][...] = src
                self._bind(t.name, views[t.name], output=False)
            for t in self.spec.outputs:
                self._bind(t.name, views[t.name], output=True)
            self._session.run_with_iobinding(self._binding, self._options)
            self._write_rows(views, start, rows)  # device to device
        return {t.name: views[t.name] for t in self.spec.token_outputs}

    def close(self) -> None:
        self._stream.synchronize()
        super().close()
        self._buffers, self._binding, self._session = {}, None, None
        self._cp.get_default_memory_pool().free_all_blocks()  # hand the freed buffers back to the device


class OrtCudaBackend(Backend):
    name = "onnxruntime-cuda"
    device = "cuda"
    resident = True
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
        self.stream = import_cupy().cuda.Stream(non_blocking=False)  # not the legacy default: ORT refuses stream 0
        cuda = ("CUDAExecutionProvider", {"user_compute_stream": str(self.stream.ptr)})
        self._runners = {}
        for name, (path, spec) in graphs.items():
            session = ort_session(path, threads, providers=(cuda, "CPUExecutionProvider"))
            self._runners[name] = OrtCudaGraphRunner(session, spec, max_n, self.stream)

