"""One request's text, decoded incrementally as rounds commit tokens (as vLLM's incremental detokenizer does).

Decoding every token again each round would cost O(n) tokenizer work per round, O(n^2) per generation. A round
decodes a window instead: the tokens from ``prefix`` on. The window's first tokens, up to ``read`` (the end of
the text confirmed so far), are context whose text is known; what the window adds past it is the new text. The
context is the last confirmed round and at least ``CONTEXT`` tokens, so a tokenizer that renders a token by what
precedes it (SentencePiece drops the leading space of a text; WordPiece joins words with spaces and then cleans
some up, " ' t" -> "'t") gives the text that decoding everything gives. A window starts where an earlier round's
text was confirmed (it ended on a whole character), never inside a character's bytes. Where the window's text
does not begin with its context's (a rule that reached back further), the round decodes everything instead.

What is shown, round by round: text that ends in "\\ufffd" (a UTF-8 sequence split across tokens) waits for its
bytes, and the end that could still grow into a stop string is held back (``stops.py``). Where a stop string
appears, the output keeps the fewest tokens whose text holds it and the text ends just before it. The final text
is one decode of the output, as a call without streaming gives; ``finish`` returns what was held back.
"""

from __future__ import annotations

from typing import Callable

from .stops import StopStrings

PARTIAL = "\ufffd"  # what a decode gives for a UTF-8 sequence whose last bytes have not come yet
CONTEXT = 6  # the fewest tokens before the new ones a window decodes (vLLM's incremental detokenizer keeps 5)


class Detokenizer:
    """``add`` each round's committed tokens (the new piece to show, and where a stop string cut the output);
    ``finish`` at the end. ``stream=False``: no pieces (only stop strings are looked for, if any)."""

    def __init__(self, decode: Callable[[list[int]], str], stops: StopStrings | None = None, stream: bool = True) -> None:
        self.decode, self.stops, self.stream = decode, stops or StopStrings(), stream
        self.tokens: list[int] = []
        self.shown = ""  # the text shown so far
        self.stopped = False
        # tokens[:read] decode to `known` (which holds no stop string); tokens[prefix:read] decode to `prefix_text`.
        self._prefix = self._read = 0
        self._known = self._prefix_text = ""
        self._marks = [0]  # where the text was confirmed since `prefix` (a window may start there)

    def add(self, tokens: list[int]) -> tuple[str, int | None]:
        """A round's committed tokens: the new text to show ("" while none can be) and, when a stop string
        appeared, how many output tokens to keep (the fewest whose text holds it). Add nothing after a stop."""
        if self.stopped:
            raise ValueError("a stop string already ended this generation")
        before = len(self.tokens)
        self.tokens += tokens
        if not (self.stream or self.stops):
            return "", None
        full, since = self._text(len(self.tokens))
        visible = full[:len(full) - self.stops.held(full)] if self.stops else full
        keep = None
        if self.stops and (at := self.stops.find(full, since)) is not None:
            keep = self.stops.tokens_through(lambda n: self._text(n)[0], before, len(self.tokens))
            del self.tokens[keep:]
            visible, self.stopped = full[:at], True
        elif not full.endswith(PARTIAL):  # confirmed: the next window starts at this round's tokens, or further back
            self._read = len(self.tokens)
            self._marks.append(self._read)
            while len(self._marks) > 2 and self._marks[1] <= self._read - CONTEXT:
                del self._marks[0]
            self._prefix = self._marks[0] if self._marks[1] > self._read - CONTEXT else self._marks[1]
            self._prefix_text, self._known = self.decode(self.tokens[self._prefix:]), full
        piece = ""
        if self.stream and not visible.endswith(PARTIAL) and visible.startswith(self.shown):
            piece, self.shown = visible[len(self.shown):], visible
        return piece, keep

    def finish(self) -> tuple[str, str]:
        """The output's text (cut before the stop string) and what is still to show of it (held back: a UTF-8
        sequence the token budget cut short, the start of a stop string that never completed)."""
        text = self.decode(self.tokens)
        if self.stopped:
            text = text[:self.stops.find(text)]
        rest = text[len(self.shown):] if self.stream and text.startswith(self.shown) else ""
        return text, rest

    def _text(self, n: int) -> tuple[str, int]:
        """The text of ``tokens[:n]`` (n >= read) as decoding them all gives, and where a stop string may begin in it
        (not inside the known text, which holds none)."""
        window = self.decode(self.tokens[self._prefix:n])
        if window.startswith(self._prefix_text):
            return self._known + window[len(self._prefix_text):], max(0, len(self._known) - self.stops.longest + 1)
        return self.decode(self.tokens[:n]), 0
