"""The frozen target model as teacher, run once per training set.

For every example it yields ``SequenceFeatures``: the token ids (prompt + response), the *raw* hidden
state after each requested exit layer (what the shallow graph hands the adapter), and the target's
top-k next-token distribution at every response position (what the adapter must imitate).

With ``self_distill`` the response of a chat example is the target's own greedy continuation (Hugging Face ``generate``,
batched with left padding), so the adapter learns what greedy decoding will actually say; hidden
states and logits are taken from that same generation pass, so the target runs only once.
Otherwise (and always for plain text) the given response is scored in one full-sequence forward pass.

Position bookkeeping (prompt length P, response r_0..r_{T-1}, n = P + T tokens): the adapter at
position i sees h_l[i] and predicts token i + 1, so the loss positions are P-1 .. n-2 (T of them) and
only h_l[0 .. n-2] is needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..chat import encode_chat
from ..errors import ConfigError
from .data import Example


@dataclass
class SequenceFeatures:
    index: int  # position of the example in the (shuffled) example list
    input_ids: torch.Tensor  # int32 [n]
    prompt_len: int  # P
    hidden: dict[int, torch.Tensor]  # exit layer -> fp16 [n-1, hidden]
    topk_ids: torch.Tensor  # int32 [T, k], teacher's top-k at positions P-1 .. n-2
    topk_probs: torch.Tensor  # fp16 [T, k]

    @property
    def response_len(self) -> int:
        return int(self.input_ids.shape[0]) - self.prompt_len

    def to_dict(self) -> dict:
        return dict(vars(self))


class _Enough(Exception):
    """Raised by a forward hook once the deepest requested layer has run: the rest of the model is not needed."""


def _topk(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    probs, ids = torch.softmax(logits.float(), dim=-1).topk(k, dim=-1)
    return ids.to(torch.int32), probs.to(torch.float16)


class Teacher:
    """The target model (Hugging Face implementation, fp32, frozen) and its tokenizer."""

    def __init__(self, model_dir: Path, device: str = "cpu") -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, local_files_only=True)
        self.model.to(device).eval().requires_grad_(False)
        self.device = device
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self.eos_ids = set(eos) if isinstance(eos, (list, tuple)) else {eos}
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self.eos_ids)

    def prompt_ids(self, example: Example) -> list[int]:
        """Token ids of the prompt exactly as ``KangarooEngine.encode(chat=True)`` makes them."""
        if not example.chat:
            return self.tokenizer(example.response, add_special_tokens=True)["input_ids"][:1]
        if not self.tokenizer.chat_template:
            raise ConfigError("the model's tokenizer has no chat template: give plain {\"text\": ...} records")
        return encode_chat(self.tokenizer, example.messages())

    def response_ids(self, example: Example, max_new_tokens: int) -> list[int]:
        if not example.chat:
            return self.tokenizer(example.response, add_special_tokens=True)["input_ids"][1:max_new_tokens + 1]
        ids = self.tokenizer(example.response, add_special_tokens=False)["input_ids"]
        return ids[:max_new_tokens] if len(ids) >= max_new_tokens else ids + [min(self.eos_ids)]

    @torch.no_grad()
    def score(self, index: int, prompt: list[int], response: list[int], exit_layers: tuple[int, ...],
              top_k: int) -> SequenceFeatures:
        """Features of a given response: one full-sequence forward pass of the target."""
        ids = torch.tensor([prompt + response], device=self.device)
        p, n = len(prompt), ids.shape[1]
        # the LM head (a fifth of the model) runs only on positions P-1 .. n-1, not on the prompt
        out = self.model(ids, output_hidden_states=True, logits_to_keep=n - p + 1)
        hidden = {l: out.hidden_states[l][0, :n - 1].to(torch.float16).cpu() for l in exit_layers}
        topk_ids, topk_probs = _topk(out.logits[0, :-1], top_k)
        return SequenceFeatures(index, ids[0].to(torch.int32).cpu(), p, hidden, topk_ids.cpu(), topk_probs.cpu())

    @torch.no_grad()
    def exit_states(self, input_ids: torch.Tensor, exit_layers: tuple[int, ...]) -> dict[int, torch.Tensor]:
        """Hidden states after ``exit_layers`` (fp16 [n-1, hidden]) for a whole sequence, from the layers below
        the deepest one only: adding an exit layer to a cache costs a shallow pass, not the teacher's full pass.

        For a scored response these equal what ``score`` stores (the same layers over the same tokens)."""
        captured: dict[int, torch.Tensor] = {}
        deepest = max(exit_layers)

        def keep(layer: int):
            def hook(module, args, output):
                captured[layer] = output[0] if isinstance(output, tuple) else output
                if layer == deepest:
                    raise _Enough
            return hook

        # hidden_states[l] of the full pass is the output of decoder layer l - 1
        handles = [self.model.model.layers[l - 1].register_forward_hook(keep(l)) for l in exit_layers]
        try:
            self.model(input_ids.to(self.device, torch.long)[None], logits_to_keep=1)
        except _Enough:
            pass
        finally:
            for handle in handles:
                handle.remove()
        n = input_ids.shape[0]
        return {l: captured[l][0, :n - 1].to(torch.float16).cpu() for l in exit_layers}

    @torch.no_grad()
    def generate(self, indices: list[int], prompts: list[list[int]], max_new_tokens: int,
                 exit_layers: tuple[int, ...], top_k: int) -> list[SequenceFeatures]:
        """Greedy self-distillation of a batch of prompts; features come from the same generation pass."""
        from transformers import GenerationConfig

        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for b, p in enumerate(prompts):  # left padding: every prompt ends at column width - 1
            ids[b, width - len(p):] = torch.tensor(p)
            mask[b, width - len(p):] = 1
        config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=sorted(self.eos_ids),
                                  pad_token_id=self.pad_id, return_dict_in_generate=True,
                                  output_hidden_states=True, output_logits=True)
        out = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                  generation_config=config)
        steps = out.sequences[:, width:].cpu()  # [B, T_max]
        features = []
        for b, p in enumerate(prompts):
            tokens = steps[b].tolist()
            t = next((i + 1 for i, tok in enumerate(tokens) if tok in self.eos_ids), len(tokens))  # cut after EOS
            hidden = {}
            for l in exit_layers:
                prompt_h = out.hidden_states[0][l][b, width - len(p):]  # [P, H]
                response_h = [out.hidden_states[s][l][b, 0] for s in range(1, t)]  # h of r_0 .. r_{T-2}
                hidden[l] = torch.cat([prompt_h, *[h[None] for h in response_h]]).to(torch.float16).cpu()
            logits = torch.stack([out.logits[s][b] for s in range(t)])  # [T, V]: the step that chose r_s
            topk_ids, topk_probs = _topk(logits, top_k)
            input_ids = torch.tensor(p + tokens[:t], dtype=torch.int32)
            features.append(SequenceFeatures(indices[b], input_ids, len(p), hidden, topk_ids.cpu(), topk_probs.cpu()))
        return features
