"""Backend selection: the best runtime present, or the one asked for.

"auto" tries, in order, TensorRT > ONNX Runtime CUDA > PyTorch CUDA > ONNX Runtime CPU, and takes the first
that is installed and can serve these graphs (a backend that cannot, e.g. TensorRT without plans for this
precision or PyTorch for int8, raises ``BackendError`` and the next one is tried). A broken engine directory
(``EngineDirError``, e.g. a corrupt graph) is reported as it is, never as a missing runtime. ``torch-cpu`` (the
numerical reference) is never chosen automatically. Naming a backend forces it; its error is shown as is.

What each backend can run is its ``precisions`` (and ``needs_onnx``: bf16 has no ONNX graphs); a precision a
backend cannot run is refused in one line naming those that can (``runnable_backends``, which the export also
records in the manifest).
"""

from __future__ import annotations

from ..contract.manifest import Manifest
from ..errors import BackendError
from .backend import Backend, EngineRef
from .ort_backend import OrtCpuBackend, OrtCudaBackend
from .torch_backend import TorchCpuBackend, TorchCudaBackend
from .trt_backend import TensorRTBackend

BACKENDS: dict[str, type[Backend]] = {cls.name: cls for cls in (
    TensorRTBackend, OrtCudaBackend, TorchCudaBackend, OrtCpuBackend, TorchCpuBackend)}
AUTO_ORDER = (TensorRTBackend.name, OrtCudaBackend.name, TorchCudaBackend.name, OrtCpuBackend.name)


def runnable_backends(manifest: Manifest, precision: str) -> tuple[str, ...]:
    """The backends that can run ``precision`` of this engine directory, installed here or not."""
    return tuple(name for name, cls in BACKENDS.items() if cls.can_run(manifest, precision))


def _check_runs(cls: type[Backend], engine: EngineRef) -> None:
    if cls.can_run(engine.manifest, engine.precision):
        return
    names = runnable_backends(engine.manifest, engine.precision)
    here = next((n for n in names if BACKENDS[n].available()), names[0] if names else None)
    raise BackendError(f"backend {cls.name} cannot run {engine.precision} (it runs {', '.join(cls.precisions)}"
                       + (" from ONNX graphs" if cls.needs_onnx else "") + f"); {engine.precision} runs on "
                       + (f"{', '.join(names)}: pass --backend {here}" if names else "no backend"))


def open_backend(name: str, engine: EngineRef, threads: int | None = None) -> Backend:
    if name == "auto":
        reasons = []
        for candidate in AUTO_ORDER:
            cls = BACKENDS[candidate]
            if not cls.available():
                continue
            try:
                _check_runs(cls, engine)
                return cls.open(engine, threads)
            except BackendError as err:
                reasons.append(f"{candidate}: {err}")
        if not reasons:
            raise BackendError("no backend is installed: pip install onnxruntime")
        raise BackendError("no backend can run these graphs (" + "; ".join(reasons) + ")")
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}: choose auto or one of {', '.join(BACKENDS)}")
    cls = BACKENDS[name]
    _check_runs(cls, engine)
    if not cls.available():
        raise BackendError(f"backend {name} is not available on this machine: {getattr(cls, 'install', 'use --backend auto')}")
    return cls.open(engine, threads)
