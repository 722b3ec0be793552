"""Backend selection: the best runtime present, or the one asked for.

"auto" tries, in order, TensorRT > ONNX Runtime CUDA > PyTorch CUDA > ONNX Runtime CPU, and takes the first
that is installed and can serve these graphs (a backend that cannot, e.g. TensorRT without plans for this
precision or PyTorch for int8, raises ``BackendError`` and the next one is tried). A broken engine directory
(``EngineDirError``, e.g. a corrupt graph) is reported as it is, never as a missing runtime. ``torch-cpu`` (the
numerical reference) is never chosen automatically. Naming a backend forces it; its error is shown as is.
"""

from __future__ import annotations

from ..errors import BackendError
from .backend import Backend, EngineRef
from .ort_backend import OrtCpuBackend, OrtCudaBackend
from .torch_backend import TorchCpuBackend, TorchCudaBackend
from .trt_backend import TensorRTBackend

BACKENDS: dict[str, type[Backend]] = {cls.name: cls for cls in (
    TensorRTBackend, OrtCudaBackend, TorchCudaBackend, OrtCpuBackend, TorchCpuBackend)}
AUTO_ORDER = (TensorRTBackend.name, OrtCudaBackend.name, TorchCudaBackend.name, OrtCpuBackend.name)


def open_backend(name: str, engine: EngineRef, threads: int | None = None) -> Backend:
    if name == "auto":
        reasons = []
        for candidate in AUTO_ORDER:
            cls = BACKENDS[candidate]
            if not cls.available():
                continue
            try:
                return cls.open(engine, threads)
            except BackendError as err:
                reasons.append(f"{candidate}: {err}")
        if not reasons:
            raise BackendError("no backend is installed: pip install onnxruntime")
        raise BackendError("no backend can run these graphs (" + "; ".join(reasons) + ")")
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}: choose auto or one of {', '.join(BACKENDS)}")
    cls = BACKENDS[name]
    if not cls.available():
        raise BackendError(f"backend {name} is not available on this machine: {getattr(cls, 'install', 'use --backend auto')}")
    return cls.open(engine, threads)
