"""A run's engine instances: which engine each arm group gets, the planned order, and running it.

One engine at a time: each instance starts its group's engine, warms it up (nwor.design.WarmupRule),
runs its measured rounds (every arm of the group once per round, balanced order; the nwor plugin is
reconfigured before every batch: counters zero, and each arm resumes its own acceptance EWMA where its
previous batch in this engine left it, as an engine running only that arm would), and releases the engine
before the next instance starts.
"""
from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, replace

from nwor import bench, plugin_ranks, provenance, shift
from nwor import metrics as m
from nwor.config import RunSpec
from nwor.controller_trace import fetch_traces
from nwor.models import resolve_models
from nwor.design import (RUN_ARM, Arm, arms_of, balanced_rounds, design_name, design_seed, group_arms,
                         instance_order, plugin_config)
from nwor.engine import engine_speculation, keep_until_exit, process_ends_after_run, release_engine, start_engine
from nwor.errors import FeatureUnavailable
from nwor.features import Capability, FeaturePlan, plan_features


@dataclass(frozen=True)
class EngineSetup:
    """How one group's engines start: the arm whose spec builds them, the plan, and whether the plugin loads."""

    lead: str
    plan: FeaturePlan
    plugin_loaded: bool


@dataclass(frozen=True)
class Design:
    name: str
    arms: dict[str, Arm]
    plans: dict[str, FeaturePlan]
    groups: list[list[str]]
    setups: list[EngineSetup]
    instances: list[dict]  # {"instance", "group", "arms", "rounds": [[arm names per measured round]]}
    seed: int
    engine_instances: int
    engine_process: str = "own"  # where the engine cores run: "own" (vLLM's default) or "in-process" (the kernel)
    engine_process_note: str | None = None  # why a requested in-process engine was not used

    def to_dict(self) -> dict:
        group_of = {name: g for g, names in enumerate(self.groups) for name in names}
        arms = [{**arm.to_dict(), "group": group_of[name], "plugin_loaded": self.setups[group_of[name]].plugin_loaded,
                 "feature_impl": self.plans[name].feature_impl} for name, arm in self.arms.items()]
        order = [{"instance": i["instance"], "group": i["group"], "arms": i["arms"],
                  "batches": [name for rnd in i["rounds"] for name in rnd]} for i in self.instances]
        return {"name": self.name, "engine_instances": self.engine_instances, "groups": self.groups,
                "order": order, "seed": self.seed, "arms": arms, "engine_process": self.engine_process,
                "engine_process_note": self.engine_process_note,
                "rule": "arms differing only in nwor-plugin settings share an engine and alternate by batch; "
                        "others get separate engines; orders are seeded permutations, then reversed (ABBA)"}


def _native_switches(plan: FeaturePlan) -> dict:
    """What the engine fixes at start besides the plugin's own variable (fork switches, speculative fields)."""
    from nwor.plugin import ENV_VAR

    return {**{k: v for k, v in plan.env.items() if k != ENV_VAR}, **{f"spec:{k}": v for k, v in
                                                                     plan.speculative_config.items()}}


def _setup(names: list[str], arms: dict[str, Arm], plans: dict[str, FeaturePlan], cap: Capability) -> EngineSetup:
    needs_plugin = any(plans[n].uses_plugin or arms[n].load_plugin for n in names)
    lead = next((n for n in names if plans[n].uses_plugin), names[0])
    plan = plans[lead]
    if needs_plugin and not plan.uses_plugin:
        # Every arm has its features off but one asks for the plugin loaded: start it with its features off.
        from nwor.plugin import ENV_VAR, PluginConfig

        if not cap.plugin_supported:
            raise FeatureUnavailable(f"arm {lead!r} asks for nwor's plugin loaded: {cap.plugin_reason}")
        plan = replace(plan, env={**plan.env, ENV_VAR: PluginConfig().to_json()})
    return EngineSetup(lead, plan, needs_plugin)


def plan_design(spec: RunSpec, cap: Capability) -> Design:
    """Arms, engine groups and the full order, decided before any engine starts.

    Raises:
        FeatureUnavailable: an arm needs a feature (or the plugin) this build cannot provide.
        ConfigError: an arm is inconsistent (e.g. stock vLLM with a feature on).
    """
    arms = {a.name: a for a in arms_of(spec)}
    plans = {name: plan_features(arm.spec, cap) for name, arm in arms.items()}
    groups = group_arms(list(arms.values()), {n: _native_switches(p) for n, p in plans.items()}, spec.arm_design)
    setups = [_setup(g, arms, plans, cap) for g in groups]
    seed = design_seed(spec)
    rng = random.Random(seed)
    instances = [{"instance": i, "group": g, "arms": groups[g],
                  "rounds": balanced_rounds(groups[g], spec.measured_batches, rng)}
                 for i, g in enumerate(instance_order(groups, spec.engine_instances, rng))]
    process, note = _engine_process(spec, [setups[i["group"]].plugin_loaded for i in instances], cap)
    return Design(design_name(groups), arms, plans, groups, setups, instances, seed, spec.engine_instances,
                  process, note)


