"""The three Kangaroo graphs as PyTorch modules, shaped exactly like their ONNX exports.

::

    input_ids ─► shallow: embed + layers[0:l] ─► exit hidden f (raw, no final norm)
                                                   │
                     ┌─────────────────────────────┴───────────────────────┐
                     ▼                                                     ▼
    adapter: f + Attn(RMSNorm_1(f)) ─► RMSNorm_2 ─► LM head      deep: layers[l:L] ─► norm ─► LM head
             ─► draft_ids, draft_confidence                             ─► logits, target_ids

(The adapter's MLP variant inserts ``+ MLP(RMSNorm(.))`` before RMSNorm_2, see ``AdapterLayer``.)

Every graph takes ``position_ids [1, n]`` and its caches ``past_key.{i}``/``past_value.{i}`` in layer order
(absolute layer index; the adapter's one layer is ``0``) and returns ``present_key.{i}``/``present_value.{i}``.
See ``layers.py`` for the cache contract.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import AdapterSpec, ModelSpec
from .layers import MLP, Attention, DecoderLayer, RMSNorm, Rotary, Step, step_for


def _run_layers(layers: nn.ModuleDict, x, position_ids, rotary: Rotary, past: tuple[torch.Tensor, ...]):
    """Run ``layers`` in order; ``past`` holds (key, value) per layer. Returns x and the new rows per layer."""
    step = step_for(rotary, position_ids, past[0].shape[2])
    present = []
    for j, layer in enumerate(layers.values()):
        x, k, v = layer(x, step, past[2 * j], past[2 * j + 1])
        present += [k, v]
    return x, present


def _last(x: torch.Tensor, rows: int | None) -> torch.Tensor:
    """The last ``rows`` positions of ``x`` [1, n, H] (all of them if fewer, or if rows is None)."""
    return x if rows is None else x[:, -rows:]


def _greedy_head(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """argmax ids and their softmax probability (1 / sum exp(logit - max)), in fp32."""
    top = logits.max(dim=-1)
    confidence = 1.0 / torch.exp(logits - top.values[..., None]).sum(-1)
    return top.indices, confidence


class ShallowGraph(nn.Module):
    """embedding + layers[0:exit_layer] -> the raw exit hidden state (the draft and the deep graph share it)."""

    def __init__(self, spec: ModelSpec, exit_layer: int) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(spec.vocab_size, spec.hidden_size)
        self.rotary = Rotary(spec.rope_inv_freq, spec.rope_scaling)
        self.layers = nn.ModuleDict({str(i): DecoderLayer(spec) for i in range(exit_layer)})

    def forward(self, input_ids, position_ids, *past):
        x, present = _run_layers(self.layers, self.embed_tokens(input_ids), position_ids, self.rotary, past)
        return (x, *present)


class AdapterLayer(nn.Module):
    """``x + Attn(RMSNorm_1(x))``: one attention block, no MLP (key names follow the official checkpoint).

    With ``spec.mlp_size`` (this project's variant) the block also has ``x + MLP(RMSNorm(x))``, Llama's
    post-attention half. It is applied by ``feed_forward``, separately: no later layer reads the adapter's
    output at other positions, so the graph runs the MLP only on the rows whose draft it returns.
    """

    def __init__(self, spec: AdapterSpec) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)
        self.self_attn = Attention(
            spec.hidden_size, spec.num_heads, spec.num_kv_heads, spec.head_dim, spec.attention_bias, False,
            spec.rms_norm_eps if spec.qk_norm else None,
        )
        if spec.mlp_size:
            self.post_attention_layernorm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)
            self.mlp = MLP(spec.hidden_size, spec.mlp_size, spec.mlp_bias)
        else:
            self.mlp = None

    def forward(self, x, step: Step, past_key, past_value):
        a, k, v = self.self_attn(self.input_layernorm(x), step, past_key, past_value)
        return x + a, k, v

    def feed_forward(self, x):
        return x if self.mlp is None else x + self.mlp(self.post_attention_layernorm(x))


class AdapterGraph(nn.Module):
    """Second early exit: adapter layer + its own RMSNorm_2 + the target's (frozen) LM head.

    With ``spec.draft_vocab_size = K`` the head keeps only the K rows of ``draft_vocab`` (sorted token ids):
    drafts are argmaxes over those tokens, mapped back to full-vocabulary ids, and the confidence is the
    softmax over those K logits. Drafting gets cheaper; verification (the deep graph) is unchanged.
    """

    def __init__(self, model: ModelSpec, spec: AdapterSpec) -> None:
        super().__init__()
        self.rotary = Rotary(model.rope_inv_freq, model.rope_scaling)
        self.layers = nn.ModuleDict({"0": AdapterLayer(spec)})
        self.norm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)
        self.lm_head = nn.Linear(model.hidden_size, spec.draft_vocab_size or model.vocab_size, bias=False)
        if spec.draft_vocab_size:
            self.register_buffer("draft_vocab", torch.zeros(spec.draft_vocab_size, dtype=torch.int64))
        else:
            self.draft_vocab = None

    def logits(self, hidden, position_ids, *past, rows: int | None = None):
        """Head logits (over ``draft_vocab`` when restricted) of the last ``rows`` positions (all if None), and
        the new cache rows."""
        x, present = _run_layers(self.layers, hidden, position_ids, self.rotary, past)
        return self.head(_last(x, rows)), present

    def head(self, x):
        """fp32 head logits of attention outputs ``x``: the MLP (if any), RMSNorm_2 and the (draft) LM head."""
        return self.lm_head(self.norm(self.layers["0"].feed_forward(x))).float()

    def forward(self, hidden, position_ids, past_key, past_value):
        """Draft from the last position only (a catch-up call's earlier rows only fill the cache)."""
        logits, present = self.logits(hidden, position_ids, past_key, past_value, rows=1)
        draft_ids, draft_confidence = _greedy_head(logits)
        if self.draft_vocab is not None:
            draft_ids = self.draft_vocab[draft_ids]  # head row -> token id
        return (draft_ids, draft_confidence, *present)

    def draft_at(self, hidden, position_ids, past_key, past_value, row):
        """``forward``'s outputs, drafting from position index ``row`` (int64 [1]) instead of the last one.

        Not exported: the PyTorch backends' compiled steps (``runner/compiled.py``) pad a call past its real rows and
        draft from the last real one. The adapter's rows do not see later rows (causal), so the draft is the one
        ``forward`` gives on the unpadded call.
        """
        x, present = _run_layers(self.layers, hidden, position_ids, self.rotary, (past_key, past_value))
        draft_ids, draft_confidence = _greedy_head(self.head(x.index_select(1, row)))
        if self.draft_vocab is not None:
            draft_ids = self.draft_vocab[draft_ids]
        return (draft_ids, draft_confidence, *present)


class DeepGraph(nn.Module):
    """layers[exit_layer:L] + final norm + LM head: the exact verifier.

    ``verify_rows``: the head runs on the last ``min(n, verify_rows)`` positions only (all if None), enough
    for any verify step; a prefill chunk's other rows only fill the cache.
    """

    def __init__(self, spec: ModelSpec, exit_layer: int, verify_rows: int | None = None) -> None:
        super().__init__()
        self.verify_rows = verify_rows
        self.rotary = Rotary(spec.rope_inv_freq, spec.rope_scaling)
        self.layers = nn.ModuleDict({str(i): DecoderLayer(spec) for i in range(exit_layer, spec.num_layers)})
        self.norm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)
        self.lm_head = nn.Linear(spec.hidden_size, spec.vocab_size, bias=False)

    def forward(self, hidden, position_ids, *past):
        x, present = _run_layers(self.layers, hidden, position_ids, self.rotary, past)
        logits = self.lm_head(self.norm(_last(x, self.verify_rows))).float()
        return (logits, logits.argmax(dim=-1), *present)


class KangarooModules(nn.Module):
    """The three graphs together; its state-dict names are what ``weights.py`` maps checkpoints onto."""

    def __init__(self, model: ModelSpec, adapter: AdapterSpec, exit_layer: int, verify_rows: int | None = None) -> None:
        super().__init__()
        self.model_spec, self.adapter_spec, self.exit_layer = model, adapter, exit_layer
        self.shallow = ShallowGraph(model, exit_layer)
        self.adapter = AdapterGraph(model, adapter)
        self.deep = DeepGraph(model, exit_layer, verify_rows)

    def graphs(self) -> dict[str, nn.Module]:
        return {"shallow": self.shallow, "adapter": self.adapter, "deep": self.deep}

    def to_dtype(self, dtype: torch.dtype) -> "KangarooModules":
        """A copy in ``dtype`` (fp16 for the fp16 graphs, bf16 for the PyTorch backends' bf16); rotary tables stay fp32
        (norms, rotary and softmax compute in fp32 in every dtype, ``layers.py``)."""
        import copy

        other = copy.deepcopy(self).to(dtype)
        for graph in other.graphs().values():
            graph.rotary.inv_freq = self.shallow.rotary.inv_freq.clone()
        return other
