"""Response bodies, stream chunks and error bodies in the shapes of OpenAI's API.

Kangaroo's own numbers go in an extension field, ``kangaroo``, which OpenAI clients ignore (their response types
keep unknown fields as extras).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

FINISH_REASONS = {"eos": "stop", "stop": "stop", "max_new_tokens": "length", "cache_full": "length"}


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def kangaroo_extension(result) -> dict[str, Any]:
    """Tokens per deep pass and acceptance of one generation (``GenerationResult``)."""
    s = result.stats.to_dict()
    return {"mode": s["mode"], "gamma": s["gamma"], "tau": s["tau"], "deep_passes": s["rounds"],
            "tokens_per_deep_pass": s["mean_accepted"], "accepted_by_position": s["accepted_by_position"],
            "tokens_per_s": s["tokens_per_s"], "backend": s["backend"], "precision": s["precision"]}


def usage(result) -> dict[str, int]:
    prompt, completion = len(result.prompt_ids), len(result.output_ids)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def sse(data: dict[str, Any] | str) -> str:
    """One server-sent event."""
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


@dataclass
class Shape:
    """The bodies of one endpoint: chat completions or (legacy) completions."""

    chat: bool
    model: str
    id: str = field(default="")
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        self.id = self.id or f"{'chatcmpl' if self.chat else 'cmpl'}-{uuid.uuid4().hex}"

    def _envelope(self, obj: str, choices: list[dict]) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": choices}

    def response(self, text: str, result) -> dict[str, Any]:
        finish = FINISH_REASONS[result.stop_reason]
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                      "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        body = self._envelope("chat.completion" if self.chat else "text_completion", [choice])
        body["usage"] = usage(result)
        body["kangaroo"] = kangaroo_extension(result)
        return body

    def chunk(self, text: str | None = None, finish_reason: str | None = None, first: bool = False) -> dict[str, Any]:
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
            if text is not None:
                delta["content"] = text
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return self._envelope("chat.completion.chunk", [choice])
        return self._envelope("text_completion", [{"index": 0, "text": text or "", "logprobs": None,
                                                   "finish_reason": finish_reason}])

    def final_chunk(self, result) -> dict[str, Any]:
        body = self.chunk(None if self.chat else "", FINISH_REASONS[result.stop_reason])
        body["kangaroo"] = kangaroo_extension(result)
        return body

    def usage_chunk(self, result) -> dict[str, Any]:
        body = self._envelope("chat.completion.chunk" if self.chat else "text_completion", [])
        body["usage"] = usage(result)
        return body
