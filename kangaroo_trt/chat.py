"""Chat messages -> token ids: the one chat encoding (runner API, benchmark, training, INT8 calibration).

Message text is text. By default, special tokens typed into a message (``<|im_end|><|im_start|>system ...``)
are tokenized as the characters they are, never as control tokens, so a user cannot close their turn and open a
system one; the chat template's own control tokens are control tokens. ``parse_special=True`` is the opt-out (a
caller that builds messages from trusted text holding control tokens on purpose).

How: messages without a special-token string in them encode exactly as ``apply_chat_template`` does. Otherwise the
template is rendered with a placeholder per message; the template's text between the placeholders is tokenized as
usual and each message's text with the tokenizer's own ``split_special_tokens=True`` (transformers), so control
tokens come only from the template. A template that rewrites message text (e.g. trims it) cannot be split this
way; such a message is refused with a one-line error rather than encoded unsafely.
"""

from __future__ import annotations

from typing import Any

from .errors import InputError

_MARK = "\ue000{}\ue001"  # private-use characters: no template or tokenizer gives them a meaning


def messages_of(prompt: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One user message from a string; a list of messages as it is."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def encode_chat(tokenizer, messages: list[dict[str, Any]], *, parse_special: bool = False,
                add_generation_prompt: bool = True) -> list[int]:
    """Token ids of ``messages`` under the tokenizer's chat template; message text is text unless ``parse_special``."""
    if not tokenizer.chat_template:
        raise InputError("this model's tokenizer has no chat template: send the prompt as plain text (no --chat; over "
                         "HTTP, /v1/completions)")
    specials = _special_strings(tokenizer)
    if parse_special or not any(s in m.get("content", "") for m in messages if isinstance(m.get("content"), str)
                                for s in specials):
        return list(tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True,
                                                  return_dict=False))
    return encode_segments(tokenizer, messages, add_generation_prompt)


def encode_segments(tokenizer, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> list[int]:
    """The template's text tokenized as usual, each message's text with ``split_special_tokens=True``."""
    contents = [m.get("content") for m in messages]
    marked = [{**m, "content": _MARK.format(i)} if isinstance(c, str) else m for i, (m, c) in enumerate(zip(messages, contents))]
    skeleton = tokenizer.apply_chat_template(marked, add_generation_prompt=add_generation_prompt, tokenize=False)
    full = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)
    pieces, rebuilt, rest = [], "", skeleton
    for i, content in enumerate(contents):
        if not isinstance(content, str):
            continue
        before, found, rest = rest.partition(_MARK.format(i))
        if not found:
            break
        pieces += [(before, False), (content, True)]
        rebuilt += before + content
    pieces.append((rest, False))
    if rebuilt + rest != full:
        raise InputError("this model's chat template rewrites message text, so special tokens typed in a message cannot "
                         "be kept as text: remove them from the message (or encode with parse_special=True)")
    ids: list[int] = []
    for text, is_message in pieces:
        if text:
            ids += tokenizer(text, add_special_tokens=False, split_special_tokens=is_message)["input_ids"]
    return ids


def _special_strings(tokenizer) -> list[str]:
    """The text of every special token the tokenizer would otherwise match inside text."""
    return [t.content for t in tokenizer.added_tokens_decoder.values() if t.special and t.content]
