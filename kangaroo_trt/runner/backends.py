"""Backend selection: the best runtime present, or the one asked for."""

from __future__ import annotations

from pathlib import Path

from ..errors import BackendError
from ..export.spec import GraphSpec
from .backend import Backend
from .ort_backend import OrtCpuBackend

# Preference order for "auto". GPU backends join this list as they are added.
BACKENDS: dict[str, type[Backend]] = {OrtCpuBackend.name: OrtCpuBackend}


def open_backend(name: str, graphs: dict[str, tuple[Path, GraphSpec]], threads: int | None = None) -> Backend:
    if name == "auto":
        for cls in BACKENDS.values():
            if cls.available():
                return cls(graphs, threads)
        raise BackendError("no runtime is installed: pip install onnxruntime")
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}: choose auto or one of {', '.join(BACKENDS)}")
    cls = BACKENDS[name]
    if not cls.available():
        raise BackendError(f"backend {name} is not available on this machine: use --backend auto")
    return cls(graphs, threads)
