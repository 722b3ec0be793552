"""PyTorch backend: the exported modules themselves, on the same static cache buffers, on CPU or CUDA.

It is the numerical reference for the runtime backends and the GPU path wherever TensorRT is absent. The
modules are rebuilt from the engine directory's recorded source model (``manifest.source_model``: a
bundled name or a local Hugging Face directory) and its stored adapter (``manifest.adapter_dir``), and must
match the manifest's model spec. Caches are torch tensors ``[1, kv_heads, S_max, head_dim]`` allocated once
on the device; each call writes the ``n`` new rows at ``start`` (``Tensor.copy_`` into a slice, no copy of
the cache). fp32 and fp16 graphs only: the INT8 graphs exist as Q/DQ ONNX and run on ONNX Runtime or
TensorRT.

Returned arrays are numpy copies of the token outputs (on CUDA: one small device-to-host copy per call).
Verified on CPU (tests/test_backends.py); the CUDA path is the same code on ``device="cuda"`` and is
exercised only by the GPU-marked tests (scripts/gpu_check.sh), which have not run in this project yet.
"""

from __future__ import annotations


import numpy as np

from ..errors import BackendError, EngineDirError
from ..export.spec import GraphSpec
from .backend import Backend, EngineRef, GraphRunner, importable


class TorchGraphRunner(GraphRunner):
    def __init__(self, module, spec: GraphSpec, device: str) -> None:
        import torch

        super().__init__(spec)
        self._torch, self.module, self.device = torch, module, torch.device(device)
        self.caches = {}  # past name -> tensor [1, kv_heads, max_seq_len, head_dim] on the device
        for c in spec.caches:
            for name in (c.past_key, c.past_value):
                self.caches[name] = torch.zeros(c.shape, dtype=getattr(torch, c.dtype), device=self.device)

    def _run(self, feeds, start, n):
        torch = self._torch
        args = [self.caches[t.name] if t.name in self.caches else torch.from_numpy(np.ascontiguousarray(feeds[t.name])).to(self.device)
                for t in self.spec.inputs]
        with torch.inference_mode():
            outputs = dict(zip(self.spec.output_names, self.module(*args)))
            self._write_rows(outputs, start, n)
        return {t.name: outputs[t.name].cpu().numpy() for t in self.spec.token_outputs}


def rebuild_modules(ref: EngineRef):
    """The engine's KangarooModules at its precision, from the source model + the stored adapter."""
    import torch

    from ..bundled import resolve_model
    from ..model.weights import build_modules, load_adapter

    manifest = ref.manifest
    if ref.precision not in ("fp32", "fp16"):
        raise BackendError(f"the PyTorch backend runs fp32 and fp16 graphs, not {ref.precision}: "
                           "use --backend onnxruntime-cpu (or tensorrt) for int8")
    if manifest.adapter_dir is None:
        raise EngineDirError(f"{ref.directory} does not store its adapter (built by an older kangaroo-trt): "
                             "rebuild it with kangaroo-export build to use the PyTorch backend")
    manifest.verify_files(ref.directory, (manifest.adapter_dir + "/",))
    try:
        model_dir = resolve_model(manifest.source_model)
    except Exception as err:  # a moved local directory, or a bundled package that is not installed
        raise BackendError(f"the PyTorch backend needs the source model {manifest.source_model!r} the engine was "
                           f"built from ({err}): install or restore it, or use another --backend") from err
    modules = build_modules(model_dir, load_adapter(ref.directory / manifest.adapter_dir), manifest.exit_layer)
    if modules.model_spec != manifest.model:
        raise EngineDirError(f"{model_dir} is no longer the model {ref.directory} was built from: rebuild the engine directory")
    return modules if ref.precision == "fp32" else modules.to_dtype(torch.float16)


class _TorchBackend(Backend):
    @classmethod
    def open(cls, engine: EngineRef, threads: int | None = None) -> "_TorchBackend":
        return cls(engine, threads)

    def __init__(self, engine: EngineRef, threads: int | None = None) -> None:
        if not self.available():
            raise BackendError(f"backend {self.name} is not available: it needs torch" +
                               (" with CUDA and an NVIDIA GPU" if self.device == "cuda" else ""))
        import torch

        if threads and self.device == "cpu":
            torch.set_num_threads(threads)  # process-wide: torch has no per-module thread pool
        modules = rebuild_modules(engine).to(self.device)
        self._runners = {name: TorchGraphRunner(modules.graphs()[name], spec, self.device)
                         for name, (_, spec) in engine.graphs().items()}


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
