"""The optional runtime libraries, imported in one place: ONNX Runtime sessions, TensorRT, CuPy, and their versions.

Each ``import_*`` imports its library lazily and turns a missing one into a one-line ``BackendError`` that
says what to install, so the layers above never import a GPU library at module level.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import threading
from pathlib import Path

from .errors import BackendError, ConfigError, EngineDirError

TENSORRT_HINT = "TensorRT is not installed: pip install tensorrt-cu13 (NVIDIA's index; needs an NVIDIA GPU and driver)"
POLYGRAPHY_HINT = "Polygraphy is not installed: pip install polygraphy (it builds the TensorRT plans)"
CUPY_HINT = "CuPy is not installed: pip install cupy-cuda13x (or cupy-cuda12x, matching your CUDA)"


def importable(module: str) -> bool:
    """Whether ``module`` is installed (without importing it)."""
    return importlib.util.find_spec(module) is not None


def library_versions(distributions: tuple[str, ...]) -> dict[str, str]:
    """Installed version of each distribution ("not installed" where absent)."""
    out = {}
    for dist in distributions:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def import_tensorrt():
    """``tensorrt``, or a one-line BackendError saying what to install."""
    try:
        import tensorrt as trt
    except (ImportError, OSError) as err:  # OSError: the bindings are there but the libraries are not
        raise BackendError(TENSORRT_HINT) from err
    return trt


def tensorrt_available() -> bool:
    try:
        import_tensorrt()
    except BackendError:
        return False
    return True


def import_polygraphy_trt():
    """``polygraphy.backend.trt`` (its loaders import TensorRT only when run), or a one-line BackendError."""
    try:
        from polygraphy.backend import trt as trt_loaders
    except ImportError as err:
        raise BackendError(POLYGRAPHY_HINT) from err
    return trt_loaders


def import_cupy():
    """``cupy``, or a one-line BackendError saying what to install."""
    try:
        import cupy
    except ImportError as err:
        raise BackendError(CUPY_HINT) from err
    return cupy


def max_threads() -> int:
    """The most runtime threads accepted: 4 per CPU (more only makes threads wait for each other)."""
    return 4 * (os.cpu_count() or 1)


def check_threads(threads: int | None) -> int | None:
    """None (the runtime's default) or a thread count in 1 .. ``max_threads()``: checked before any pool is made
    (``share_thread_pool``, ``KangarooEngine.open``, the command lines' ``--threads``), since a runtime creates
    the threads it is asked for until the machine runs out of memory."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or not 1 <= threads <= max_threads()):
        raise ConfigError(f"threads must lie in 1 .. {max_threads()} (4 per CPU here), got {threads!r}: "
                          "leave it out for the runtime's default")
    return threads


THREAD_POOLS = ("shared", "per-session")
_pool_size: int | None = None  # the process-wide pool's threads (0: the runtime's default) once it is shared
_POOL_LOCK = threading.Lock()


def share_thread_pool(threads: int | None = None) -> bool:
    """Run every ONNX Runtime session kangaroo-trt opens from now on on one process-wide intra-op pool of
    ``threads`` threads (None: one per physical core); returns whether the runtime allowed it.

    The three graphs run one after another. On one pool, whose threads spin-wait (ONNX Runtime's default), each
    graph's work goes to threads that are already awake; with a pool per session, idle pools must sleep (else
    they spin on the cores the next graph needs) and every wake-up costs time. Measured on 2 cores
    (bench/results/README.md), both modes are about a third faster. But once the pool exists, ONNX Runtime
    refuses sessions with pools of their own, such as ``onnxruntime.quantization``'s or a service's other
    models: call it only in a process where kangaroo-trt is ONNX Runtime's only user, before any session.
    kangaroo-run and kangaroo-bench do (``--thread-pool per-session`` turns it off); the library and
    kangaroo-serve (engines running in parallel) keep a pool per session.
    """
    global _pool_size
    check_threads(threads)
    with _POOL_LOCK:
        if _pool_size is not None:
            return _pool_size == (threads or 0)
        try:
            from onnxruntime.capi import _pybind_state

            _pybind_state.set_global_thread_pool_sizes(threads or 0, 1)
        except (ImportError, AttributeError, RuntimeError):
            return False
        _pool_size = threads or 0
        return True


def thread_pool() -> str:
    """Which kind of pool this process's sessions run on (one of ``THREAD_POOLS``)."""
    return "per-session" if _pool_size is None else "shared"


def ort_session(path: Path, threads: int | None = None, providers: tuple = ("CPUExecutionProvider",)):
    """An ONNX Runtime session with this project's settings (the measurements behind them: bench/results/README.md).
    ``providers``: names, or (name, options) pairs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # ONNX Runtime fuses a weight-only INT8 MatMul (DequantizeLinear on a constant weight, our int8 deep graph)
    # into MatMulNBits; at its default accuracy level it quantizes the activations to int8 on the fly, with
    # a different result for n = 1 than for the same row inside n > 1, which breaks Kangaroo == AR. Level 1
    # computes in fp32: the same numerics class as the fp32 graphs (tests/test_int8.py checks both).
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
    if thread_pool() == "shared":
        options.use_per_session_threads = False  # the process-wide pool, already sized (share_thread_pool)
    else:
        # A pool per session: the three graphs run one after another, so an idle pool sleeps instead of spinning
        # on the cores the next graph needs (share_thread_pool: the faster process-wide pool).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), options, providers=list(providers))
    except Exception as err:  # ORT raises its own exception types for corrupt or unloadable graphs
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        raise EngineDirError(f"ONNX Runtime cannot load {path.name} ({first}): the graph is corrupt or was changed, "
                             "rebuild the engine directory") from err
