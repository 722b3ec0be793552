"""PyTorch backend: the exported modules themselves, on the same static cache buffers, on CPU or CUDA.

It is the numerical reference for the runtime backends and the GPU path wherever TensorRT is absent. The
modules are rebuilt from the engine directory's recorded source model (``manifest.source_model``: a
bundled name or an absolute local Hugging Face directory, whose weights must have the recorded digest,
``EngineRef.source_model_dir``) and its stored adapter (``manifest.adapter_dir``), and must match the
manifest's model spec. fp32, fp16 and bf16 (``TORCH_PRECISIONS``): the INT8 graphs exist as Q/DQ ONNX and run on
ONNX Runtime or TensorRT; bf16 has no ONNX graphs (ONNX Runtime CPU has no bf16 MatMul), only these backends run it.
bf16 hidden states cross the host as float32 (``contract.spec.HOST_DTYPES``): a runner narrows its float inputs to
the caches' dtype and widens its float outputs to the spec's, both exact for bf16 values.

Per graph (``TorchGraphRunner``), everything a call touches is allocated once: the caches
``[1, kv_heads, S_max, head_dim]`` and the token inputs at their largest ``n`` (a call uses the prefix).
A step runs the module on those buffers and writes its real new cache rows (the first ``rows`` of ``n``; the
rest are exact mode's padding) with ``index_copy_`` at the slots named by the ``position_ids`` buffer, so the
step has no host-side offsets. On CUDA, with CUDA graphs on (the default; ``KANGAROO_TRT_CUDA_GRAPHS=0`` turns
them off), the first call of each step shape (``n <= max_verify``, and its count of real rows) runs eagerly on a
side stream and then captures the step; later calls of that shape copy their feeds into the buffers and replay
it. Prefill chunks run eagerly.

Compiled steps (opt-in: ``KANGAROO_TRT_COMPILE=1`` or ``compile=True``; ``compiled.py``): every call of up to
``max_verify`` rows is padded to ``max_verify`` rows and runs one ``torch.compile``d function of the module and its
cache write, compiled at open, with the real row count in a device buffer; on CUDA that one step is what gets
captured (key ``(max_verify, 0)``). Larger calls (prefill chunks) run the plain modules as above. Tested on CPU
(``tests/test_compiled.py``); on CUDA it has not run.

Returned arrays are the token outputs as torch tensors on the runner's device (bf16 ones widened to float32):
nothing is copied to the host, and a call does not wait for the device. Host feeds go in through pinned memory
without a wait (position ids, prompt tokens); device feeds (an earlier graph's output) are copied device to device.
The decoder reads back only what it decides on (``arrays.to_host``): one small copy per round in greedy decoding
(``Backend.resident``, ``decode.py``). Verified on CPU (tests/test_backends.py: the same code path,
minus capture). The CUDA path, capture included, runs only in the GPU-marked tests (scripts/gpu_check.sh);
status: the README's backend table.
"""

from __future__ import annotations


import numpy as np

from ..contract.spec import FLOAT_DTYPES, GraphSpec
from ..errors import BackendError, EngineDirError
from ..runtimes import importable
from .backend import Backend, EngineRef, GraphRunner, cache_buffers, cuda_graphs_enabled, pad_feeds
from .compiled import compile_enabled

TORCH_PRECISIONS = ("fp32", "fp16", "bf16")  # the modules in any float dtype; int8 exists only as Q/DQ ONNX


