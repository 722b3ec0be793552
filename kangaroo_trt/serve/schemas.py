"""Request bodies of the OpenAI API, validated: unknown fields are ignored, invalid ones become a 400.

Types are strict (``"5"`` is not an integer), as OpenAI's API is. Fields this server knows but cannot honour
(``n`` > 1, log-probabilities, penalties, ``logit_bias``, ``echo``, ``suffix``, ``best_of`` > 1, ``tools``, a
``response_format`` other than text) are refused rather than ignored, so that a client never silently gets something
other than what it asked for; their neutral values (``tool_choice: "none"`` or ``"auto"``,
``response_format: {"type": "text"}``) are accepted. Text must encode as UTF-8 (JSON's ``"\\ud800"`` escape gives
a lone surrogate, which does not). ``top_k`` is an extension (as in vLLM).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..errors import InputError
from ..textio import check_json_text
from .worker import Sampling


class Unsupported(ValueError):
    """A known field with a value this server does not implement."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


def _utf8(value):
    """A field's text (a string, or a list of them) that encodes as UTF-8."""
    try:
        return check_json_text(value, "the text")
    except InputError as err:
        raise ValueError(str(err)) from err


class StreamOptions(_Body):
    include_usage: bool = False


class ContentPart(_Body):
    type: Literal["text"]
    text: str

    _text_utf8 = field_validator("text")(_utf8)


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart]

    _content_utf8 = field_validator("content")(_utf8)

    @field_validator("content")
    @classmethod
    def _not_empty_list(cls, content):
        if isinstance(content, list) and not content:
            raise ValueError("content must be a string or a non-empty list of text parts")
        return content

    def as_dict(self) -> dict[str, str]:
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class _Generation(_Body):
    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)  # OpenAI's default; 0 decodes greedily
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, Any] | None = None

    _text_utf8 = field_validator("model", "stop")(_utf8)

    @model_validator(mode="after")
    def _check_stop(self):
        stops = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop must be a non-empty string or a list of at most 4 non-empty strings")
        return self

    def unsupported(self) -> None:
        """Raise ``Unsupported`` for a known field this server cannot honour."""
        if self.n != 1:
            raise Unsupported("n", "n must be 1: one choice per request")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                raise Unsupported(name, f"{name} is not supported: leave it at 0")
        if self.logit_bias:
            raise Unsupported("logit_bias", "logit_bias is not supported: leave it out")

    def sampling(self, max_tokens: int | None = None) -> Sampling:
        stops = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return Sampling(max_tokens if max_tokens is not None else self.max_tokens, self.temperature, self.top_p,
                        self.top_k, self.seed, stops)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_Generation):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)  # the newer name of max_tokens
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None

    def unsupported(self) -> None:
        super().unsupported()
        for name in ("logprobs", "top_logprobs"):
            if getattr(self, name):
                raise Unsupported(name, f"{name} is not supported: leave it out")
        if self.tools:
            raise Unsupported("tools", "tools are not supported: this server does not call functions; leave tools out")
        if self.tool_choice not in (None, "none", "auto"):
            raise Unsupported("tool_choice", 'tool_choice must be "none" (or "auto"): this server does not call functions')
        if self.response_format is not None and self.response_format.get("type") != "text":
            raise Unsupported("response_format", f"response_format {self.response_format.get('type')!r} is not "
                              'supported (the output is not constrained): leave it out or use {"type": "text"}')

    def sampling(self) -> Sampling:
        return super().sampling(self.max_completion_tokens)

    def prompt(self) -> list[dict[str, str]]:
        return [m.as_dict() for m in self.messages]


class CompletionRequest(_Generation):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(default=16, ge=1)  # OpenAI's default for completions
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None
    logprobs: int | None = None

    _prompt_utf8 = field_validator("prompt")(_utf8)

    def unsupported(self) -> None:
        super().unsupported()
        if isinstance(self.prompt, list) and self.prompt and isinstance(self.prompt[0], (str, list)) and len(self.prompt) != 1:
            raise Unsupported("prompt", "give one prompt per request (a list of prompts is not supported)")
        for name, ok in (("echo", not self.echo), ("suffix", self.suffix is None), ("best_of", self.best_of in (None, 1)),
                         ("logprobs", self.logprobs is None)):
            if not ok:
                raise Unsupported(name, f"{name} is not supported: leave it out")

    def text_or_ids(self) -> str | list[int]:
        """The one prompt: text, or token ids."""
        if isinstance(self.prompt, list) and self.prompt and isinstance(self.prompt[0], (str, list)):
            return self.prompt[0]
        return self.prompt
