"""SmoothQuant (Xiao et al., arXiv 2211.10438) folded into the fp32 modules before INT8 export.

LLM activations have a few outlier channels; one per-tensor INT8 scale sized for them crushes every other
channel. SmoothQuant moves that range into the weights with an exact rewrite: for a linear ``y = W x``
fed by a scalable producer, ``x_j / s_j`` and ``W[:, j] * s_j`` give the same ``y``, with
``s_j = max|x_j| ** alpha / max|W[:, j]| ** (1 - alpha)``. The producers used here:

* RMSNorm before q/k/v (``input_layernorm``) and before gate/up (``post_attention_layernorm``): the norm's
  weight is divided by ``s`` (shared by the projections that read it);
* ``up_proj`` before ``down_proj``: ``down``'s input is ``SiLU(gate) * up``, so row ``j`` of ``up`` (and its
  bias) is divided by ``s_j``.

The rewritten modules compute the same function (up to fp32 rounding); only the INT8 export uses them.
``max|x_j|`` comes from running the modules on the captured calibration samples.

``ALPHA`` and leaving down_proj's input unsmoothed (it stays fp32 in W8A8 graphs) were chosen by measurement:
bench/results/README.md, "INT8 design measurements".
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..contract.spec import GraphSpec
from ..model.graphs import KangarooModules
from .capture import Sample

ALPHA = 0.5


def _scales(amax_x: torch.Tensor, weights: list[torch.Tensor], alpha: float) -> torch.Tensor:
    amax_w = torch.stack([w.detach().abs().amax(0).float() for w in weights]).amax(0)
    s = amax_x.clamp(min=1e-5) ** alpha / amax_w.clamp(min=1e-5) ** (1 - alpha)
    return s.clamp(1e-4, 1e4)


def smooth(modules: KangarooModules, samples: dict[str, list[Sample]], specs: dict[str, GraphSpec],
           alpha: float = ALPHA) -> KangarooModules:
    """A smoothed fp32 copy of ``modules`` (same function; activations easier to quantize per tensor)."""
    out = copy.deepcopy(modules)
    amax = _collect(out, samples, specs)
    with torch.no_grad():
        for module in out.modules():
            attn, mlp = getattr(module, "self_attn", None), getattr(module, "mlp", None)
            if attn is not None and attn.q_proj in amax:
                projections = [attn.q_proj, attn.k_proj, attn.v_proj]
                s = _scales(amax[attn.q_proj], [p.weight for p in projections], alpha)
                module.input_layernorm.weight.div_(s.to(module.input_layernorm.weight.dtype))
                for p in projections:
                    p.weight.mul_(s)
            if mlp is not None and mlp.gate_proj in amax:
                s = _scales(amax[mlp.gate_proj], [mlp.gate_proj.weight, mlp.up_proj.weight], alpha)
                module.post_attention_layernorm.weight.div_(s)
                mlp.gate_proj.weight.mul_(s)
                mlp.up_proj.weight.mul_(s)
            if mlp is not None and mlp.down_proj in amax:
                s = _scales(amax[mlp.down_proj], [mlp.down_proj.weight], alpha)
                mlp.up_proj.weight.div_(s[:, None])
                if mlp.up_proj.bias is not None:
                    mlp.up_proj.bias.div_(s)
                mlp.down_proj.weight.mul_(s)
    return out


def _collect(modules: KangarooModules, samples: dict[str, list[Sample]],
             specs: dict[str, GraphSpec]) -> dict[nn.Module, torch.Tensor]:
    """Run each graph module on its samples and record the per-channel max |input| of q/gate/down_proj."""
    seen: dict[nn.Module, torch.Tensor] = {}

    def record(module, args):
        x = args[0].detach()
        amax = x.abs().reshape(-1, x.shape[-1]).amax(0).float()
        seen[module] = torch.maximum(seen[module], amax) if module in seen else amax

    targets = [m for name, m in modules.named_modules() if name.endswith(("q_proj", "gate_proj", "down_proj"))]
    hooks = [m.register_forward_pre_hook(record) for m in targets]
    try:
        with torch.no_grad():
            for graph_name, graph in modules.graphs().items():
                spec = specs[graph_name]
                for sample in samples.get(graph_name, []):
                    feeds = sample.feeds(spec)
                    graph(*(torch.from_numpy(feeds[k]) for k in spec.input_names))
    finally:
        for h in hooks:
            h.remove()
    return seen
