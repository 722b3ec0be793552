"""Stop strings: generation ends where the decoded text first contains one of them.

The text returned ends just before the stop string; the tokens returned are the shortest prefix whose text
contains it (a round can commit several tokens, so the cut may fall inside a round: the same rule as EOS).
While streaming, the end of the text that could still grow into a stop string is held back, so no piece
of a stop string is ever shown. Greedy Kangaroo and AR produce the same tokens, so they stop at the same one.
"""

from __future__ import annotations

from typing import Callable, Sequence

from ..errors import InputError


class StopStrings:
    def __init__(self, stops: Sequence[str] = ()) -> None:
        if isinstance(stops, str):
            stops = (stops,)
        if any(not s for s in stops):
            raise InputError("a stop string is empty: give non-empty stop strings")
        self.stops = tuple(stops)

    def __bool__(self) -> bool:
        return bool(self.stops)

    @property
    def longest(self) -> int:
        return max(map(len, self.stops), default=0)

    def find(self, text: str, start: int = 0) -> int | None:
        """Where the earliest stop string in ``text`` beginning at ``start`` or later begins, or None."""
        found = [i for i in (text.find(s, start) for s in self.stops) if i >= 0]
        return min(found) if found else None

    def held(self, text: str) -> int:
        """How many characters at the end of ``text`` could be the start of a stop string (not to be shown yet)."""
        return max((k for s in self.stops for k in range(min(len(s) - 1, len(text)), 0, -1) if text.endswith(s[:k])),
                   default=0)

    def tokens_through(self, text_of: Callable[[int], str], known: int, total: int) -> int:
        """The fewest of ``total`` tokens whose text (``text_of(n)``: the first n tokens') contains a stop string,
        given that the first ``known`` tokens' does not."""
        for n in range(known + 1, total + 1):
            if self.find(text_of(n)) is not None:
                return n
        return total
