"""The environment variables the original scripts read (TARGET_MODEL, DRAFT_MODEL, TENSOR_PARALLEL_SIZE),
applied to a run's values after its profile: the only place nwor reads them."""
from __future__ import annotations

import os

from nwor.errors import ConfigError

ENV_OVERRIDES = {
    "TARGET_MODEL": "target_model",
    "DRAFT_MODEL": "draft_model",
    "TENSOR_PARALLEL_SIZE": "tensor_parallel_size",
}


def apply_env_overrides(values: dict, environ=os.environ) -> dict:
    """Return `values` with TARGET_MODEL / DRAFT_MODEL / TENSOR_PARALLEL_SIZE applied where set.

    Raises:
        ConfigError: TENSOR_PARALLEL_SIZE is not an integer.
    """
    out = dict(values)
    for var, name in ENV_OVERRIDES.items():
        raw = environ.get(var)
        if raw:
            if name == "tensor_parallel_size":
                try:
                    out[name] = int(raw)
                except ValueError:
                    raise ConfigError(f"invalid {var}={raw!r}: must be an integer", field=name) from None
            else:
                out[name] = raw
    return out
