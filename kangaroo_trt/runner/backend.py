"""The small interface every runtime implements; the decoding loop sees nothing else.

A ``Backend`` opens the three graphs of one precision of an engine directory and hands out one
``GraphRunner`` per graph. A ``GraphRunner`` owns its KV-cache buffers (allocated once, at open) and its
output buffers (allocated once per distinct number of new tokens ``n``). ``run`` validates the token
feeds against the graph's ``GraphSpec``, runs the graph on bound buffers, copies the new cache rows to slots
``start .. start + rows`` (never the whole cache), and returns the token outputs. ``rows`` is ``n`` unless the
call is padded (exact mode, ``decode.py``): then only its first ``rows`` rows are real, the rest are padding whose
outputs are ignored and whose cache rows are never written.

Ownership: returned arrays are the runner's own output buffers, valid until the next ``run`` with the
same ``n``; copy them to keep them longer.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np

from ..contract.manifest import Manifest
from ..contract.spec import GraphSpec
from ..errors import BackendError, EngineDirError, InputError
from .arrays import repeat_last


def prefix_view(buffer, shape: tuple[int, ...]):
    """The contiguous first ``prod(shape)`` elements of a max-size buffer, as an array of ``shape``.

    numpy, CuPy and torch alike: a call with ``n`` tokens uses this view of a buffer sized for the largest ``n``,
    so the tensor addresses a CUDA graph captured stay fixed.
    """
    return buffer.ravel()[: int(np.prod(shape))].reshape(shape)


def cuda_graphs_enabled() -> bool:
    """CUDA graph capture of the step shapes (TensorRT and PyTorch CUDA backends); KANGAROO_TRT_CUDA_GRAPHS=0 turns it off."""
    return os.environ.get("KANGAROO_TRT_CUDA_GRAPHS", "1") != "0"


@dataclass(frozen=True)
class EngineRef:
    """One precision of an engine directory: what a backend is opened with (files come from the manifest)."""

    directory: Path
    manifest: Manifest
    precision: str
    verify: bool = True  # check the sha256 of what a backend loads beyond the graphs (False: KangarooEngine.open's verify)

    def graphs(self) -> dict[str, tuple[Path | None, GraphSpec]]:
        """graph name -> (ONNX path, I/O contract); paths fenced inside the directory (``Manifest.artifact``; their
        digests are checked when the engine is opened, ``KangarooEngine.open``). The path is None for a precision
        without ONNX graphs (bf16), which only backends with ``needs_onnx = False`` open."""
        return {g: (self.manifest.artifact(self.directory, e.file, verify=False) if e.file is not None else None, e.spec)
                for g, e in self.manifest.graphs[self.precision].items()}

    def source_model_dir(self) -> Path:
        """The model the engine was built from (for backends that rebuild the modules), refusing other weights.

        ``source_model`` is a bundled name or an absolute directory; its config and weight files must have the
        digest recorded at export (``source_sha256``), whatever the current directory.
        """
        from ..bundled import resolve_model
        from ..model.weights import weights_digest

        recorded = self.manifest.source_sha256
        if recorded is None:
            raise EngineDirError(f"{self.directory} does not record a digest of its source model (built by an older "
                                 "kangaroo-trt): rebuild it with kangaroo-export build to rebuild its modules from the model")
        try:
            model_dir = resolve_model(self.manifest.source_model)
        except Exception as err:  # a moved local directory, or a bundled package that is not installed
            raise BackendError(f"the source model {self.manifest.source_model!r} the engine was built from is not "
                               f"available ({err}): install or restore it, or use another --backend") from err
        if self.verify and weights_digest(model_dir) != recorded:
            raise EngineDirError(f"{model_dir} no longer holds the weights {self.directory} was built from (sha256 "
                                 "differs): restore that model or rebuild the engine directory")
        return model_dir


def cache_buffers(spec: GraphSpec, zeros: Callable[[tuple[int, ...], str], Any]) -> dict:
    """past name -> a zeroed KV-cache buffer [1, kv_heads, max_seq_len, head_dim] from ``zeros(shape, dtype)``.

    The one place caches are allocated: ``np.zeros`` (ONNX Runtime CPU), ``cupy.zeros`` (CUDA backends), a
    torch factory (PyTorch backend), or a calibration sample's host copy.
    """
    return {name: zeros(c.shape, c.dtype) for c in spec.caches for name in (c.past_key, c.past_value)}


def pad_feeds(feeds: dict, n: int, slots: int) -> dict:
    """Token feeds padded along the token axis to ``n`` rows: the positions go on counting (up to the last of the
    cache's ``slots``: the graph writes every row into its view of the cache), every other input repeats its last
    row. The real rows' outputs do not depend on the padding: attention is causal by position, every other op is per
    row. Exact mode pads decoding steps with it (``decode.py``; its steps never reach the last slots) and so do the
    PyTorch backends' compiled steps (a call of theirs that ends there, in --no-exact mode or an adapter call, may
    see a padded row in its last slot). Positions are host arrays; other feeds may be device arrays (``arrays.py``),
    and are padded where they are."""
    out = {}
    for name, a in feeds.items():
        extra = n - a.shape[1]
        if name == "position_ids":
            more = np.minimum(a[:, -1:] + np.arange(1, extra + 1, dtype=a.dtype), slots - 1)
            out[name] = np.concatenate([a, more], axis=1)
        else:
            out[name] = repeat_last(a, extra)
    return out


class GraphRunner(ABC):
    caches: dict  # past name -> preallocated buffer [1, kv_heads, max_seq_len, head_dim], owned by the runner

    def __init__(self, spec: GraphSpec) -> None:
        self.spec = spec
        self.max_seq_len = spec.caches[0].shape[2]

    def run(self, feeds: dict[str, np.ndarray], start: int, rows: int | None = None) -> dict[str, np.ndarray]:
        """Run on ``n`` new tokens at positions ``start .. start + n``; the caches must hold ``start`` valid slots.

        ``rows``: how many of the ``n`` are real (default all); only their cache rows are written.
        """
        n = next(iter(feeds.values())).shape[1]
        rows = n if rows is None else rows
        self.spec.check_feeds(feeds, n)
        if not 1 <= rows <= n:
            raise InputError(f"{self.spec.name} graph: {rows} real rows in a call of {n}")
        if start + n > self.max_seq_len:  # padded rows too: the graph writes every row into its copy of the cache
            raise InputError(f"{self.spec.name} graph: positions up to {start + n} exceed the KV cache of {self.max_seq_len}")
        return self._run(feeds, start, n, rows)

    @abstractmethod
    def _run(self, feeds: dict[str, np.ndarray], start: int, n: int, rows: int) -> dict[str, np.ndarray]:
        ...

    def close(self) -> None:
        """Drop the caches, buffers and runtime objects this runner holds (subclasses add theirs)."""
        self.caches = {}

    def _views(self, buffers: dict, n: int) -> dict:
        """Each max-size token buffer (name -> buffer) as its prefix for a call with ``n`` new tokens."""
        shapes = {t.name: t.concrete(n) for t in (*self.spec.token_inputs, *self.spec.outputs)}
        return {name: prefix_view(buffer, shapes[name]) for name, buffer in buffers.items()}

    def _write_rows(self, outputs: dict, start: int, rows: int) -> None:
        """Copy each layer's first ``rows`` new rows (``present_*``) into ``self.caches`` at slots ``start .. start + rows``.

        Works on numpy, CuPy and torch buffers alike; slots past the valid length stay stale and are never read.
        """
        for c in self.spec.caches:
            self.caches[c.past_key][:, :, start:start + rows] = outputs[c.present_key][:, :, :rows]
            self.caches[c.past_value][:, :, start:start + rows] = outputs[c.present_value][:, :, :rows]


class Backend(ABC):
    """One runtime on one device. ``open`` builds it from an engine directory; ``available`` says whether it can
    run on this machine. By default a backend is constructed from the graph files alone; backends that need more
    of the engine directory (plans, the source model) override ``open``.
    """

    name: ClassVar[str]
    device: ClassVar[str]
    precisions: ClassVar[tuple[str, ...]] = ("fp32", "fp16", "int8")  # the precisions it can run
    needs_onnx: ClassVar[bool] = True  # runs the ONNX graphs (False: rebuilds the modules, as the PyTorch backends)
    # True where outputs stay on a device and every host read of one waits for it (the CUDA backends; the PyTorch
    # backends): the decoder then chains a round's drafts on the device and reads the round back once
    # (``decode.py``). False where outputs are host arrays already (ONNX Runtime CPU): reading a draft's confidence
    # costs nothing, so the drafting rule may decide after every draft.
    resident: ClassVar[bool] = False

    @classmethod
    def can_run(cls, manifest: Manifest, precision: str) -> bool:
        """Whether this backend can run ``precision`` of an engine directory (not whether it is installed here)."""
        return precision in cls.precisions and (manifest.has_onnx(precision) or not cls.needs_onnx)
    # Exact mode (decode.py): precision -> the row count that makes this runtime's products give a row the same
    # bits whatever the row count of the call, where the export did not record one (its check finds the smallest
    # that works per model: runner/exactness.py). A precision not listed pads every step to max_verify rows.
    invariant_rows: ClassVar[dict[str, int]] = {}

    def exact_rows(self, precision: str, max_verify: int) -> int:
        """The row count exact mode pads decoding steps to on this backend and precision when none is recorded."""
        return self.invariant_rows.get(precision, max_verify)

    @classmethod
    def open(cls, engine: EngineRef, threads: int | None = None) -> "Backend":
        return cls(engine.graphs(), threads)

    @classmethod
    @abstractmethod
    def available(cls) -> bool:
        ...

    _runners: dict[str, GraphRunner]  # graph name -> its runner, filled by the subclass's constructor

    def graph(self, name: str) -> GraphRunner:
        return self._runners[name]

    def close(self) -> None:
        """Free every runner's caches, buffers and sessions now (device memory included); idempotent."""
        for runner in self._runners.values():
            runner.close()
        self._runners = {}
