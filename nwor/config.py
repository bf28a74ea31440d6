"""The run specification: one frozen dataclass, validated before any engine starts."""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from nwor import controller_fields
from nwor.errors import ConfigError
from nwor.ncu_argv import REPLAY_MODES as NCU_REPLAY_MODES
from nwor.ncu_metrics import NCU_METRICS
from nwor.tiny import RECIPES as _TINY_RECIPES

METHODS = ("eagle", "ngram", "none")
FEATURE_IMPLS = ("auto", "native", "plugin")
# "after" is the only mode: the profiled pass always runs after the measured one (profiling instead of
# measuring was never implemented, so the value is refused rather than silently ignored).
NCU_MODES = ("after",)
DTYPES = ("auto", "half", "float16", "bfloat16", "float", "float32")  # the names vLLM's --dtype accepts
TINY_MODELS = tuple(_TINY_RECIPES)  # nwor.tiny's named recipes (`tiny_models`)
ARM_DESIGNS = ("auto", "engines")
SCHEDULE = "num_speculative_tokens_per_batch_size"  # vLLM's Dynamic SD field (nwor.dynamic_sd)
# Keys an arm may set besides RunSpec fields; RunSpec fields that name or shape the run itself may not vary.
ARM_EXTRA_KEYS = ("name", "load_plugin", "label")
ARM_FIXED_FIELDS = ("run_id", "grid", "profile", "workload_number", "workload_name", "measured_batches",
                    "warmup_batches", "warmup_max_batches", "warmup_window", "warmup_tolerance",
                    "engine_instances", "arms", "arm_design", "ncu", "ncu_metrics", "ncu_mode",
                    "ncu_replay_mode", "ncu_timeout_s", "seed", "prompt_shift")
