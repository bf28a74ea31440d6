"""Which vLLM build is installed, and the one place that decides who provides each studied feature.

Elastic speculation (adaptive draft length, confidence early exit) is native only in the
IluvatarLabs fork; stock vLLM gets nwor's plugin (nwor.plugin) when allowed, else the run is refused.
Every switch that applies is set explicitly, on and off, and recorded in the result.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nwor.config import RunSpec
from nwor.errors import FeatureUnavailable

# The fork's main line (default adaptive = 1, so "off" must be said) and its later renamed branch.
FORK_SCHEMES = {
    "nwor-fork": ("VLLM_NWOR_ADAPTIVE_DRAFT_LENGTH", "VLLM_NWOR_CONFIDENCE_THRESHOLD"),
    "nwor-fork-spec": ("VLLM_SPEC_ADAPTIVE_DRAFT_LENGTH", "VLLM_SPEC_CONFIDENCE_THRESHOLD"),
}
SPEC_CONFIG_FEATURE_FIELDS = ("draft_confidence_threshold", "draft_length_options",
                              "enable_draft_length_cudagraph_specialization",
                              "num_speculative_tokens_per_batch_size")  # the last: upstream Dynamic SD
DYNAMIC_SD = "num_speculative_tokens_per_batch_size"
ADAPTIVE, EARLY_EXIT = "adaptive_draft_length", "confidence_early_exit"
PLUGIN_LABEL = "nwor-plugin"
# The fork logs this line from its EAGLE proposer; nwor's plugin exposes counters instead.
FORK_EARLY_EXIT_LINE = re.compile(
    r"Confidence early exit stats: (\d+) tokens stopped out of (\d+) checks \(([\d.]+)%\)")


@dataclass(frozen=True)
class Capability:
    """What the installed vLLM can do, detected from `vllm.envs` and `SpeculativeConfig`, not versions."""

    vllm_version: str
    platform: str  # cpu | cuda | rocm | ...
    flavour: str  # stock | nwor-fork | nwor-fork-spec
    adaptive_env: str | None = None
    threshold_env: str | None = None
    spec_config_fields: tuple[str, ...] = ()
    plugin_supported: bool = False
    plugin_reason: str | None = None
    engine_fixes: tuple[str, ...] = ()

    @property
    def native(self) -> dict[str, bool]:
        return {ADAPTIVE: self.adaptive_env is not None, EARLY_EXIT: self.threshold_env is not None}

    @property
    def build(self) -> str:
        return f"vLLM {self.vllm_version} ({self.flavour}, {self.platform})"

    def to_dict(self) -> dict:
        return {**asdict(self), "native": self.native}


def _env_names(envs_module) -> set[str]:
    names = set(getattr(envs_module, "environment_variables", {}) or {})
    return names | {n for n in dir(envs_module) if n.startswith("VLLM_")}


def detect_capability(envs_module=None, spec_config_cls=None, vllm_version: str | None = None,
                      platform: str | None = None) -> Capability:
    """Inspect the installed vLLM (or the given stand-ins, for tests).

    Raises:
        FeatureUnavailable: vLLM is not importable.
    """
    if envs_module is None or spec_config_cls is None or vllm_version is None:
        try:
            import vllm
            import vllm.envs
            from vllm.config import SpeculativeConfig
        except ImportError as err:
            raise FeatureUnavailable(f"vLLM is not importable here: {err}") from None
        envs_module = envs_module or vllm.envs
        spec_config_cls = spec_config_cls or SpeculativeConfig
        vllm_version = vllm_version or vllm.__version__
    if platform is None:
        from vllm.platforms import current_platform

        platform = str(getattr(current_platform, "device_type", "unknown") or "unknown")
    names = _env_names(envs_module)
    flavour, adaptive_env, threshold_env = "stock", None, None
    for candidate, (adaptive, threshold) in FORK_SCHEMES.items():
        if adaptive in names or threshold in names:
            flavour = candidate
            adaptive_env = adaptive if adaptive in names else None
            threshold_env = threshold if threshold in names else None
            break
    try:
        declared = {f.name for f in dataclasses.fields(spec_config_cls)}
    except TypeError:
        declared = set(getattr(spec_config_cls, "model_fields", {}) or {})
    spec_fields = tuple(f for f in SPEC_CONFIG_FEATURE_FIELDS if f in declared)
    from nwor import plugin

    try:
        plugin.check_supported(vllm_version)
        plugin_ok, plugin_reason = True, None
    except FeatureUnavailable as err:
        plugin_ok, plugin_reason = False, str(err)
    fixes = ()
    if platform == "cpu" and vllm_version.split("+")[0] == "0.32.0":
        from nwor.plugin import cpu_fixes

        fixes = (cpu_fixes.CPU_EXPAND_FLOAT,)
    return Capability(vllm_version, platform, flavour, adaptive_env, threshold_env, spec_fields,
                      plugin_ok, plugin_reason, fixes)


@dataclass(frozen=True)
class FeaturePlan:
    """Who provides each feature for one run, and what to set so the engine does exactly that."""

    impl: dict[str, str]  # feature -> native | nwor-plugin | off
    env: dict[str, str] = field(default_factory=dict)  # variables set for the engine, all recorded
    speculative_config: dict = field(default_factory=dict)  # extra SpeculativeConfig fields (fork)
    engine_kwargs: dict = field(default_factory=dict)  # extra vllm.LLM arguments, all recorded

    @property
    def feature_impl(self) -> str:
        active = {v for v in self.impl.values() if v != "off"}
        return "none" if not active else active.pop() if len(active) == 1 else "mixed"

    @property
    def uses_plugin(self) -> bool:
        return PLUGIN_LABEL in self.impl.values()

    def effective(self, engine: dict, plugin_stats: dict | None) -> dict:
        """The configuration a run really ran with: the engine's read-back (`engine_speculation`), plus what
        nwor's plugin reports of its own config when it provides the features (`plugin_stats`: one
        `plugin.read_stats`, None when not read)."""
        out = dict(engine)
        if self.uses_plugin and plugin_stats is not None:
            cfg = plugin_stats.get("config") or {}
            out.update(draft_length_options=plugin_stats.get("draft_length_options") or cfg.get("draft_length_options"),
                       confidence_threshold=cfg.get("confidence_threshold"),
                       adaptive_draft_length=cfg.get("adaptive_draft_length"), source=self.feature_impl)
        if isinstance(out.get("draft_length_options"), tuple):
            out["draft_length_options"] = list(out["draft_length_options"])
        return out

    def feature_stats(self, plugin_totals: dict | None, log_path) -> tuple[dict, dict]:
        """Early-exit counters and the chosen draft-length histogram of arm "run"'s measured batches: the
        plugin's counters, the fork's log line, or why neither."""
        unavailable = {"status": "unavailable", "tokens_stopped": None, "checks": None, "stop_pct": None}
        if self.uses_plugin and plugin_totals is not None:
            early = {"status": "ok", "source": self.feature_impl, "tokens_stopped": plugin_totals["tokens_stopped"],
                     "checks": plugin_totals["checks"], "stop_pct": plugin_totals["stop_pct"], "reason": None}
            lengths = {"status": "ok", "steps": plugin_totals["steps"],
                       "histogram": {str(k): v for k, v in plugin_totals["draft_length_histogram"].items()}}
            return early, lengths
        if self.impl[EARLY_EXIT] == "native":
            parsed = native_early_exit_from_log(log_path) if log_path else None
            if parsed:
                # The fork's counters are cumulative since engine start (warm-up included): labelled so.
                return ({"status": "ok", "source": "native-log", "window": "engine lifetime (last instance)",
                         **parsed, "reason": None},
                        {"status": "unavailable", "histogram": None,
                         "reason": "the fork does not expose chosen lengths"})
            unavailable["reason"] = "the fork logged no early-exit stats line"
        elif self.impl[EARLY_EXIT] == "off" and self.impl[ADAPTIVE] == "off":
            unavailable["reason"] = "features off for this run"
        else:
            unavailable["reason"] = "no early-exit instrumentation for this implementation"
        return unavailable, {"status": "unavailable", "histogram": None, "reason": unavailable["reason"]}

    def to_dict(self) -> dict:
        return {"impl": dict(self.impl), "feature_impl": self.feature_impl, "switches": dict(self.env),
                "speculative_config": dict(self.speculative_config), "engine_kwargs": dict(self.engine_kwargs)}


def _provider(feature: str, spec: RunSpec, cap: Capability) -> str:
    native = cap.native[feature]
    label = "adaptive draft length" if feature == ADAPTIVE else "confidence early exit"
    if spec.feature_impl in ("auto", "native") and native:
        return "native"
    if spec.feature_impl in ("auto", "plugin") and cap.plugin_supported:
        return PLUGIN_LABEL
    if spec.feature_impl == "native":
        why = "it has no native implementation (the IluvatarLabs fork has one)"
    elif spec.feature_impl == "plugin":
        why = f"nwor's plugin cannot run there: {cap.plugin_reason}"
    else:
        why = f"it has no native implementation and nwor's plugin cannot run there: {cap.plugin_reason}"
    raise FeatureUnavailable(f"run {spec.run_id}: {cap.build} cannot provide {label}: {why}",
                             run_id=spec.run_id, feature=feature)


def plan_features(spec: RunSpec, cap: Capability, *, stats_path: str | None = None) -> FeaturePlan:
    """Decide the implementation of each requested feature and the switches that enforce it.

    Raises:
        FeatureUnavailable: a requested feature has no allowed implementation on this build.
    """
    if spec.num_speculative_tokens_per_batch_size is not None and DYNAMIC_SD not in cap.spec_config_fields:
        raise FeatureUnavailable(f"run {spec.run_id}: {cap.build} has no Dynamic SD (its SpeculativeConfig lacks "
                                 f"{DYNAMIC_SD})", run_id=spec.run_id, feature="dynamic_sd")
    wanted = {ADAPTIVE: spec.adaptive_draft_length, EARLY_EXIT: spec.confidence_threshold > 0}
    impl = {f: (_provider(f, spec, cap) if on else "off") for f, on in wanted.items()}
    if impl[ADAPTIVE] == "native" and spec.ewma_alpha != 0.1:
        raise FeatureUnavailable(f"run {spec.run_id}: the fork's controller fixes ewma_alpha at 0.1 (another value "
                                 "is nwor's extension): set feature_impl plugin", run_id=spec.run_id,
                                 feature=ADAPTIVE)
    env: dict[str, str] = {}
    if cap.engine_fixes:
        from nwor.plugin import cpu_fixes

        env[cpu_fixes.ENV_VAR] = ",".join(cap.engine_fixes)
    # Native switches are set whenever the build reads them, on and off alike (the fork defaults to on).
    if cap.adaptive_env:
        env[cap.adaptive_env] = "1" if impl[ADAPTIVE] == "native" else "0"
    if cap.threshold_env:
        env[cap.threshold_env] = str(spec.confidence_threshold if impl[EARLY_EXIT] == "native" else 0.0)
    engine_kwargs: dict = {}
    if cap.plugin_supported and spec.speculative:
        # The engine settings the plugin needs (e.g. vLLM 0.24.0's V1 model runner, no async scheduling)
        # apply to plugin-off runs too, so on and off differ only by the features themselves.
        from nwor import plugin

        env.update(plugin.required_engine_env(cap.vllm_version))
        engine_kwargs.update(plugin.required_engine_kwargs(cap.vllm_version))
    speculative_config = {}
    if "draft_confidence_threshold" in cap.spec_config_fields:
        speculative_config["draft_confidence_threshold"] = (
            spec.confidence_threshold if impl[EARLY_EXIT] == "native" else 0.0)
    if "draft_length_options" in cap.spec_config_fields and spec.draft_length_options and impl[ADAPTIVE] == "native":
        speculative_config["draft_length_options"] = list(spec.draft_length_options)
    if spec.synthetic_acceptance_rate is not None:
        from nwor import synthetic

        speculative_config.update(synthetic.speculative_fields(spec, cap))  # refuses where the build cannot
    if PLUGIN_LABEL in impl.values():
        from nwor.plugin import ENV_VAR, PluginConfig

        env[ENV_VAR] = PluginConfig(
            adaptive_draft_length=impl[ADAPTIVE] == PLUGIN_LABEL,
            draft_length_options=spec.draft_length_options,
            confidence_threshold=spec.confidence_threshold if impl[EARLY_EXIT] == PLUGIN_LABEL else 0.0,
            ewma_alpha=spec.ewma_alpha,
            stats_path=stats_path,
        ).to_json()
    return FeaturePlan(impl=impl, env=env, speculative_config=speculative_config, engine_kwargs=engine_kwargs)


def native_early_exit_from_log(log_path: str | Path) -> dict | None:
    """The fork's last `Confidence early exit stats` line in the run's vLLM log, or None."""
    path = Path(log_path)
    if not path.exists():
        return None
    matches = FORK_EARLY_EXIT_LINE.findall(path.read_text(errors="replace"))
    if not matches:
        return None
    stopped, checks, pct = matches[-1]
    return {"tokens_stopped": int(stopped), "checks": int(checks), "stop_pct": float(pct)}