def _engine_process(spec: RunSpec, plugin_loaded: list[bool], cap: Capability) -> tuple[str, str | None]:
    """Where this run's engine cores run, and why an in-process request was declined.

    `plugin_loaded`: whether each engine instance, in start order, loads nwor's plugin. In-process engines
    share the kernel's Python state: nwor's plugin patches vLLM's classes when it installs and cannot be
    uninstalled, so a stock engine after a plugin engine in one kernel would not be stock. A plugin engine
    after stock ones is what its arm says (start_engine installs the plugin, which vLLM loads once per
    process). The fork's switches are read by its own code paths, and its older branch schedules no drafts
    in-process. Such runs keep an engine process of their own.
    """
    if not spec.engine_in_process:
        return "own", None
    if cap.flavour != "stock":
        return "own", f"in-process declined: the {cap.flavour} build runs its engine core in its own process"
    if plugin_loaded != sorted(plugin_loaded):  # sorted (False < True): every stock engine starts first
        return "own", "in-process declined: a stock engine after a plugin-loaded one must not share its process"
    return "in-process", None


def _configurer(llm, plugin_loaded: bool):
    if not plugin_loaded:
        return None
    from nwor import plugin

    def configure(arm_spec: RunSpec, trace_label: str | None = None, segment: dict | None = None) -> None:
        plugin.configure(llm, plugin_config(arm_spec), keep_controller=True, trace_label=trace_label,
                         segment=segment)
    return configure


def run_instances(spec: RunSpec, design: Design, *, profile_region: bool = False, on_batch=None) -> list[dict]:
    """Start, measure and release every planned engine instance in order; one record per instance.

    Each record is the replicate of the result JSON plus private keys (leading "_") that collect_arm reads.
    """
    loaded: dict[tuple, list] = {}  # arms share their prompt sets: load them once (hf: sets download)
    prompts = {}  # arm -> prompts of each workload part (nwor.shift; one part without a shift)
    for name, arm in design.arms.items():
        a = arm.spec
        key = (a.prompt_set, repr(a.prompt_shift), a.prompt_min_chars, a.prompt_max_chars, a.prompt_shuffle_seed)
        prompts[name] = loaded[key] if key in loaded else loaded.setdefault(key, shift.load_part_prompts(a))
    counts: dict[str, int] = {}  # measured batches so far per arm, across instances: the seed's batch index
    records, set_keys = [], set()
    for inst in design.instances:
        setup = design.setups[inst["group"]]
        for key in set_keys - set(setup.plan.env):
            os.environ.pop(key, None)  # a previous instance's switches (e.g. the plugin's) must not leak
        set_keys = set(setup.plan.env)
        lead = replace(design.arms[setup.lead].spec, engine_in_process=design.engine_process == "in-process")
        started_utc = provenance.utc_now()
        t0 = time.perf_counter()
        llm = start_engine(lead, resolve_models(lead), setup.plan, profile_region=profile_region)
        engine_start_s = time.perf_counter() - t0
        try:
            record = _measure_instance(llm, spec, design, inst, setup, prompts, counts, profile_region, on_batch)
        except BaseException:
            release_engine(llm)
            raise
        if design.engine_process == "in-process" and inst is design.instances[-1] and process_ends_after_run():
            keep_until_exit(llm)  # the kernel is killed right after the notebook: its shutdown would be wasted
        else:
            release_engine(llm)
        record.update(started_utc=started_utc, engine_start_s=engine_start_s, finished_utc=provenance.utc_now())
        records.append(record)
    return records


