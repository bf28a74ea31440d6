"""Arms within one run, the A/A calibration they give, and verdicts against it: the first half of compare.

A run's `replicates` hold batches of one or more arms over one or more engine instances. Arms measured by
the same engines are compared paired (within-engine: engine-to-engine variance cancels), arms with engines
of their own unpaired (engines-interleaved), both with `nwor.stats.change_ci`. Two arms of identical
settings are an A/A comparison: its interval is the band of differences noise alone produces, and an
effect whose interval overlaps the band of its design is "not established". A band holds on the machine of its
A/A runs only (nwor.machines): a comparison on a known machine takes its band from that machine's A/A runs.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from nwor import stats
from nwor.analysis import Frames
from nwor.machines import is_known, machine_column, only_machine
from nwor.stats import Estimate

ACROSS_RUNS = "across runs"  # two result files, each its own engine instance(s), run one after the other
# Which A/A band calibrates a design: separate engines, however ordered, vary like interleaved engines.
BAND_OF = {"within-engine": "within-engine", "engines-interleaved": "engines-interleaved",
           ACROSS_RUNS: "engines-interleaved"}
METRICS = {"latency": "latency_s", "throughput": "output_tokens_per_s"}
UNCALIBRATED = "(no A/A band)"
# A mean over workloads some of whose machines (or designs) have an A/A band and some none: judged by the bands
# there are, and said to be so.
PARTLY_CALIBRATED = "(A/A band for only some of its workloads)"
NOISE = "inside the noise"
NOT_ESTABLISHED = "not established (overlaps the A/A band)"


def verdict(estimate: Estimate, better: str = "higher", aa_band: tuple[float, float] | None = None) -> str:
    """"improvement", "regression", "inside the noise" (CI includes 0), or "not established" (CI overlaps
    the A/A band, the spread two identical arms show); "no verdict: ..." without an instance-aware interval.

    Args:
        estimate: the change, e.g. a latency reduction in percent.
        better: "higher" when a positive value is good (a reduction, a throughput gain), "lower" when a
            positive value is bad (an overhead).
        aa_band: the A/A interval (low, high) in the same sign convention as `estimate`, or None.

    Raises:
        ValueError: `better` is neither "higher" nor "lower".
    """
    if better not in ("higher", "lower"):
        raise ValueError(f"better must be 'higher' or 'lower', got {better!r}")
    if math.isnan(estimate.value):
        return estimate.note or "no data"
    if not estimate.has_ci or not estimate.instance_aware:
        return f"no verdict: {estimate.note or 'no instance-aware interval'}"
    if estimate.ci_low <= 0 <= estimate.ci_high:
        return NOISE
    if aa_band is not None and estimate.ci_low <= aa_band[1] and aa_band[0] <= estimate.ci_high:
        return NOT_ESTABLISHED
    good = estimate.ci_low > 0 if better == "higher" else estimate.ci_high < 0
    return "improvement" if good else "regression"


class Samples:
    """Batch values of every (run id, arm), grouped by engine instance."""

    def __init__(self, arm_batches: pd.DataFrame):
        frame = arm_batches.copy()
        missing = frame.output_tokens_per_s.isna()
        frame.loc[missing, "output_tokens_per_s"] = frame.num_output_tokens[missing] / frame.latency_s[missing]
        self._groups = {key: dict(tuple(g.groupby("instance", sort=True)))
                        for key, g in frame.groupby(["run_id", "arm"], sort=False)}

    def instances(self, run_id: str, arm: str) -> list:
        return sorted(self._groups.get((run_id, arm), {}))

    def values(self, run_id: str, arm: str, column: str) -> list[np.ndarray]:
        groups = self._groups.get((run_id, arm), {})
        return [groups[i][column].to_numpy(dtype=float) for i in sorted(groups)]

    def has(self, run_id: str, arm: str) -> bool:
        return (run_id, arm) in self._groups


def reference_arm(arms: list) -> str | None:
    """The arm others are compared with: "baseline" if measured, else "stock" (vLLM without nwor), else the first."""
    return next((name for name in ("baseline", "stock") if name in arms), arms[0] if arms else None)


def arm_pairs(samples: Samples, run_id: str, arms: list[str]) -> list[tuple[str, str]]:
    """(reference, arm) comparisons of a multi-arm run.

    Every arm against the run's reference arm; and inside an engine group that does not hold the reference,
    every arm against that group's own reference ("plugin_off" if there, else its first arm), paired, so
    that e.g. the confidence gate's cost is also measured within one engine rather than only across engines.
    """
    reference = reference_arm(arms)
    pairs = [(reference, arm) for arm in arms if arm != reference]
    groups: dict[tuple, list[str]] = {}
    for arm in arms:  # arms measured by the same engine instances share a group
        groups.setdefault(tuple(samples.instances(run_id, arm)), []).append(arm)
    for group in groups.values():
        if reference not in group and len(group) > 1:
            local = "plugin_off" if "plugin_off" in group else group[0]
            pairs += [(local, arm) for arm in group if arm != local]
    return pairs


def comparison_design(samples: Samples, base: tuple[str, str], treat: tuple[str, str]) -> tuple[str, bool]:
    """(design, paired) of comparing arm `base` with arm `treat`, each a (run id, arm).

    Within one run: "within-engine" when both arms ran in the same engine instances (paired), else
    "engines-interleaved". Two runs: `ACROSS_RUNS`, unpaired.
    """
    if base[0] != treat[0]:
        return ACROSS_RUNS, False
    paired = samples.instances(*base) == samples.instances(*treat)
    return ("within-engine" if paired else "engines-interleaved"), paired


def change(samples: Samples, base: tuple[str, str], treat: tuple[str, str]) -> dict[str, Estimate]:
    """Relative change % of each metric from arm `base` to arm `treat`, each a (run id, arm)."""
    paired = comparison_design(samples, base, treat)[1]
    return {name: stats.change_ci(samples.values(*base, column), samples.values(*treat, column), paired=paired)
            for name, column in METRICS.items()}


def describe(estimate: Estimate, paired: bool) -> str:
    """"3 paired instances, 30 vs 30 batches" or "3 vs 3 engine instances, 30 vs 30 batches"."""
    batches = f"{estimate.n_baseline} vs {estimate.n_treatment} batches"
    if paired:
        n = estimate.instances_treatment
        return f"{n} paired instance{'' if n == 1 else 's'}, {batches}"
    return f"{estimate.instances_baseline} vs {estimate.instances_treatment} engine instances, {batches}"


def within_run(frames: Frames, samples: Samples | None = None) -> pd.DataFrame:
    """Every arm of every ok multi-arm run against its reference arm, one row each; `aa` marks A/A pairs.

    Columns: grid, run_id, label, machine, design, reference_arm, arm, aa, paired, instances, method and the
    latency and throughput change % with their intervals.
    """
    samples = samples or Samples(frames.arm_batches)
    rows = []
    for run in frames.runs[frames.runs.status == "ok"].itertuples():
        arms = [a for a in run.arms if samples.has(run.run_id, a)]
        for reference, arm in arm_pairs(samples, run.run_id, arms):
            est = change(samples, (run.run_id, reference), (run.run_id, arm))
            design, paired = comparison_design(samples, (run.run_id, reference), (run.run_id, arm))
            row = {"grid": run.grid, "run_id": run.run_id, "label": run.label, "machine": getattr(run, "machine", None),
                   "design": design,
                   "reference_arm": reference, "arm": arm, "paired": paired,
                   "aa": _settings(run.arm_settings, arm) == _settings(run.arm_settings, reference),
                   "instances": describe(est["latency"], paired), "method": est["latency"].method,
                   "feature_impl": run.feature_impl, "vllm": run.vllm}
            for name, estimate in est.items():
                put(row, f"{name}_change_pct", estimate)
            rows.append(row)
    columns = ["grid", "run_id", "label", "machine", "design", "reference_arm", "arm", "aa", "paired", "instances",
               "method", "feature_impl", "vllm"]
    columns += [f"{m}_change_pct{s}" for m in METRICS for s in ("", "_ci_low", "_ci_high", "_note")]
    return pd.DataFrame(rows, columns=columns)


def _settings(arm_settings: dict, arm: str) -> dict | None:
    # What an arm measures. Its engine group and label are bookkeeping, and `load_plugin` is a request whose
    # outcome, `plugin_loaded`, is compared instead.
    settings = arm_settings.get(arm)
    return None if settings is None else {k: v for k, v in settings.items()
                                          if k not in ("group", "label", "load_plugin")}


def put(row: dict, name: str, estimate: Estimate, better: str | None = None, band=None) -> None:
    """Write an estimate's value, interval, note (and verdict, if `better` is given) into `row`.

    A verdict of improvement or regression made without an A/A band says so: nothing calibrated it.
    """
    row.update({name: estimate.value, f"{name}_ci_low": estimate.ci_low, f"{name}_ci_high": estimate.ci_high,
                f"{name}_note": estimate.note})
    if better is not None:
        row[f"{name}_verdict"] = calibrated_verdict(estimate, better, band)


def calibrated_verdict(estimate: Estimate, better: str, band, complete: bool = True) -> str:
    """`verdict`, where an improvement or regression says what did not calibrate it: no band at all, or a band
    for only some of what the estimate averages (`complete` false)."""
    said = verdict(estimate, better, band)
    if said not in ("improvement", "regression") or (band is not None and complete):
        return said
    return f"{said} {UNCALIBRATED if band is None else PARTLY_CALIBRATED}"


def calibration(within: pd.DataFrame) -> pd.DataFrame:
    """The A/A comparisons (two arms of identical settings), one row each, with their verdict against 0.

    An A/A interval that excludes 0 is itself a finding: drift or an order effect the design did not cancel.
    """
    aa = within[within.aa.astype(bool)].copy()
    for metric in METRICS:
        name = f"{metric}_change_pct"
        aa[f"{name}_verdict"] = [verdict(Estimate(r[name], r[f"{name}_ci_low"], r[f"{name}_ci_high"],
                                                        method=r.method, note=r[f"{name}_note"]), "lower")
                                 .replace("improvement", "differs").replace("regression", "differs")
                                 for _, r in aa.iterrows()]
    return aa.reset_index(drop=True)


def aa_band(aa: pd.DataFrame, design: str, metric: str = "latency",
            machine: str | None = None) -> tuple[tuple[float, float] | None, str]:
    """The A/A band (low, high) of `metric` change % that calibrates `design`, and a line saying which.

    The band spans every instance-aware A/A interval of that design (the widest, to be safe). For a comparison
    made on a known `machine`, only that machine's A/A runs count: a band measured elsewhere is not borrowed.
    An unknown machine (older results) takes every A/A run, as before machines were recorded.
    """
    band_design = BAND_OF.get(design)
    name = f"{metric}_change_pct"
    usable = aa[(aa.design == band_design) & aa[f"{name}_ci_low"].notna()
                & (aa.method == stats.HIERARCHICAL)] if band_design and not aa.empty else aa.iloc[0:0]
    if usable.empty:
        return None, f"no A/A calibration for {design} designs (no instance-aware {band_design or design} A/A run)"
    where = ""
    if is_known(machine):
        machines = machine_column(usable)
        if not (machines == machine).any():
            return None, (f"no A/A calibration on this machine ({machine}): the {band_design} A/A runs come from "
                          f"{', '.join(sorted(set(machines)))}")
        usable, where = usable[machines == machine], f", on {machine}"
    low, high = float(usable[f"{name}_ci_low"].min()), float(usable[f"{name}_ci_high"].max())
    return (low, high), f"A/A band {low:+.1f} to {high:+.1f}% ({band_design}, {', '.join(usable.run_id)}{where})"


def rows_band(aa: pd.DataFrame, rows: pd.DataFrame, design: str,
              metric: str = "latency") -> tuple[tuple[float, float] | None, str]:
    """`aa_band` for a figure of several comparisons (`rows`, with `machine`) drawn against one band.

    Rows of one machine (or none known) share that machine's band; rows of several machines have no common band.
    """
    machine, n = only_machine(rows)
    if n > 1:
        return None, f"comparisons from {n} machines: no common A/A band (each row's calibration names its own)"
    return aa_band(aa, design, metric, machine)