class TorchGraphRunner(GraphRunner):
    def __init__(self, module, spec: GraphSpec, device: str, max_n: int, capture_up_to: int = 0,
                 compile_rows: int = 0) -> None:
        """``max_n``: the largest call; ``capture_up_to``: capture CUDA graphs for calls with n up to this (0: never);
        ``compile_rows``: run calls with n up to this as one compiled step padded to this many rows (0: never,
        ``runner/compiled.py``)."""
        import torch

        super().__init__(spec)
        self._torch, self.module, self.device = torch, module, torch.device(device)
        self.caches = cache_buffers(spec, lambda shape, dtype: torch.zeros(shape, dtype=getattr(torch, dtype), device=self.device))
        compute = getattr(torch, spec.caches[0].dtype)  # the modules' float dtype (bf16 hidden arrives as float32)
        self._inputs = {t.name: torch.zeros(t.concrete(max_n), device=self.device,
                                            dtype=compute if t.dtype.startswith("float") else getattr(torch, t.dtype))
                        for t in spec.token_inputs}
        self._out_dtypes = {t.name: getattr(torch, t.dtype) for t in spec.token_outputs}
        self._capture_up_to = capture_up_to if self.device.type == "cuda" else 0
        # (n, rows) -> (CUDAGraph, its static outputs); a compiled step is keyed (n, 0): its rows are data.
        self._graphs: dict[tuple[int, int], tuple[object, dict]] = {}
        self._compiled = None
        if compile_rows:
            from .compiled import can_pad, compile_step

            if not can_pad(spec, compile_rows):
                raise BackendError(f"the {spec.name} graph's head covers {spec.head_rows} rows, fewer than the "
                                   f"{compile_rows} a compiled step pads to: run without KANGAROO_TRT_COMPILE")
            self._compiled = compile_step(module, spec, compile_rows)
            self._rows = torch.ones(1, dtype=torch.int64, device=self.device)  # the real rows of a compiled step
        self.compile_rows = compile_rows

    def _step(self, n: int, rows: int) -> dict:
        """One call on the bound buffers: the module, then its real new cache rows written at the slots of
        ``position_ids``."""
        inputs = self._views(self._inputs, n)
        outputs = dict(zip(self.spec.output_names, self.module(*(self.caches.get(t.name, inputs.get(t.name))
                                                                  for t in self.spec.inputs))))
        slots = inputs["position_ids"][0, :rows]
        for c in self.spec.caches:  # same rows as GraphRunner._write_rows, addressed by data so a graph can hold it
            self.caches[c.past_key].index_copy_(2, slots, outputs[c.present_key][:, :, :rows])
            self.caches[c.past_value].index_copy_(2, slots, outputs[c.present_value][:, :, :rows])
        return outputs

    def _compiled_step(self, n: int) -> dict:
        """The compiled step on the bound buffers (``n`` = ``compile_rows``; the real row count is in ``self._rows``)."""
        inputs = self._views(self._inputs, n)
        caches = [self.caches[name] for c in self.spec.caches for name in (c.past_key, c.past_value)]
        outputs = self._compiled([inputs[t.name] for t in self.spec.token_inputs], caches, self._rows)
        return dict(zip((t.name for t in self.spec.token_outputs), outputs))

    def _capture(self, key: tuple[int, int], step) -> dict:
        """Run ``step`` eagerly on a side stream (warm-up and this call's result), then capture it for later calls."""
        torch = self._torch
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            outputs = step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):  # recorded, not run: rerunning the step would write the same rows anyway
            self._graphs[key] = graph, step()
        return outputs

    def _run(self, feeds, start, n, rows):
        torch = self._torch
        real = n
        if self._compiled is not None and n <= self.compile_rows:
            feeds, n = pad_feeds(feeds, self.compile_rows, self.max_seq_len), self.compile_rows
            self._rows.fill_(rows)
            key, step = (n, 0), lambda: self._compiled_step(n)
        else:
            key, step = (n, rows), lambda: self._step(n, rows)
        for name, view in self._views(self._inputs, n).items():
            self._feed(view, feeds[name])
        with torch.no_grad():
            if key in self._graphs:
                graph, outputs = self._graphs[key]
                graph.replay()
            elif n <= self._capture_up_to:
                outputs = self._capture(key, step)
            else:
                outputs = step()
        shapes = {t.name: t.concrete(real) for t in self.spec.token_outputs}  # a padded call's real rows come first
        return {name: outputs[name][tuple(slice(0, s) for s in shapes[name])].to(dtype)
                for name, dtype in self._out_dtypes.items()}

    def _feed(self, view, src) -> None:
        """Copy one feed into its bound input buffer: a tensor device to device, a host array through pinned memory
        (on CUDA, asynchronously: the copy is ordered on the stream and the host does not wait)."""
        torch = self._torch
        if isinstance(src, torch.Tensor):
            view.copy_(src)
            return
        src = torch.from_numpy(np.ascontiguousarray(src))
        if self.device.type == "cuda":
            view.copy_(src.pin_memory(), non_blocking=True)
        else:
            view.copy_(src)

    def warm_up(self) -> None:
        """Compile (and on CUDA capture) the compiled step now, at open, rather than in the first generation: one
        call at position 0 with one real row, whose cache row is stale (no slot is valid before a prefill)."""
        if self._compiled is None:
            return
        n = self.compile_rows
        feeds = {t.name: np.zeros(t.concrete(n), dtype=t.dtype) for t in self.spec.token_inputs}
        feeds["position_ids"] = np.arange(n, dtype=np.int64)[None]
        with self._torch.no_grad():
            self._compiled_step(n)  # compile first, on the current stream, outside any capture (buffers: zeros)
        self.run(feeds, 0, rows=1)  # then, on CUDA, the capture

    def close(self) -> None:
        super().close()
        self._graphs, self._inputs, self.module, self._compiled = {}, {}, None, None
        if self.device.type == "cuda":
            self._torch.cuda.empty_cache()  # hand the freed tensors back to the device


