"""The small interface every runtime implements; the decoding loop sees nothing else.

A ``Backend`` opens the three graphs of one precision of an engine directory and hands out one
``GraphRunner`` per graph. A ``GraphRunner`` owns its KV-cache buffers (allocated once, at open) and its
output buffers (allocated once per distinct number of new tokens ``n``). ``run`` validates the token
feeds against the graph's ``GraphSpec``, runs the graph on bound buffers, copies the ``n`` new cache rows
to slots ``start .. start + n`` (never the whole cache), and returns the token outputs.

Ownership: returned arrays are the runner's own output buffers, valid until the next ``run`` with the
same ``n``; copy them to keep them longer.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np

from ..errors import InputError
from ..export.spec import GraphSpec


class GraphRunner(ABC):
    def __init__(self, spec: GraphSpec) -> None:
        self.spec = spec
        self.max_seq_len = spec.caches[0].shape[2]

    def run(self, feeds: dict[str, np.ndarray], start: int) -> dict[str, np.ndarray]:
        """Run on ``n`` new tokens at positions ``start .. start + n``; the caches must hold ``start`` valid slots."""
        n = next(iter(feeds.values())).shape[1]
        self.spec.check_feeds(feeds, n)
        if start + n > self.max_seq_len:
            raise InputError(f"{self.spec.name} graph: positions up to {start + n} exceed the KV cache of {self.max_seq_len}")
        return self._run(feeds, start, n)

    @abstractmethod
    def _run(self, feeds: dict[str, np.ndarray], start: int, n: int) -> dict[str, np.ndarray]:
        ...


class Backend(ABC):
    """One runtime on one device. Subclasses say whether they can run here via ``available``."""

    name: ClassVar[str]
    device: ClassVar[str]

    @classmethod
    @abstractmethod
    def available(cls) -> bool:
        ...

    @abstractmethod
    def graph(self, name: str) -> GraphRunner:
        ...
