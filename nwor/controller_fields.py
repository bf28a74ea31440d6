"""The RunSpec fields that study the adaptive controller (ewma_alpha, prompt_shift, synthetic_acceptance_rate;
docs/controller.md): frozen and validated here, apart from nwor.config so that each stays short.
"""
from __future__ import annotations

import math

from nwor.errors import ConfigError

# Their defaults; a stored spec holding exactly these hashes as if the fields did not exist (results made
# before them stay done).
DEFAULTS = {"ewma_alpha": 0.1, "prompt_shift": [], "synthetic_acceptance_rate": None}


def without_defaults(data: dict) -> dict:
    """A spec mapping minus the controller fields that hold their defaults."""
    return {k: v for k, v in data.items() if not (k in DEFAULTS and v == DEFAULTS[k])}


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check(ok: bool, name: str, message: str, value) -> None:
    if not ok:  # nwor.config's message and error, word for word
        raise ConfigError(f"invalid {name}={value!r}: {message}", field=name, value=value)


def freeze(spec) -> None:
    """From `RunSpec.__post_init__`: the shift's parts become a tuple of dicts, then every field is checked.

    Raises:
        ConfigError: an out-of-range alpha or rate, or a malformed shift.
    """
    if isinstance(spec.prompt_shift, (list, tuple)):
        object.__setattr__(spec, "prompt_shift", tuple(dict(p) if isinstance(p, dict) else p
                                                       for p in spec.prompt_shift))
    validate(spec, _check)


def validate(spec, check=_check) -> None:
    """Raise (through `check`, a ConfigError) on an out-of-range alpha or rate, or a malformed shift."""
    check(_number(spec.ewma_alpha) and 0 < spec.ewma_alpha <= 1, "ewma_alpha", "must be in (0, 1]", spec.ewma_alpha)
    rate = spec.synthetic_acceptance_rate
    check(rate is None or (_number(rate) and 0 <= rate <= 1), "synthetic_acceptance_rate",
          "must be None or in [0, 1]", rate)
    if rate is not None:
        check(spec.method != "none", "synthetic_acceptance_rate", "needs speculative decoding (method eagle or ngram)",
              rate)
    for part in spec.prompt_shift:
        check(isinstance(part, dict) and isinstance(part.get("prompt_set"), str) and bool(part["prompt_set"]),
              "prompt_shift", "each part must be a mapping with a prompt_set", part)
        unknown = sorted(set(part) - {"prompt_set", "temperature"})
        check(not unknown, "prompt_shift", f"unknown key {unknown[0] if unknown else ''!r} in a part", part)
        if "temperature" in part:
            check(_number(part["temperature"]) and part["temperature"] >= 0, "prompt_shift",
                  "a part's temperature must be >= 0", part)
    if spec.prompt_shift:  # every part gets at least one measured round
        enough = isinstance(spec.measured_batches, int) and spec.measured_batches >= len(spec.prompt_shift)
        check(enough, "prompt_shift",
              f"{len(spec.prompt_shift)} parts need measured_batches >= {len(spec.prompt_shift)}",
              [dict(p) for p in spec.prompt_shift])
