"""Optional third method: transformers ``generate`` (greedy, PyTorch eager, fp32) on the engine's source model.

It decodes the same prompt ids as the engine. Its tokens are compared with AR's for information only:
a different runtime may break a near-tie the other way, so it is not part of the lossless check.
"""

from __future__ import annotations

from pathlib import Path
from time import perf_counter

from ..config import DecodeConfig
from ..runner.api import GenerationResult, KangarooEngine
from ..runner.stats import AcceptanceLog, GenerationStats


class TransformersBaseline:
    """Greedy ``generate`` of the source model in PyTorch; satisfies ``runner.Baseline``."""

    name = "hf"

    def __init__(self, model_dir: Path, tokenizer, eos_ids: tuple[int, ...], threads: int | None = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        if threads:
            torch.set_num_threads(threads)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.tokenizer, self.eos_ids = tokenizer, tuple(eos_ids)

    @classmethod
    def for_engine(cls, engine: KangarooEngine, threads: int | None = None) -> "TransformersBaseline":
        """Load the model the engine was exported from (its recorded weights digest checked)."""
        from ..runner.backend import EngineRef

        model_dir = EngineRef(engine.directory, engine.manifest, engine.precision).source_model_dir()
        return cls(model_dir, engine.tokenizer, engine.manifest.eos_token_ids, threads)

    def generate(self, prompt_ids: list[int], max_new_tokens: int) -> GenerationResult:
        import torch

        ids = torch.tensor([prompt_ids], dtype=torch.long)
        start = perf_counter()
        with torch.inference_mode():
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, num_beams=1,
                                      max_new_tokens=max_new_tokens, eos_token_id=list(self.eos_ids),
                                      pad_token_id=self.eos_ids[0])
        total = perf_counter() - start
        tokens = out[0, len(prompt_ids):].tolist()
        stop = "eos" if tokens and tokens[-1] in self.eos_ids else "max_new_tokens"
        stats = GenerationStats(config=DecodeConfig(mode="ar", tau=0.0, max_new_tokens=max_new_tokens), mode=self.name,
                                backend="transformers", device="cpu", precision="fp32", new_tokens=len(tokens),
                                prompt_tokens=len(prompt_ids), total_s=total, prefill_s=0.0, draft_s=0.0, verify_s=0.0,
                                acceptance=AcceptanceLog())
        return GenerationResult(list(prompt_ids), tokens, self.tokenizer.decode(tokens, skip_special_tokens=True),
                                stop, stats)
