"""Counting device-to-host reads of torch tensors: a measuring instrument (``tests/test_resident.py``,
``scripts/gpu_check.py``), never active while serving.

Every way a tensor's contents reach the host is counted (``numpy``, ``item``, ``tolist``, ``int()``, ``float()``,
``bool()``, ``__index__``, ``__array__``), with the number of elements read; on CUDA each is a wait for the device.
CuPy arrays (an extension type) cannot be instrumented this way: the CuPy backends are not counted.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

READS = ("numpy", "item", "tolist", "__int__", "__float__", "__bool__", "__index__", "__array__")


@contextmanager
def count_reads() -> Iterator[list[int]]:
    """While active, every read of a torch tensor appends its element count to the yielded list."""
    import torch

    sizes: list[int] = []
    originals = {name: torch.Tensor.__dict__.get(name) for name in READS}

    def counted(name):
        original = getattr(torch.Tensor, name)

        def read(tensor, *args, **kwargs):
            sizes.append(tensor.numel())
            return original(tensor, *args, **kwargs)

        return read

    for name in READS:
        setattr(torch.Tensor, name, counted(name))
    try:
        yield sizes
    finally:
        for name, original in originals.items():
            if original is None:
                delattr(torch.Tensor, name)  # it was inherited (from torch._C.TensorBase): inherit it again
            else:
                setattr(torch.Tensor, name, original)


def reads_per_round(decoder, prompt_ids: list[int], config) -> dict:
    """One generation's rounds (``config.mode``) under the counter (the prefill is counted too, as part of the first
    round): rounds, reads, the largest read in elements, the tokens and the drafts per round."""
    with count_reads() as sizes:
        rounds = list(decoder.generate(prompt_ids, config))
    return {"rounds": len(rounds), "reads": len(sizes), "largest_read": max(sizes, default=0),
            "tokens": [t for step, _ in rounds for t in step.tokens],
            "drafts": [len(step.drafts) for step, _ in rounds]}
