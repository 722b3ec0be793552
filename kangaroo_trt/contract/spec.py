"""Each graph's I/O contract, declared once.

``graph_specs`` returns one ``GraphSpec`` per graph; the ONNX input/output names and dynamic axes, the
export's example inputs, the parity check's random feeds, the runner's preallocated buffers, feed
validation and TensorRT optimisation profiles are all derived from it. The only dynamic dimension is
``n``, the number of new tokens in a call (prefill chunk, draft step, verify step). Head outputs are
computed for the last ``min(n, rows)`` tokens only (``Capped``): the adapter's for the last one (a draft
step uses nothing else), the deep graph's for up to ``max_verify`` (a verify step's whole window), so a
prefill chunk never pays for LM-head rows nobody reads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import AdapterSpec, ExportConfig, ModelSpec
from ..errors import EngineDirError, InputError

NEW_TOKENS = "n"


@dataclass(frozen=True)
class Capped:
    """The dimension ``min(n, rows)``: a head output computed for the last ``rows`` new tokens only.

    ``str()`` gives its symbolic name in the ONNX graphs and the manifest (``min(n,8)``), ``parse`` reads it back.
    """

    rows: int

    def __str__(self) -> str:
        return f"min({NEW_TOKENS},{self.rows})"

    @classmethod
    def parse(cls, name: str) -> "Capped":
        match = re.fullmatch(rf"min\({NEW_TOKENS},(\d+)\)", name)
        if match is None:
            raise ValueError(f"unknown dimension {name!r}")
        return cls(int(match.group(1)))


Dim = int | str | Capped  # a fixed size, NEW_TOKENS, or min(NEW_TOKENS, rows)


def _size(dim: Dim, n: int) -> int:
    if dim == NEW_TOKENS:
        return n
    if isinstance(dim, Capped):
        return min(n, dim.rows)
    return dim


def _dim_from_json(value: int | str) -> Dim:
    if isinstance(value, int) or value == NEW_TOKENS:
        return value
    try:
        return Capped.parse(value)
    except (TypeError, ValueError) as err:
        raise EngineDirError(f"a graph spec has an unknown dimension {value!r}: rebuild the engine directory") from err
# Graph I/O dtype per precision (torch and numpy names). int8 graphs quantize weights and activations inside (Q/DQ
# nodes) but keep fp32 inputs, outputs and caches, so the runner's buffers are those of the fp32 graphs.
FLOAT_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "int8": "float32"}
# Where the hidden states cross the host (numpy, between graphs) in another dtype: numpy has no bfloat16, so bf16
# hidden states travel as float32 (widening bf16 is exact; the PyTorch runner narrows them back). Caches stay bf16.
HOST_DTYPES = {**FLOAT_DTYPES, "bf16": "float32"}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name
    shape: tuple[Dim, ...]  # int: fixed; NEW_TOKENS or Capped: dynamic

    def concrete(self, n: int) -> tuple[int, ...]:
        return tuple(_size(d, n) for d in self.shape)


@dataclass(frozen=True)
class CacheSpec:
    """One attention layer's cache: a preallocated ``past`` buffer and the ``present`` rows a call returns."""

    layer: int
    past_key: str
    past_value: str
    present_key: str
    present_value: str
    shape: tuple[int, int, int, int]  # [1, kv_heads, max_seq_len, head_dim]
    dtype: str


