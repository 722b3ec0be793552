"""Export-shaped Llama building blocks with explicit, fixed-size KV caches.

Cache layout (one pair per attention layer): ``past_key`` / ``past_value`` of shape
``[1, kv_heads, max_seq_len, head_dim]``, preallocated by the runner. Slot ``i`` holds position ``i``;
only slots ``< past_len`` are valid, where ``past_len`` is the position of the first new token. A graph
never writes the cache buffers: it returns the new rows as ``present_key`` / ``present_value``
(``[1, kv_heads, n, head_dim]``) and the runner copies them to slots ``past_len .. past_len + n``.
Rolling back rejected tokens is therefore just lowering a length.

Attention is **slot-ordered**: inside the graph the new rows take their slots in a copy of the cache (a
``ScatterElements`` at their positions, never a concatenation that grows with the step), and every query
attends over the ``max_seq_len`` slots in slot order, masked causally by position::

    K = past_key with key's rows at slots position_ids                            [.., S_max, D]  (same for V)
    probs = softmax(q @ K^T * scale + mask)      mask: slot <= query position      (fp32)
    out   = probs @ V

So a key is reduced at the same place whichever call wrote it: a token verified in a multi-row pass sees
exactly the sums a one-row step would. With the same row count in every call of a generation (the
runner's exact mode, ``runner/rows.py``) the rows are bitwise invariant; ``kangaroo-check`` measures it.
Slots past the new rows hold stale values; they are masked, and their probabilities are exact zeros.

Norms, rotary and softmax run in fp32 whatever the weights' dtype, so the fp16 graphs keep them there.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from typing import NamedTuple

from ..config import ModelSpec

MASKED = torch.finfo(torch.float32).min


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight.float() * h).to(x.dtype)


class Rotary(nn.Module):
    """cos/sin tables for the given positions, computed in fp32 from the model's inverse frequencies."""

    def __init__(self, inv_freq: tuple[float, ...], scaling: float) -> None:
        super().__init__()
        self.register_buffer("inv_freq", torch.tensor(inv_freq, dtype=torch.float32), persistent=False)
        self.scaling = scaling

    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq  # [1, n, D/2]
        emb = torch.cat((freqs, freqs), dim=-1)  # [1, n, D]
        # [1, 1, n, D]: broadcast over heads
        return (emb.cos() * self.scaling)[:, None], (emb.sin() * self.scaling)[:, None]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    h = x.float()
    half = h.shape[-1] // 2
    rotated = torch.cat((-h[..., half:], h[..., :half]), dim=-1)
    return (h * cos + rotated * sin).to(x.dtype)


class Step(NamedTuple):
    """What every layer of one call shares: rotary tables, the slot mask, and the first new position."""

    cos: torch.Tensor
    sin: torch.Tensor
    mask: torch.Tensor  # [n, S] additive, fp32
    slots: torch.Tensor  # [n]: the cache slot of each new row (slot i holds position i)


def step_for(rotary: "Rotary", position_ids: torch.Tensor, max_seq_len: int) -> Step:
    """The shared tensors of a call on ``position_ids`` [1, n] (consecutive positions) over ``max_seq_len`` slots;
    every position must be a slot (< max_seq_len)."""
    cos, sin = rotary(position_ids)
    return Step(cos, sin, attention_mask(position_ids, max_seq_len), position_ids[0])


def attention_mask(position_ids: torch.Tensor, max_seq_len: int) -> torch.Tensor:
    """Additive fp32 mask ``[n, max_seq_len]``: a query at position q sees the slots ``<= q`` (slot i holds position i)."""
    pos = position_ids[0]  # [n]
    slots = torch.arange(max_seq_len, device=pos.device)
    ok = slots[None, :] <= pos[:, None]  # [n, S]
    zero = torch.zeros((), dtype=torch.float32, device=pos.device)  # on the graph's device: capturable on CUDA
    return torch.where(ok, zero, torch.full((), MASKED, device=pos.device))


def with_new_rows(cache: torch.Tensor, new: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """A copy of ``cache`` [1, kvH, S, D] with the n rows of ``new`` [1, kvH, n, D] at ``slots`` [n].

    One ``ScatterElements`` (a copy of the cache plus n rows, no data-dependent shape), so one CUDA graph or
    TensorRT profile serves every offset. The slots must be distinct and below S (the runner keeps padded rows
    inside the cache: ``Decoder.max_seq_len``).
    """
    return cache.scatter(2, slots.view(1, 1, -1, 1).expand_as(new), new)


class Attention(nn.Module):
    def __init__(self, hidden: int, heads: int, kv_heads: int, head_dim: int, qkv_bias: bool, out_bias: bool,
                 qk_norm_eps: float | None = None) -> None:
        """``qk_norm_eps``: RMSNorm each head's query and key before the rotary embedding (Qwen3), else None."""
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.q_proj = nn.Linear(hidden, heads * head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(hidden, kv_heads * head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(hidden, kv_heads * head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(heads * head_dim, hidden, bias=out_bias)
        if qk_norm_eps is not None:
            self.q_norm, self.k_norm = RMSNorm(head_dim, qk_norm_eps), RMSNorm(head_dim, qk_norm_eps)
        else:
            self.q_norm = self.k_norm = nn.Identity()

    def forward(self, x, step: Step, past_key, past_value):
        n = x.shape[1]
        kvh, g, d = self.kv_heads, self.heads // self.kv_heads, self.head_dim
        q = self.q_norm(self.q_proj(x).view(1, n, self.heads, d)).transpose(1, 2)  # [1, H, n, D]
        k = self.k_norm(self.k_proj(x).view(1, n, kvh, d)).transpose(1, 2)  # [1, kvH, n, D]
        v = self.v_proj(x).view(1, n, kvh, d).transpose(1, 2)
        q, k = apply_rotary(q, step.cos, step.sin), apply_rotary(k, step.cos, step.sin)
        # Slot-ordered attention over the cache with this call's rows in their slots (module docstring).
        keys, values = with_new_rows(past_key, k, step.slots), with_new_rows(past_value, v, step.slots)
        # GQA without repeating the cache: the g query heads of one kv head become g*n rows.
        qg = q.reshape(1, kvh, g * n, d)  # [1, kvH, g*n, D]
        scale = 1.0 / math.sqrt(d)
        scores = (qg @ keys.transpose(-1, -2)).float().view(1, kvh, g, n, -1) * scale + step.mask  # mask [n, S]
        probs = torch.softmax(scores, dim=-1).view(1, kvh, g * n, -1).to(v.dtype)
        out = probs @ values  # [1, kvH, g*n, D]
        out = out.view(1, self.heads, n, d).transpose(1, 2).reshape(1, n, self.heads * d)
        return self.o_proj(out), k, v


class MLP(nn.Module):
    def __init__(self, hidden: int, inner: int, bias: bool) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, inner, bias=bias)
        self.up_proj = nn.Linear(hidden, inner, bias=bias)
        self.down_proj = nn.Linear(inner, hidden, bias=bias)

    def forward(self, x):
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)
        self.self_attn = Attention(
            spec.hidden_size, spec.num_heads, spec.num_kv_heads, spec.head_dim, spec.attention_bias, spec.output_bias,
            spec.rms_norm_eps if spec.qk_norm else None,
        )
        self.post_attention_layernorm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)
        self.mlp = MLP(spec.hidden_size, spec.intermediate_size, spec.mlp_bias)

    def forward(self, x, step: Step, past_key, past_value):
        a, k, v = self.self_attn(self.input_layernorm(x), step, past_key, past_value)
        x = x + a
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, k, v