DEFAULT_NCU_METRICS = NCU_METRICS  # the project's one list (nwor/ncu_metrics.py)
# Model names that resolve to the locally built tiny pair (nwor.tiny).
TINY_TARGET, TINY_DRAFT = "tiny", "tiny-eagle"
@dataclass(frozen=True)
class RunSpec:
    """Everything one run needs; its resolved form is stored in the result and hashed for resume."""

    run_id: str = "adhoc"
    grid: str = "adhoc"
    profile: str = "adhoc"
    workload_number: int | None = None
    workload_name: str = ""
    target_model: str = TINY_TARGET
    draft_model: str | None = TINY_DRAFT
    tiny_models: str = "cpu"  # recipe of the locally built pair (nwor.tiny.RECIPES) when the models are tiny
    method: str = "eagle"
    num_speculative_tokens: int = 4
    num_requests: int = 8
    measured_batches: int = 2  # timed batches of each arm in each engine instance
    # Warm-up rule (nwor.design.WarmupRule): untimed batches until the last `warmup_window` batches of every
    # arm lie within `warmup_tolerance` (relative spread (max - min) / median), at least `warmup_batches`
    # and at most `warmup_max_batches` batches per engine instance.
    warmup_batches: int = 1
    warmup_max_batches: int = 4
    warmup_window: int = 2
    warmup_tolerance: float = 0.25
    engine_instances: int = 1  # independent engines per engine group (nwor.design)
    # Extra arms measured with this run (arm "run" is the run itself): mappings of `name` plus RunSpec
    # overrides and `load_plugin` (false: stock vLLM, nwor's plugin not loaded) or `label` (display only).
    arms: tuple = ()
    arm_design: str = "auto"  # auto: plugin-only differences share an engine | engines: one engine group per arm
    temperature: float = 0.0
    top_p: float = 0.9
    max_new_tokens: int = 32
    ignore_eos: bool = True  # fixed output lengths keep batches comparable across settings
    max_model_len: int = 512
    tensor_parallel_size: int = 1
    dtype: str = "auto"
    gpu_memory_utilization: float = 0.2  # on the CPU build: the fraction of RAM reserved for KV cache
    enforce_eager: bool = False
    # The engine core in the calling process (VLLM_ENABLE_V1_MULTIPROCESSING=0) instead of its own: on the
    # 2-core CPU smoke, spawning it (a second vLLM import) is ~17 of a run's ~25 s of engine start.
    engine_in_process: bool = False
    attention_backend: str | None = None  # e.g. FLASH_ATTN where flashinfer is not installed
    prompt_set: str = "builtin:chat"
    prompt_shuffle_seed: int = 42
    prompt_min_chars: int = 1
    prompt_max_chars: int = 800
    adaptive_draft_length: bool = False
    draft_length_options: tuple[int, ...] | None = None
    num_speculative_tokens_per_batch_size: tuple | str | None = None  # Dynamic SD: [[start, end, K]] or "tuned"
    confidence_threshold: float = 0.0
    # The controller's study (nwor.controller_fields, docs/controller.md); alpha 0.1 is the fork's.
    ewma_alpha: float = 0.1
    prompt_shift: tuple = ()
    synthetic_acceptance_rate: float | None = None
    feature_impl: str = "auto"  # auto: the engine's own if it has the feature, else nwor's plugin
    ncu: bool = False
    ncu_metrics: tuple[str, ...] = DEFAULT_NCU_METRICS
    ncu_mode: str = "after"  # after: the measured pass, then a separate profiled pass
    ncu_replay_mode: str = "app-range"
    ncu_timeout_s: float = 3600.0
    seed: int = 0
    # Serving runs (notebooks/serve_experiment.ipynb, nwor.serving): None keeps the run offline.
    serve_max_concurrency: int | None = None  # sweep max-concurrency 1, 2, 4, ... up to this
    serve_request_rate: float | None = None  # Poisson arrivals per second at every point; None: all at once
    serve_requests_per_slot: int = 4  # requests per load point = this x the point's concurrency
    serve_slo_ttft_ms: float | None = None  # goodput SLOs (vllm bench serve --goodput); None: not used
    serve_slo_tpot_ms: float | None = None
    serve_instances: int = 1  # server instances per arm, interleaved ABBA

    def __post_init__(self):
        for name in ("ncu_metrics", "draft_length_options"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        from nwor.dynamic_sd import checked_schedule  # as a tuple of tuples; nwor.dynamic_sd imports this module
        object.__setattr__(self, SCHEDULE, checked_schedule(getattr(self, SCHEDULE), self.method != "none"))
        if isinstance(self.arms, (list, tuple)):
            object.__setattr__(self, "arms", tuple(dict(a) if isinstance(a, dict) else a for a in self.arms))
        # Record where the engine core really runs: `vllm serve` and tensor-parallel workers always give it a
        # process of its own, whatever a profile prefers for single-rank offline runs.
        if self.serving or self.tensor_parallel_size != 1:
            object.__setattr__(self, "engine_in_process", False)
        controller_fields.freeze(self)
        _validate(self)

    def to_dict(self) -> dict:
        data = asdict(self)
        for name in ("ncu_metrics", "draft_length_options"):
            if data[name] is not None:
                data[name] = list(data[name])
        data["arms"], data["prompt_shift"] = [dict(a) for a in self.arms], [dict(p) for p in self.prompt_shift]
        data[SCHEDULE] = [list(e) for e in data[SCHEDULE]] if isinstance(data[SCHEDULE], tuple) else data[SCHEDULE]
        return data

    def __hash__(self) -> int:
        # The generated hash would fail on `arms` (a tuple of dicts); equal specs have equal params hashes.
        return hash(self.params_hash())

    def params_hash(self) -> str:
        """Hash of every parameter that shapes the result; a stored result with another hash is stale.

        Profiling settings shape only runs that profile, so a run without ncu ignores them.
        """
        return hash_params(self.to_dict())

    @property
    def speculative(self) -> bool:
        return self.method != "none"

    @property
    def serving(self) -> bool:
        return self.serve_max_concurrency is not None


SPEC_FIELDS = tuple(f.name for f in fields(RunSpec))


def hash_params(spec: dict) -> str:
    """The resume key of a resolved spec (as stored in a result's `spec`); ncu settings count only with ncu on,
    serving settings only for serving runs (so offline results stay done when serving fields are added)."""
    data = spec if spec.get("ncu") else {k: v for k, v in spec.items() if not k.startswith("ncu_")}
    data = controller_fields.without_defaults(data)  # results made before those fields existed stay done
    if data.get("serve_max_concurrency") is None:
        data = {k: v for k, v in data.items() if not k.startswith("serve_")}
    data = {k: v for k, v in data.items() if k != SCHEDULE or v is not None}  # unset: older results stay done
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _check(ok: bool, name: str, message: str, value) -> None:
    if not ok:
        raise ConfigError(f"invalid {name}={value!r}: {message}", field=name, value=value)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    """A finite int or float (inf would pass every range check below and break sampling or timeouts)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _looks_local(model: str) -> bool:
    # A Hugging Face id is "org/name"; anything absolute, relative-dotted or home-relative is a path.
    return model.startswith(("/", "./", "../", "~"))


def _validate(spec: RunSpec) -> None:
    for name in ("num_speculative_tokens", "num_requests", "measured_batches", "max_new_tokens",
                 "max_model_len", "tensor_parallel_size", "prompt_min_chars", "prompt_max_chars"):
        value = getattr(spec, name)
        _check(_is_int(value) and value >= 1, name, "must be an integer >= 1", value)
    for name in ("warmup_max_batches", "warmup_window", "engine_instances"):
        value = getattr(spec, name)
        _check(_is_int(value) and value >= 1, name, "must be an integer >= 1", value)
    _check(spec.warmup_max_batches >= spec.warmup_batches, "warmup_max_batches",
           f"must be >= warmup_batches ({spec.warmup_batches})", spec.warmup_max_batches)
    _check(_is_number(spec.warmup_tolerance) and spec.warmup_tolerance > 0, "warmup_tolerance", "must be > 0",
           spec.warmup_tolerance)
    _check(spec.arm_design in ARM_DESIGNS, "arm_design", f"must be one of {', '.join(ARM_DESIGNS)}",
           spec.arm_design)
    for name in ("serve_requests_per_slot", "serve_instances"):
        value = getattr(spec, name)
        _check(_is_int(value) and value >= 1, name, "must be an integer >= 1", value)
    if spec.serve_max_concurrency is not None:
        _check(_is_int(spec.serve_max_concurrency) and spec.serve_max_concurrency >= 1, "serve_max_concurrency",
               "must be None or an integer >= 1", spec.serve_max_concurrency)
    for name in ("serve_request_rate", "serve_slo_ttft_ms", "serve_slo_tpot_ms"):
        value = getattr(spec, name)
        _check(value is None or (_is_number(value) and value > 0), name, "must be None or > 0", value)
    for name in ("warmup_batches", "seed", "prompt_shuffle_seed"):
        value = getattr(spec, name)
        _check(_is_int(value) and value >= 0, name, "must be an integer >= 0", value)
    _check(_is_number(spec.temperature) and spec.temperature >= 0, "temperature", "must be >= 0", spec.temperature)
    _check(_is_number(spec.top_p) and 0 < spec.top_p <= 1, "top_p", "must be in (0, 1]", spec.top_p)
    _check(_is_number(spec.confidence_threshold) and 0 <= spec.confidence_threshold <= 1,
           "confidence_threshold", "must be in [0, 1]", spec.confidence_threshold)
    _check(_is_number(spec.gpu_memory_utilization) and 0 < spec.gpu_memory_utilization <= 1,
           "gpu_memory_utilization", "must be in (0, 1]", spec.gpu_memory_utilization)
    _check(_is_number(spec.ncu_timeout_s) and spec.ncu_timeout_s > 0, "ncu_timeout_s", "must be > 0",
           spec.ncu_timeout_s)
    _check(spec.dtype in DTYPES, "dtype", f"must be one of {', '.join(DTYPES)}", spec.dtype)
    _check(spec.attention_backend is None or (isinstance(spec.attention_backend, str) and spec.attention_backend),
           "attention_backend", "must be None or a vLLM backend name such as FLASH_ATTN", spec.attention_backend)
    _check(spec.tiny_models in TINY_MODELS, "tiny_models", f"must be one of {', '.join(TINY_MODELS)}", spec.tiny_models)
    _check(spec.method in METHODS, "method", f"must be one of {', '.join(METHODS)}", spec.method)
    _check(spec.feature_impl in FEATURE_IMPLS, "feature_impl", f"must be one of {', '.join(FEATURE_IMPLS)}",
           spec.feature_impl)
    _check(spec.ncu_mode in NCU_MODES, "ncu_mode",
           "must be after (the profiled pass runs after the measured one; profiling instead is not implemented)",
           spec.ncu_mode)
    _check(spec.ncu_replay_mode in NCU_REPLAY_MODES, "ncu_replay_mode",
           f"must be one of {', '.join(NCU_REPLAY_MODES)}", spec.ncu_replay_mode)
    _check(spec.prompt_min_chars <= spec.prompt_max_chars, "prompt_min_chars",
           f"must be <= prompt_max_chars ({spec.prompt_max_chars})", spec.prompt_min_chars)
    for name in ("adaptive_draft_length", "ncu", "enforce_eager", "engine_in_process", "ignore_eos"):
        _check(isinstance(getattr(spec, name), bool), name, "must be true or false", getattr(spec, name))
    _check(isinstance(spec.run_id, str) and spec.run_id and "/" not in spec.run_id and not spec.run_id.startswith("."),
           "run_id", "must be a non-empty file name", spec.run_id)
    _check(not isinstance(spec.ncu_metrics, str), "ncu_metrics",
           "must be a list of metric names, not one string (write [name])", spec.ncu_metrics)
    _check(bool(spec.ncu_metrics) and all(isinstance(m, str) and m for m in spec.ncu_metrics),
           "ncu_metrics", "must be a non-empty list of metric names", spec.ncu_metrics)
    if spec.draft_length_options is not None:
        _check(all(_is_int(o) and o >= 1 for o in spec.draft_length_options) and spec.draft_length_options,
               "draft_length_options", "must be a list of integers >= 1", spec.draft_length_options)
    if spec.method == "eagle":
        _check(bool(spec.draft_model), "draft_model", "method eagle needs a draft model", spec.draft_model)
    if not spec.speculative:
        _check(not spec.adaptive_draft_length and spec.confidence_threshold == 0, "method",
               "method none cannot use adaptive draft length or early exit", spec.method)
    if spec.confidence_threshold > 0:
        _check(spec.method == "eagle", "confidence_threshold", "early exit needs EAGLE drafting (method eagle)",
               spec.confidence_threshold)
    for name in ("target_model", "draft_model"):
        model = getattr(spec, name)
        if model and _looks_local(model):
            _check(Path(model).expanduser().is_dir(), name, "no such local model folder", model)
            _check((Path(model).expanduser() / "config.json").is_file(), name,
                   "not a model folder (no config.json in it)", model)
    _validate_arms(spec)


def _validate_arms(spec: RunSpec) -> None:
    """Each arm: a unique name and known keys, and its overrides make a valid RunSpec (checked recursively)."""
    names = ["run"]
    for arm in spec.arms:
        _check(isinstance(arm, dict), "arms", "each arm must be a mapping", arm)
        name = arm.get("name")
        _check(isinstance(name, str) and bool(name) and name not in names, "arms",
               "each arm needs a unique name (\"run\" is the run itself when not listed)", name)
        names.append(name)
        unknown = sorted(set(arm) - set(SPEC_FIELDS) - set(ARM_EXTRA_KEYS))
        _check(not unknown, "arms", f"arm {name!r}: unknown key {unknown[0] if unknown else ''!r}", arm)
        fixed = sorted(set(arm) & set(ARM_FIXED_FIELDS))
        _check(not fixed, "arms", f"arm {name!r}: {fixed[0] if fixed else ''} is the run's, not an arm's", arm)
        _check(arm.get("load_plugin") in (None, True, False), "arms", f"arm {name!r}: load_plugin must be a bool",
               arm.get("load_plugin"))
        overrides = {k: v for k, v in arm.items() if k in SPEC_FIELDS}
        try:
            replace(spec, arms=(), **overrides)
        except ConfigError as err:
            raise ConfigError(f"arm {name!r}: {err}", field="arms", value=arm) from None


def spec_from_mapping(values: dict, *, source: str = "parameters") -> RunSpec:
    """Build a RunSpec from a mapping that may hold other names too (e.g. a notebook's globals).

    Raises:
        ConfigError: a value is invalid.
    """
    known = {k: values[k] for k in SPEC_FIELDS if k in values}
    try:
        return RunSpec(**known)
    except TypeError as err:  # wrong types that dataclasses reject before validation
        raise ConfigError(f"{source}: {err}") from None