@dataclass(frozen=True)
class GraphSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    caches: tuple[CacheSpec, ...]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    @property
    def token_inputs(self) -> tuple[TensorSpec, ...]:
        """Inputs that carry the new tokens (everything but the caches)."""
        cache = {c.past_key for c in self.caches} | {c.past_value for c in self.caches}
        return tuple(t for t in self.inputs if t.name not in cache)

    @property
    def token_outputs(self) -> tuple[TensorSpec, ...]:
        cache = {c.present_key for c in self.caches} | {c.present_value for c in self.caches}
        return tuple(t for t in self.outputs if t.name not in cache)

    @property
    def head_rows(self) -> int | None:
        """How many of the last new tokens the head outputs cover (None: all of them)."""
        dims = [d for t in self.token_outputs for d in t.shape if isinstance(d, Capped)]
        return dims[0].rows if dims else None

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {t.name: {i: str(d) for i, d in enumerate(t.shape) if not isinstance(d, int)}
                for t in (*self.inputs, *self.outputs) if not all(isinstance(d, int) for d in t.shape)}

    def check_feeds(self, feeds: dict, n: int) -> None:
        """Refuse feeds whose names, dtypes or shapes differ from the contract (one line, names the tensor). Feeds are
        numpy arrays, or arrays on a device (CuPy, torch) that an earlier graph call returned."""
        for t in self.token_inputs:
            if t.name not in feeds:
                raise InputError(f"{self.name} graph: missing input {t.name!r}")
            a = feeds[t.name]
            dtype = str(a.dtype).removeprefix("torch.")  # torch.float32 -> float32; numpy and CuPy name it so already
            if dtype != t.dtype or tuple(a.shape) != t.concrete(n):
                raise InputError(f"{self.name} graph: input {t.name!r} is {dtype}{list(a.shape)}, expected {t.dtype}{list(t.concrete(n))}")

    def random_feeds(self, n: int, past_len: int, rng: np.random.Generator, vocab_size: int) -> dict[str, np.ndarray]:
        """Random but valid feeds: caches are random in every slot, so masking of stale slots is exercised."""
        feeds = {}
        for t in self.inputs:
            shape = t.concrete(n)
            if t.name == "input_ids":
                feeds[t.name] = rng.integers(0, vocab_size, shape, dtype=np.int64)
            elif t.name == "position_ids":
                feeds[t.name] = np.arange(past_len, past_len + n, dtype=np.int64)[None]
            else:
                feeds[t.name] = rng.standard_normal(shape).astype(t.dtype)
        return feeds

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "inputs": [{"name": t.name, "dtype": t.dtype, "shape": _shape_json(t)} for t in self.inputs],
            "outputs": [{"name": t.name, "dtype": t.dtype, "shape": _shape_json(t)} for t in self.outputs],
            "caches": [{**c.__dict__, "shape": list(c.shape)} for c in self.caches],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GraphSpec":
        tensors = lambda items: tuple(TensorSpec(t["name"], t["dtype"], tuple(map(_dim_from_json, t["shape"])))  # noqa: E731
                                      for t in items)
        caches = tuple(CacheSpec(**{**c, "shape": tuple(c["shape"])}) for c in d["caches"])
        return cls(d["name"], tensors(d["inputs"]), tensors(d["outputs"]), caches)


def _shape_json(t: TensorSpec) -> list[int | str]:
    return [d if isinstance(d, int) else str(d) for d in t.shape]


def _caches(layers: range, kv_heads: int, head_dim: int, max_seq_len: int, dtype: str) -> tuple[CacheSpec, ...]:
    shape = (1, kv_heads, max_seq_len, head_dim)
    return tuple(CacheSpec(i, f"past_key.{i}", f"past_value.{i}", f"present_key.{i}", f"present_value.{i}", shape, dtype)
                 for i in layers)


def _cache_io(caches: tuple[CacheSpec, ...]) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    past, present = [], []
    for c in caches:
        _, kvh, _, d = c.shape
        past += [TensorSpec(c.past_key, c.dtype, c.shape), TensorSpec(c.past_value, c.dtype, c.shape)]
        present += [TensorSpec(c.present_key, c.dtype, (1, kvh, NEW_TOKENS, d)),
                    TensorSpec(c.present_value, c.dtype, (1, kvh, NEW_TOKENS, d))]
    return tuple(past), tuple(present)


def graph_specs(model: ModelSpec, adapter: AdapterSpec, export: ExportConfig, precision: str) -> dict[str, GraphSpec]:
    f = FLOAT_DTYPES[precision]
    s, l, n = export.max_seq_len, export.exit_layer, NEW_TOKENS
    draft_rows, verify_rows = Capped(1), Capped(export.max_verify)
    ids = TensorSpec("input_ids", "int64", (1, n))
    pos = TensorSpec("position_ids", "int64", (1, n))
    hidden = TensorSpec("hidden", HOST_DTYPES[precision], (1, n, model.hidden_size))

    shallow_c = _caches(range(l), model.num_kv_heads, model.head_dim, s, f)
    adapter_c = _caches(range(1), adapter.num_kv_heads, adapter.head_dim, s, f)
    deep_c = _caches(range(l, model.num_layers), model.num_kv_heads, model.head_dim, s, f)
    (sp, sq), (ap, aq), (dp, dq) = _cache_io(shallow_c), _cache_io(adapter_c), _cache_io(deep_c)
    return {
        "shallow": GraphSpec("shallow", (ids, pos, *sp), (hidden, *sq), shallow_c),
        "adapter": GraphSpec("adapter", (hidden, pos, *ap),
                             (TensorSpec("draft_ids", "int64", (1, draft_rows)),
                              TensorSpec("draft_confidence", "float32", (1, draft_rows)), *aq),
                             adapter_c),
        "deep": GraphSpec("deep", (hidden, pos, *dp),
                          (TensorSpec("logits", "float32", (1, verify_rows, model.vocab_size)),
                           TensorSpec("target_ids", "int64", (1, verify_rows)), *dq),
                          deep_c),
    }