def rebuild_modules(ref: EngineRef):
    """The engine's KangarooModules at its precision, from the source model + the stored adapter."""
    import torch

    if ref.precision not in TORCH_PRECISIONS:
        raise BackendError(f"the PyTorch backend runs {', '.join(TORCH_PRECISIONS)} graphs, not {ref.precision}: "
                           "use --backend onnxruntime-cpu (or tensorrt) for int8")
    modules = _rebuild_fp32(ref)
    return modules if ref.precision == "fp32" else modules.to_dtype(getattr(torch, FLOAT_DTYPES[ref.precision]))


def _rebuild_fp32(ref: EngineRef):
    """The fp32 modules from the engine's recorded source model and its stored adapter."""
    from ..model.weights import build_modules, load_adapter

    manifest = ref.manifest
    if manifest.adapter_dir is None:
        raise EngineDirError(f"{ref.directory} does not store its adapter (built by an older kangaroo-trt): "
                             "rebuild it with kangaroo-export build to use the PyTorch backend")
    if ref.verify:
        manifest.verify_files(ref.directory, (manifest.adapter_dir + "/",))
    model_dir = ref.source_model_dir()
    modules = build_modules(model_dir, load_adapter(ref.directory / manifest.adapter_dir), manifest.exit_layer,
                            verify_rows=ref.graphs()["deep"][1].head_rows)  # as exported
    if modules.model_spec != manifest.model:
        raise EngineDirError(f"{model_dir} is no longer the model {ref.directory} was built from: rebuild the engine directory")
    return modules


class _TorchBackend(Backend):
    precisions = TORCH_PRECISIONS
    needs_onnx = False
    resident = True  # torch-cpu runs the same one-readback rounds as torch-cuda: it is their reference

    @classmethod
    def open(cls, engine: EngineRef, threads: int | None = None) -> "_TorchBackend":
        return cls(engine, threads)

    def __init__(self, engine: EngineRef, threads: int | None = None, cuda_graphs: bool | None = None,
                 compile: bool | None = None) -> None:
        """``compile``: run decoding steps as compiled steps (``runner/compiled.py``; None: ``KANGAROO_TRT_COMPILE``)."""
        if not self.available():
            raise BackendError(f"backend {self.name} is not available: it needs torch" +
                               (" with CUDA and an NVIDIA GPU" if self.device == "cuda" else ""))
        import torch

        if threads and self.device == "cpu":
            torch.set_num_threads(threads)  # process-wide: torch has no per-module thread pool
        modules = rebuild_modules(engine).to(self.device)
        m = engine.manifest
        capture = m.max_verify if (cuda_graphs_enabled() if cuda_graphs is None else cuda_graphs) else 0
        self.compiled = compile_enabled(compile)
        self._runners = {name: TorchGraphRunner(modules.graphs()[name], spec, self.device, max(m.prefill_chunk, m.max_verify),
                                                capture, m.max_verify if self.compiled else 0)
                         for name, (_, spec) in engine.graphs().items()}
        for runner in self._runners.values():
            _warm_up(runner)


def _warm_up(runner: TorchGraphRunner) -> None:
    """Compile a runner's step at open; a machine where Inductor cannot compile gets one line saying so."""
    try:
        runner.warm_up()
    except BackendError:
        raise
    except Exception as err:  # Inductor's failures have no common type (no C++ compiler, no Triton, ...)
        from .compiled import COMPILE_ENV

        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise BackendError(f"torch.compile of the {runner.spec.name} graph failed ({type(err).__name__}: {first}): "
                           f"run without {COMPILE_ENV}=1") from err


class TorchCpuBackend(_TorchBackend):
    name = "torch-cpu"
    device = "cpu"
    install = "pip install torch"

    @classmethod
    def available(cls) -> bool:
        return importable("torch")


class TorchCudaBackend(_TorchBackend):
    name = "torch-cuda"
    device = "cuda"
    install = "needs an NVIDIA GPU and a CUDA build of torch (pip install torch --index-url https://download.pytorch.org/whl/cu130)"

    @classmethod
    def available(cls) -> bool:
        try:
            import torch
        except ImportError:
            return False
        return torch.cuda.is_available()
