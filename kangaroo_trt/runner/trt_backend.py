"""TensorRT backend: plans from the engine directory, device buffers allocated once, one CUDA stream.

Written against the TensorRT 10/11 runtime API and CuPy from their documentation; what has run where: the
README's backend status table (``scripts/gpu_check.sh`` runs its GPU-marked tests where TensorRT is installed).

Per graph (``TrtGraphRunner``):

* one execution context per optimization profile (``contract/profiles.py``: ``step`` for n <= max_verify,
  ``prefill`` for prompt chunks), so no call switches profiles;
* device buffers, allocated once: the caches ``[1, kv_heads, S_max, head_dim]``, and the token inputs,
  ``present_*`` rows and token outputs at their largest ``n``. A call with ``n`` tokens uses the contiguous
  prefix of each buffer, so every tensor address is fixed;
* ``set_input_shape`` + ``set_tensor_address`` + ``execute_async_v3`` on the backend's stream; the ``n``
  new cache rows are then copied to slots ``start .. start + n`` on the same stream (device to device);
* CUDA graphs (``cuda_graphs=True``, the default; ``KANGAROO_TRT_CUDA_GRAPHS=0`` turns them off): the first
  call of each step shape (n <= max_verify, step profile) runs normally, then captures the enqueue; later
  calls with that n replay it. Positions and the cache length are data (``position_ids``), so one graph
  serves every ``start``. Prefill chunks (one-off lengths) are never captured.

Host round trips: outputs are returned as CuPy arrays and stay on the device (``runner/arrays.py``: exit states,
drafts and targets go from graph to graph there; a draft is the next shallow call's input). The backend is
``resident``: a greedy round reads back once, its drafts and target ids together after the deep pass
(``decode.py``); logits never cross. The stream is a blocking one, so that read (on the legacy default stream)
waits for its work. Host feeds (position ids, the round's first token) are small synchronous copies.

Ownership: returned arrays are views of the runner's output buffers, valid until its next call.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from ..contract.plans import fresh_plan
from ..contract.profiles import Profile, pick
from ..contract.spec import GraphSpec
from ..errors import BackendError, EngineDirError
from ..runtimes import import_cupy, import_tensorrt
from .backend import Backend, EngineRef, GraphRunner, cache_buffers, cuda_graphs_enabled

class TrtGraphRunner(GraphRunner):
    def __init__(self, engine, spec: GraphSpec, available: tuple[Profile, ...], stream, cuda_graphs: bool) -> None:
        cp = import_cupy()
        super().__init__(spec)
        self._cp, self._stream, self._profiles, self._cuda_graphs = cp, stream, available, cuda_graphs
        if engine.num_optimization_profiles != len(available):
            raise EngineDirError(f"{spec.name} plan has {engine.num_optimization_profiles} profiles, expected "
                                 f"{len(available)}: rebuild it with kangaroo-export engines")
        self._contexts = []
        for i in range(len(available)):
            context = engine.create_execution_context()
            context.set_optimization_profile_async(i, stream.ptr)
            self._contexts.append(context)
        max_n = max(p.n_max for p in available)
        with stream:
            self.caches = cache_buffers(spec, cp.zeros)  # on the device
            # token inputs and all outputs at their largest n; a call uses the contiguous prefix
            self._buffers = {t.name: cp.empty(t.concrete(max_n), dtype=t.dtype)
                             for t in (*spec.token_inputs, *spec.outputs)}
        self._graphs: dict[tuple[int, int], object] = {}  # (profile, n) -> captured cupy.cuda.Graph

    def _enqueue(self, profile: int, n: int, views: dict) -> None:
        context = self._contexts[profile]
        for t in self.spec.token_inputs:
            context.set_input_shape(t.name, t.concrete(n))
        for name, buf in self.caches.items():
            context.set_tensor_address(name, buf.data.ptr)
        for name, view in views.items():
            context.set_tensor_address(name, view.data.ptr)
        if not context.execute_async_v3(self._stream.ptr):
            raise BackendError(f"TensorRT failed to run the {self.spec.name} graph (n={n}): see the TensorRT log")

    def _run(self, feeds, start, n, rows):
        profile = pick(self._profiles, n)
        views = self._views(self._buffers, n)
        with self._stream:
            for t in self.spec.token_inputs:
                src = feeds[t.name]
                if isinstance(src, np.ndarray):
                    views[t.name].set(np.ascontiguousarray(src), stream=self._stream)
                else:  # already on the device (an earlier graph's output)
                    views[t.name][...] = src
            graph = self._graphs.get((profile, n))
            if graph is not None:
                graph.launch(self._stream)
            else:
                self._enqueue(profile, n, views)
                if self._cuda_graphs and self._profiles[profile].name == "step":  # warm-up done: capture for next calls
                    self._stream.begin_capture()
                    self._enqueue(profile, n, views)
                    self._graphs[(profile, n)] = self._stream.end_capture()
            self._write_rows(views, start, rows)  # device to device, on this stream
        return {t.name: views[t.name] for t in self.spec.token_outputs}

    def close(self) -> None:
        self._stream.synchronize()
        super().close()
        self._graphs, self._contexts, self._buffers = {}, [], {}


class TensorRTBackend(Backend):
    name = "tensorrt"
    device = "cuda"
    resident = True
    install: ClassVar[str] = "pip install tensorrt-cu13 cupy-cuda13x (NVIDIA GPU), then kangaroo-export engines --engine-dir DIR"

    @classmethod
    def available(cls) -> bool:
        try:
            import cupy
            import tensorrt  # noqa: F401

            return cupy.cuda.runtime.getDeviceCount() > 0
        except Exception:  # ImportError, or CUDA present without a driver / device
            return False

    @classmethod
    def open(cls, engine: EngineRef, threads: int | None = None) -> "TensorRTBackend":
        return cls(engine, threads)

    def __init__(self, ref: EngineRef, threads: int | None = None, cuda_graphs: bool | None = None) -> None:
        trt = import_tensorrt()
        cp = import_cupy()
        record = ref.manifest.tensorrt
        if record is None:
            raise EngineDirError(f"{ref.directory} has no TensorRT plans: run kangaroo-export engines --engine-dir {ref.directory}")
        built = record.versions.get("tensorrt")
        if built != trt.__version__:
            raise EngineDirError(f"{ref.directory}: plans built with TensorRT {built}, runtime is {trt.__version__}: "
                                 f"rebuild with kangaroo-export engines --engine-dir {ref.directory}")
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.stream = cp.cuda.Stream(non_blocking=False)
        available = record.profiles
        use_graphs = cuda_graphs_enabled() if cuda_graphs is None else cuda_graphs
        self._engines, self._runners = {}, {}
        for name, (_, spec) in ref.graphs().items():
            # the bytes whose sha256 was checked; the rest of the directory is pinned by KangarooEngine.open
            engine = self._runtime.deserialize_cuda_engine(fresh_plan(ref.directory, ref.manifest, ref.precision, name,
                                                                            ref.verify))
            if engine is None:
                raise EngineDirError(f"TensorRT cannot load the {name} plan of {ref.directory}: rebuild with "
                                     f"kangaroo-export engines --engine-dir {ref.directory}")
            self._engines[name] = engine
            self._runners[name] = TrtGraphRunner(engine, spec, available, self.stream, use_graphs)

    def close(self) -> None:
        super().close()
        self._engines, self._runtime = {}, None
        import_cupy().get_default_memory_pool().free_all_blocks()  # hand the freed buffers back to the device
