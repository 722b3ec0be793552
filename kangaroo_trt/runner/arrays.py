"""The few array operations the decoding loop applies to graph outputs, on whichever array type a backend returns.

ONNX Runtime CPU returns numpy arrays, the CUDA backends CuPy arrays (which take the numpy API: ``np.concatenate``
dispatches to CuPy), the PyTorch backends torch tensors on their device. The loop keeps outputs where the backend
computed them: exit states, drafts and targets move between graphs on the device, and only what a decision needs
crosses to the host, through ``to_host`` (on a device backend, a round's one readback: ``decode.py``).
"""

from __future__ import annotations

import numpy as np


def _is_torch(array) -> bool:
    return type(array).__module__.startswith("torch")


def concat(parts, axis: int = 1):
    """``parts`` (all of one array type) joined along ``axis``."""
    if _is_torch(parts[0]):
        import torch

        return torch.cat(list(parts), dim=axis)
    return np.concatenate(parts, axis=axis)


def snapshot(array):
    """A copy that outlives the runner's output buffer it was read from (the next call of that shape reuses it)."""
    return array.clone() if _is_torch(array) else array.copy()


def repeat_last(array, n: int):
    """``array`` [1, k, ...] followed by ``n`` copies of its last row along axis 1."""
    return concat([array] + [array[:, -1:]] * n) if n else array


def to_host(array) -> np.ndarray:
    """The array's contents as a numpy array of its own (never a view of a runner's output buffer): a device-to-host
    copy (and wait) for CuPy and CUDA tensors.

    torch's bfloat16 has no numpy dtype: it arrives as float32, which holds every bf16 value exactly."""
    if _is_torch(array):
        import torch

        if array.dtype == torch.bfloat16:
            array = array.float()
        return array.detach().cpu().numpy().copy()  # on CPU, .cpu() and .numpy() share the tensor's memory
    return array.get() if hasattr(array, "get") else np.array(array, copy=True)


def read_draft(draft, confidence) -> tuple[int, float]:
    """A draft id and its confidence ([1, 1] arrays where the backend keeps them) read in one copy: a policy that
    decides after every draft waits for the device once per draft, not twice. float64 holds every token id exactly."""
    if _is_torch(draft):
        import torch

        both = torch.cat([draft.reshape(1).double(), confidence.reshape(1).double()])
    else:
        both = concat([draft.reshape(1).astype(np.float64), confidence.reshape(1).astype(np.float64)], axis=0)
    token, conf = to_host(both).tolist()
    return int(token), conf


def as_tensor(array):
    """A torch tensor of ``array`` where it is: numpy and CuPy arrays are shared, not copied (DLPack on the device)."""
    import torch

    if _is_torch(array):
        return array
    if isinstance(array, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(array))
    return torch.from_dlpack(array)


def top2_margins(logits) -> np.ndarray:
    """Per row of ``logits`` [n, vocab], the top-1 minus the top-2 logit, computed where the logits are (only the n
    margins are read back)."""
    if _is_torch(logits):
        top = logits.float().topk(2, dim=-1).values
        return to_host(top[:, 0] - top[:, 1]).astype(np.float64)
    top = np.partition(logits, -2, axis=-1)[:, -2:]
    return to_host(top[:, 1] - top[:, 0]).astype(np.float64)