def _measure_instance(llm, spec, design, inst, setup, prompts, counts, profile_region, on_batch) -> dict:
    configure = _configurer(llm, setup.plugin_loaded)
    engine_conf = None
    if RUN_ARM in inst["arms"]:
        if configure:
            configure(design.arms[RUN_ARM].spec)
        engine_conf = engine_speculation(llm)
    run_stats = None  # the plugin's stats after arm "run"'s last batch: its effective config comes from them
    warmup = bench._warm_up(llm, spec, inst["arms"], {n: (shift.part_spec(design.arms[n].spec, 0), prompts[n][0])
                                                      for n in inst["arms"]}, configure)
    workers = None  # each tensor-parallel rank's worker and whether nwor's drafter is hooked there
    if setup.plugin_loaded:
        from nwor import plugin

        plugin.reset_traces(llm)  # traces cover the measured batches only
        workers = plugin.read_ranks(llm)
    raw = {n: {} for n in inst["arms"]}
    plugin_totals = {n: None for n in inst["arms"]}
    rank_totals = {n: None for n in inst["arms"]}  # the same counters, per rank
    rows, results, requests = [], [], []
    if profile_region:
        llm.start_profile()
    for r, rnd in enumerate(inst["rounds"]):
        for name in rnd:
            arm_spec = design.arms[name].spec
            part = shift.part_of_round(spec, r)
            if configure:
                configure(arm_spec, trace_label=name, segment={"round": r, "part": part, "batch": counts.get(name, 0)})
            before = m.snapshot(llm)
            batch = counts.get(name, 0)
            row, reqs = bench._timed_batch(llm, shift.part_spec(arm_spec, part), prompts[name][part],
                                           spec.warmup_batches + r, batch)
            raw[name] = m.add(raw[name], m.diff(before, m.snapshot(llm)))
            if setup.plugin_loaded:
                from nwor import plugin

                stats = plugin.read_stats(llm)  # once per batch: counters and the arm's config together
                plugin_totals[name] = m.add_plugin_stats(plugin_totals[name], stats)
                rank_totals[name] = plugin_ranks.add(rank_totals[name], stats["ranks"])
                run_stats = stats if name == RUN_ARM else run_stats
            counts[name] = batch + 1
            rows.append({"arm": name, "position": len(rows), "round": r, "prompt_batch": spec.warmup_batches + r,
                         **({"part": part} if spec.prompt_shift else {}),
                         "latency_s": row["latency_s"], "num_output_tokens": row["num_output_tokens"],
                         "output_tokens_per_s": row["output_tokens_per_s"]})
            if name == RUN_ARM:
                place = {"instance": inst["instance"], "position": rows[-1]["position"], "round": r}
                results.append({**row, **place})
                requests.extend({**q, "instance": inst["instance"]} for q in reqs)
                if on_batch:
                    on_batch(batch, row["latency_s"])
    if profile_region:
        llm.stop_profile()
    counters = {n: {**m.spec_decode_metrics(raw[n]), "plugin": plugin_totals[n]} for n in inst["arms"]}
    effective = None if engine_conf is None else design.plans[RUN_ARM].effective(engine_conf, run_stats)
    traces = fetch_traces(llm, inst["arms"], setup.plugin_loaded, setup.plan)
    return {"instance": inst["instance"], "group": inst["group"], "arms": inst["arms"],
            "plugin_loaded": setup.plugin_loaded, "warmup": warmup, "batches": rows, "counters": counters,
            "plugin_ranks": None if workers is None else plugin_ranks.replicate_block(workers, rank_totals),
            "controller_trace": traces,
            "_raw": raw, "_plugin": plugin_totals, "_results": results, "_requests": requests,
            "_effective": effective, "_gpu_memory_used_bytes": provenance.gpu_memory_used_bytes()}


def public(record: dict) -> dict:
    """The replicate as stored in the result JSON (private keys dropped)."""
    return {k: v for k, v in record.items() if not k.startswith("_")}


def collect_arm(records: list[dict], name: str) -> dict:
    """One arm over every instance that measured it: the seed's rows, summed counters, plugin totals."""
    mine = [r for r in records if name in r["arms"]]
    raw, plugin_totals = {}, None
    for r in mine:
        raw = m.add(raw, r["_raw"][name])
        if r["_plugin"][name] is not None:
            plugin_totals = m.add_plugin_stats(plugin_totals, r["_plugin"][name])
    memory = [r["_gpu_memory_used_bytes"] for r in mine if r["_gpu_memory_used_bytes"] is not None]
    return {"results": [row for r in mine for row in r["_results"]],
            "requests": [q for r in mine for q in r["_requests"]], "counters": raw, "plugin_stats": plugin_totals,
            "plugin_loaded": mine[0]["plugin_loaded"], "effective": mine[0]["_effective"],
            "engine_start_s": mine[0]["engine_start_s"], "gpu_memory_used_bytes": max(memory) if memory else None}
