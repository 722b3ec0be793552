"""ONNX Runtime backend (CPU execution provider) with IOBinding on buffers allocated once.

Cache buffers are numpy arrays bound to the session by pointer once, at open; inputs and outputs are
bound by pointer on every call, so ONNX Runtime neither copies the caches nor allocates outputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import BackendError
from ..export.spec import GraphSpec
from .backend import Backend, GraphRunner


def ort_session(path: Path, threads: int | None = None, providers: tuple[str, ...] = ("CPUExecutionProvider",)):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), options, providers=list(providers))
    except Exception as err:  # ORT raises its own exception types for corrupt or unloadable graphs
        raise BackendError(f"ONNX Runtime cannot load {path.name}: {err}: rebuild the engine directory") from err


def _bind(binding, name: str, array: np.ndarray, output: bool) -> None:
    bind = binding.bind_output if output else binding.bind_input
    bind(name, "cpu", 0, array.dtype, list(array.shape), array.ctypes.data)


class OrtGraphRunner(GraphRunner):
    def __init__(self, session, spec: GraphSpec) -> None:
        super().__init__(spec)
        self._session = session
        self._binding = session.io_binding()
        self.caches = {}  # past name -> buffer [1, kv_heads, max_seq_len, head_dim]
        for c in spec.caches:
            for name in (c.past_key, c.past_value):
                self.caches[name] = np.zeros(c.shape, dtype=c.dtype)
                _bind(self._binding, name, self.caches[name], output=False)
        self._outputs: dict[int, dict[str, np.ndarray]] = {}

    def _output_buffers(self, n: int) -> dict[str, np.ndarray]:
        if n not in self._outputs:
            self._outputs[n] = {t.name: np.empty(t.concrete(n), dtype=t.dtype) for t in self.spec.outputs}
        return self._outputs[n]

    def _run(self, feeds, start, n):
        inputs = {t.name: np.ascontiguousarray(feeds[t.name]) for t in self.spec.token_inputs}  # alive until run ends
        for name, array in inputs.items():
            _bind(self._binding, name, array, output=False)
        outputs = self._output_buffers(n)
        for name, array in outputs.items():
            _bind(self._binding, name, array, output=True)
        self._session.run_with_iobinding(self._binding)
        for c in self.spec.caches:  # write the n new rows; slots past the valid length are never read
            self.caches[c.past_key][:, :, start:start + n] = outputs[c.present_key]
            self.caches[c.past_value][:, :, start:start + n] = outputs[c.present_value]
        return {t.name: outputs[t.name] for t in self.spec.token_outputs}


class OrtCpuBackend(Backend):
    name = "onnxruntime-cpu"
    device = "cpu"

    @classmethod
    def available(cls) -> bool:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return False
        return True

    def __init__(self, graphs: dict[str, tuple[Path, GraphSpec]], threads: int | None = None) -> None:
        if not self.available():
            raise BackendError("onnxruntime is not installed: pip install onnxruntime")
        self._runners = {name: OrtGraphRunner(ort_session(path, threads), spec) for name, (path, spec) in graphs.items()}

    def graph(self, name: str) -> GraphRunner:
        return self._runners[name]
