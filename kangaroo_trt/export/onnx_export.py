"""PyTorch graph module -> ONNX file, with readable node names and the I/O contract of its ``GraphSpec``.

Uses the TorchScript-based exporter (``dynamo=False``): it names nodes after the module path
(``/deep/layers.7/self_attn/q_proj/MatMul``), which TensorRT logs and profiles quote, and exports in a
fraction of a second. Weights go to one external-data file beside the graph (``<graph>.onnx.data``), so
graphs of any size stay under protobuf's 2 GB limit.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from ..contract.spec import GraphSpec


class _Scoped(nn.Module):
    """Puts the graph's module under an attribute named after the graph, so node names start ``/deep/...``."""

    def __init__(self, name: str, module: nn.Module) -> None:
        super().__init__()
        self.scope = name
        self.add_module(name, module)

    def forward(self, *args):
        return getattr(self, self.scope)(*args)


def export_graph(module: nn.Module, spec: GraphSpec, path: Path, opset: int, vocab_size: int) -> None:
    """Trace ``module`` on example feeds derived from ``spec`` and write ``path`` (+ ``path.data``)."""
    feeds = spec.random_feeds(n=3, past_len=5, rng=np.random.default_rng(0), vocab_size=vocab_size)
    args = tuple(torch.from_numpy(feeds[name]) for name in spec.input_names)
    traced = Path(str(path) + ".tmp")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation chatter; errors still raise
        torch.onnx.export(
            _Scoped(spec.name, module), args, str(traced),
            input_names=spec.input_names, output_names=spec.output_names, dynamic_axes=spec.dynamic_axes(),
            opset_version=opset, dynamo=False, do_constant_folding=True,
        )
    model = onnx.load(str(traced))
    traced.unlink()
    for extra in traced.parent.glob(traced.name + "*"):  # external data the exporter may have spilled
        extra.unlink()
    model.graph.name = spec.name
    save_onnx(model, path)


def save_onnx(model: onnx.ModelProto, path: Path) -> None:
    """Write ``model`` to ``path`` with its weights in one external-data file ``<path>.data``, then check it."""
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + ".data", size_threshold=1024)
    onnx.checker.check_model(str(path))
