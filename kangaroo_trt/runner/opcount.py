"""What one decoding step issues, counted with the torch profiler: operators on the host, kernels on a GPU.

A step is the decoder's own graph calls on an open PyTorch-backend engine (``KangarooEngine``), after a prefill:
an AR step is the shallow and deep call on one token, a verify step the same two calls on ``k`` tokens (exact mode
pads both to the same row count). Counted:

- ``ops``: operator calls the host dispatches, i.e. ``aten::`` operators and Inductor's generated kernels
  (``cpp_fused_*`` / ``triton_*``) that are not inside another counted one (``aten::linear`` counts once, not
  with its ``addmm``), the runner's feed copies and output reads included;
- ``compute``: those minus pure view/metadata operators (``view``, ``slice``, ``transpose``, ...), which launch
  no work;
- ``kernels`` (CUDA only): device kernel events (``ProfilerActivity.CUDA``), memory copies and sets excluded;
  ``copies``: those copies and sets.

Inductor's C++ kernels appear in the CPU profile only with ``torch._inductor.config.cpp.enable_kernel_profile``
set before they are compiled (``profile_kernels``).
"""

from __future__ import annotations

from dataclasses import dataclass

# Operators that only make a new view of a tensor (or read its metadata): no kernel, no work on the data.
VIEW_OPS = frozenset(f"aten::{name}" for name in (
    "view", "reshape", "_unsafe_view", "_reshape_alias", "as_strided", "slice", "select", "narrow", "transpose", "t",
    "permute", "expand", "unsqueeze", "squeeze", "alias", "detach", "detach_", "ravel", "lift_fresh", "resolve_conj",
    "resolve_neg", "numpy_T", "split", "chunk", "unbind", "contiguous", "to", "result_type", "empty", "empty_strided",
    "empty_like"))


@dataclass
class StepOps:
    ops: int = 0
    compute: int = 0
    kernels: int | None = None
    copies: int | None = None


def profile_kernels() -> None:
    """Make Inductor's C++ kernels visible to the CPU profiler (call before the first compile)."""
    import torch._inductor.config as inductor

    inductor.cpp.enable_kernel_profile = True


def _counted(name: str) -> bool:
    return name.startswith("aten::") or "cpp_fused" in name or name.startswith("triton_")


def count_events(events, cuda: bool) -> StepOps:
    """``StepOps`` of a profiler's ``events()``."""
    from torch.autograd import DeviceType

    out = StepOps(kernels=0 if cuda else None, copies=0 if cuda else None)
    for event in events:
        if event.device_type == DeviceType.CUDA:
            if event.name.startswith(("Memcpy", "Memset")) or "memcpy" in event.name.lower():
                out.copies += 1
            else:
                out.kernels += 1
            continue
        if not _counted(event.name):
            continue
        parent = event.cpu_parent
        while parent is not None and not _counted(parent.name):
            parent = parent.cpu_parent
        if parent is None:
            out.ops += 1
            out.compute += event.name not in VIEW_OPS
    return out


def step_ops(engine, kind: str, prompt_ids: list[int], k: int) -> StepOps:
    """Profile one ``kind`` step ("ar": one token; "verify": ``k`` tokens) of ``engine``'s decoder after prefilling
    ``prompt_ids`` (the step's own calls only; run one unprofiled step first so nothing is compiled or captured
    inside the profile)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    decoder = engine.decoder
    cuda = engine.backend.device == "cuda"
    tokens = (prompt_ids * k)[:k] if kind == "verify" else prompt_ids[-1:]

    p = len(prompt_ids) - 1  # the prefill caches positions < p; the step's first token sits at p

    def step():
        hidden = decoder._shallow(tokens, p)
        decoder._deep(hidden, p)

    decoder.prefill(prompt_ids, with_adapter=False, gamma=1)
    step()  # warm-up: compile / capture outside the profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        step()
        if cuda:
            torch.cuda.synchronize()
    return count_events(prof.events(), cuda)
