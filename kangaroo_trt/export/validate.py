"""Parity of each exported graph with its PyTorch module, on random feeds, at several cache fills.

Float outputs must agree within ``atol + rtol * max|reference|`` (per precision). Integer outputs are
argmaxes of the LM head's logits: an id may differ only where the reference logits of the two ids are
within that same bound (a near-tie the precision cannot resolve); such flips are counted. The max errors
are returned so the manifest can record them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..contract.spec import GraphSpec
from ..errors import KangarooError

# (atol, rtol) per precision: rtol covers rounding accumulated over ~30 layers on random inputs (fp32 ~1e-4
# relative seen on SmolLM2), and fp16 rounding of O(1)-scale activations.
TOLERANCES = {"fp32": (1e-4, 1e-3), "fp16": (2e-2, 2e-2)}
# (n new tokens, past_len) cases: empty cache, a draft step, a verify step, a prefill chunk.
CASES = ((4, 0), (1, 5), (7, 9), (16, 3))


class ParityError(KangarooError):
    """An exported graph disagrees with its PyTorch module beyond the tolerance."""


@dataclass(frozen=True)
class Parity:
    graph: str
    precision: str
    max_abs_error: dict[str, float]

    def summary(self) -> str:
        worst = max(self.max_abs_error.items(), key=lambda kv: kv[1])
        return f"{self.graph}/{self.precision}: max |onnx - torch| = {worst[1]:.2e} ({worst[0]})"


def check_parity(module: nn.Module, spec: GraphSpec, onnx_path: Path, precision: str, vocab_size: int,
                 seed: int = 0) -> Parity:
    from ..runtimes import ort_session

    session = ort_session(onnx_path, threads=None)
    rng = np.random.default_rng(seed)
    max_seq_len = spec.caches[0].shape[2]
    errors: dict[str, float] = {name: 0.0 for name in spec.output_names}
    head_logits: list[torch.Tensor] = []  # the reference LM head output of the current case, if any
    head = getattr(module, "lm_head", None)
    hook = head.register_forward_hook(lambda _m, _i, out: head_logits.append(out.float())) if head is not None else None
    try:
        for n, past_len in CASES:
            n = min(n, max_seq_len - past_len)
            head_logits.clear()
            _check_case(module, spec, session, precision, rng.spawn(1)[0], vocab_size, n, past_len, head_logits, errors)
    finally:
        if hook is not None:
            hook.remove()
    return Parity(spec.name, precision, errors)


def _check_case(module, spec, session, precision, rng, vocab_size, n, past_len, head_logits, errors) -> None:
    atol, rtol = TOLERANCES[precision]
    feeds = spec.random_feeds(n, past_len, rng, vocab_size)
    with torch.no_grad():
        expected = module(*(torch.from_numpy(feeds[k]) for k in spec.input_names))
    actual = session.run(spec.output_names, feeds)
    for out, want, got in zip(spec.outputs, expected, actual):
        want = want.float().numpy() if want.is_floating_point() else want.numpy()
        if got.shape != want.shape:
            raise ParityError(f"{spec.name}/{precision}: output {out.name} has shape {got.shape}, torch gives {want.shape}")
        if np.issubdtype(want.dtype, np.integer):
            flips = _near_tie_flips(got, want, head_logits, atol, rtol, getattr(module, "draft_vocab", None))
            if flips is None:
                raise ParityError(f"{spec.name}/{precision}: output {out.name} differs beyond a near-tie "
                                  f"(n={n}, past_len={past_len})")
            errors[f"{out.name}:near_tie_flips"] = errors.get(f"{out.name}:near_tie_flips", 0) + flips
            continue
        err = float(np.abs(got.astype(np.float32) - want).max())
        bound = atol + rtol * float(np.abs(want).max())
        errors[out.name] = max(errors[out.name], err)
        if not err <= bound:
            raise ParityError(f"{spec.name}/{precision}: output {out.name} max |onnx - torch| = {err:.3e} > {bound:.3e} "
                              f"(n={n}, past_len={past_len})")


def _near_tie_flips(got: np.ndarray, want: np.ndarray, head_logits: list[torch.Tensor], atol: float, rtol: float,
                    head_vocab: torch.Tensor | None = None) -> int | None:
    """Number of differing ids, or None if one differs where the reference logits are not a near-tie.

    ``head_vocab``: the sorted token ids of the head's rows when it covers only part of the vocabulary.
    """
    got, want = got.reshape(-1), want.reshape(-1)
    bad = np.flatnonzero(got != want)
    if bad.size == 0:
        return 0
    if not head_logits:
        return None
    ref = head_logits[-1].numpy().reshape(got.size, -1)
    column = (lambda ids: np.searchsorted(head_vocab.numpy(), ids)) if head_vocab is not None else (lambda ids: ids)
    gap = ref[bad, column(want[bad])] - ref[bad, column(got[bad])]
    return int(bad.size) if (gap <= atol + rtol * float(np.abs(ref).max())).all() else None
