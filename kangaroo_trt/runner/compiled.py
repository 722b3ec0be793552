"""Compiled decoding steps for the PyTorch backends: ``torch.compile`` (Inductor) of a graph module plus its cache
write, at one static shape.

Why: run eagerly, every small op of the export-shaped modules (``model/layers.py``) is its own kernel on torch-cuda
(about 80 per layer). Exact mode already runs every decoding step's shallow and deep call at one row count
(``manifest.max_verify``), so one static shape per graph covers all decoding steps; Inductor fuses the norms,
rotary, masks, slot selection and softmax into a few kernels and calls the vendor GEMMs for the products.

What one compiled step computes, for a call padded to ``n = max_verify`` rows of which the first ``rows`` are real
(``rows`` lives in a tensor, so one compiled graph, and on CUDA one captured CUDA graph, serves every row count):

- the graph module itself, unchanged (the plain module's ``forward``; the adapter's ``draft_at``, which drafts from
  the last *real* row instead of the last row);
- the cache write, inside the compiled graph: row ``i`` goes to slot ``position_ids[i]`` for ``i < rows``; the padded
  rows are redirected to the last real row and its slot, so every index written is written with one value (no
  data race, no padded row reaches the cache, no slot past the cache is addressed).

Only the real rows of the token outputs are returned (``GraphRunner`` slices them). Prefill chunks (``n >
max_verify``) run the plain modules eagerly. The ONNX export never sees any of this: it traces the plain modules.

Numerics: Inductor fuses and reorders the elementwise work and reductions (RMSNorm means, softmax sums), so a
compiled step's bits differ from the plain modules' in the last places; greedy tokens agree on the test models
(``tests/test_compiled.py``). Within a generation every decoding step runs the same compiled graph at the same shape,
so exact mode's bitwise Kangaroo == AR holds on the compiled path as on the plain one (measured on torch-cpu).

Status: built and tested on CPU only (Inductor's C++ backend, torch 2.13 CPU). The CUDA path (Triton kernels, then
the runner's CUDA-graph capture of the compiled step) is written for an NVIDIA H200 with torch 2.11 + Triton and
has **not run**: no GPU was available when it was written. ``scripts/ops_per_step.py`` counts kernels there.
"""

from __future__ import annotations

import itertools
import os
import types

from ..contract.spec import GraphSpec
from ..errors import BackendError

COMPILE_ENV = "KANGAROO_TRT_COMPILE"  # 1: compile the decoding steps; 0 (default): the plain modules
MODE_ENV = "KANGAROO_TRT_COMPILE_MODE"  # torch.compile mode (default "default")
MODES = ("default", "max-autotune-no-cudagraphs")  # never Inductor's own CUDA graphs: the runner captures its own

_fresh = itertools.count()


def compile_enabled(requested: bool | None) -> bool:
    """Whether to compile: ``requested`` if given, else ``KANGAROO_TRT_COMPILE`` (off unless ``1``).

    Off by default on both devices: on CPU the plain modules are the numerical reference and compiling costs tens of
    seconds per graph at open; on CUDA the compiled path has not yet run on a GPU (module docstring)."""
    if requested is not None:
        return requested
    value = os.environ.get(COMPILE_ENV, "0")
    if value not in ("0", "1"):
        raise BackendError(f"{COMPILE_ENV} must be 0 or 1, got {value!r}")
    return value == "1"


def compile_mode() -> str:
    mode = os.environ.get(MODE_ENV, "default")
    if mode not in MODES:
        raise BackendError(f"{MODE_ENV} must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


def _own_code(fn):
    """``fn`` with a code object of its own: Dynamo caches compiled graphs per code object (and limits recompiles
    per code object), so each runner's step gets its own cache instead of sharing one across graphs and engines."""
    code = fn.__code__.replace(co_name=f"{fn.__name__}_{next(_fresh)}")
    return types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)


def step_function(module, spec: GraphSpec, n: int):
    """The uncompiled step of ``module`` at ``n`` rows: ``step(tokens, caches, rows) -> token outputs``.

    ``tokens``: the token inputs in ``spec.token_inputs`` order, [1, n, ...]; ``caches``: the past buffers in
    ``spec.caches`` order (key, value per layer), written in place; ``rows``: int64 [1], the real row count.
    Returns the token outputs in ``spec.token_outputs`` order, at their ``n``-row shapes.
    """
    import torch

    token_names = [t.name for t in spec.token_inputs]
    cache_names = [name for c in spec.caches for name in (c.past_key, c.past_value)]
    adapter = spec.name == "adapter"

    def step(tokens, caches, rows):
        feeds = dict(zip(token_names, tokens)) | dict(zip(cache_names, caches))
        args = [feeds[name] for name in spec.input_names]
        last = rows - 1
        outputs = module.draft_at(*args, row=last) if adapter else module(*args)
        outputs = dict(zip(spec.output_names, outputs))
        # Rows past the real ones rewrite the last real row into its own slot: one value per index written.
        take = torch.minimum(torch.arange(n, device=last.device), last)
        slots = feeds["position_ids"][0].index_select(0, take)
        for c in spec.caches:
            feeds[c.past_key].index_copy_(2, slots, outputs[c.present_key].index_select(2, take))
            feeds[c.past_value].index_copy_(2, slots, outputs[c.present_value].index_select(2, take))
        return tuple(outputs[t.name] for t in spec.token_outputs)

    return step


def compile_step(module, spec: GraphSpec, n: int, mode: str | None = None):
    """``step_function`` compiled by Inductor: full graph, static shapes (``dynamic=False``)."""
    import torch

    return torch.compile(_own_code(step_function(module, spec, n)), mode=mode or compile_mode(), fullgraph=True,
                         dynamic=False)


def can_pad(spec: GraphSpec, n: int) -> bool:
    """Whether calls of this graph can be padded to ``n`` rows: the head must cover all ``n`` (``head_rows``), so
    that the real rows' outputs are among the padded call's; the adapter drafts from its last real row (``draft_at``)."""
    return spec.name == "adapter" or spec.head_rows is None or spec.head_rows >= n
