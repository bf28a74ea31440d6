"""Does running a grid in parallel (nwor run --executor ray) change its measurements? Compare two outputs folders.

    python scripts/parallel_vs_serial.py SERIAL_OUTPUTS PARALLEL_OUTPUTS --profile gpu-smoke [--pooled]
        [--out FILE.json]

Per run id that is ok in both: the latency change % of the parallel run against the serial one (the runs'
arm "run" batches, engine instances kept apart: nwor.stats.change_ci, unpaired, as two separate runs are),
judged against the A/A band of engines-interleaved designs (nwor.arms.aa_band, from the A/A runs in the
serial folder, or --aa-band LOW HIGH). A run agrees when its interval includes 0 or overlaps the band
(verdict "inside the noise" / "not established"). Also what each two-arm run measures (arm "run" against its
reference arm in the same engines: the study's result), parallel minus serial in points, all runs together
with an interval that must include 0. And the wall-time ratio parallel / serial, each the span
from the first START to the last end line of the profile's master log. With --pooled, all runs are judged
together instead (each run one paired unit: for profiles of one engine instance per run). The runs' recorded
environment variables (`env.env_vars`) must match pair by pair, apart from those set per run or per engine
(PER_RUN_ENV, and any whose value differs among the serial runs themselves): a difference there, not the
parallelism, could explain a latency change. Exit 0 when every compared run (or, with --pooled, the runs
together) agrees, the effects agree, no environment differs and the ratio is at most --max-wall-ratio;
1 otherwise; 2 on bad input.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from datetime import datetime
from pathlib import Path

from nwor import stats
from nwor.analysis import load_profile
from nwor.arms import NOISE, NOT_ESTABLISHED, Samples, aa_band, calibration, verdict, within_run
from nwor.suite import MASTER_LOG

AGREE = (NOISE, NOT_ESTABLISHED)
# Set per run by the executor or the run, or per engine by vLLM (random names on the CPU build), so they differ
# between any two runs.
PER_RUN_ENV = ("NWOR_RAY_TASK_ID", "VLLM_LOGGING_CONFIG_PATH", "CUDA_VISIBLE_DEVICES", "VLLM_DIST_IDENT",
               "VLLM_OBJECT_STORAGE_SHM_BUFFER_NAME")
LINE = re.compile(r"^\[([^\]]+)\] (\S+)\s+\S+/\S+")  # nwor.suite.SuiteLog's line: [stamp] EVENT grid/run_id


def wall_s(outputs: Path, profile: str) -> float | None:
    """Seconds from the first START to the last COMPLETE/ERROR in the profile's master log (None: no runs)."""
    try:
        lines = (outputs / profile / MASTER_LOG).read_text().splitlines()
    except FileNotFoundError:
        return None
    stamps = {"START": [], "END": []}
    for line in lines:
        m = LINE.match(line)
        if m and m.group(2) in ("START", "COMPLETE", "ERROR"):
            when = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")
            stamps["START" if m.group(2) == "START" else "END"].append(when)
    if not stamps["START"] or not stamps["END"]:
        return None
    return (max(stamps["END"]) - min(stamps["START"])).total_seconds()


def run_latencies(frames) -> dict[str, list[list[float]]]:
    """run id -> arm "run"'s batch latencies, one list per engine instance, for ok runs."""
    ok = set(frames.runs[frames.runs.status == "ok"].run_id)
    batches = frames.arm_batches
    batches = batches[(batches.arm == "run") & batches.run_id.isin(ok)]
    return {run_id: [list(g.latency_s) for _, g in rows.groupby("instance")] for run_id, rows in
            batches.groupby("run_id")}


def run_docs(outputs: Path, profile: str) -> dict[str, dict]:
    """run id -> its result JSON, for what load_profile's frames do not keep (placement, environment)."""
    found = {}
    for path in sorted((outputs / profile).glob("*/*.json")):
        try:
            doc = json.loads(path.read_text())
        except ValueError:
            continue  # load_profile already lists unreadable files; placement is display only
        if isinstance(doc, dict) and "run_id" in doc:
            found[doc["run_id"]] = doc
    return found


def _env(doc: dict) -> dict:
    found = (doc.get("env") or {}).get("env_vars")
    return found if isinstance(found, dict) else {}


def varying_env(docs: list[dict]) -> set[str]:
    """Variables whose value differs among these runs (the serial ones): set per run, not by the executor."""
    envs = [_env(doc) for doc in docs]
    return {name for name in set().union(*envs) if len({env.get(name) for env in envs}) > 1} if envs else set()


def env_differences(serial_doc: dict, parallel_doc: dict, ignore=()) -> dict[str, list]:
    """Variable -> [serial value, parallel value] (None: unset) for each recorded variable that differs, apart
    from PER_RUN_ENV and `ignore`."""
    s, p = _env(serial_doc), _env(parallel_doc)
    return {name: [s.get(name), p.get(name)] for name in sorted(set(s) | set(p))
            if name not in PER_RUN_ENV and name not in ignore and s.get(name) != p.get(name)}


def pooled(lat_s: dict, lat_p: dict, run_ids: list[str], band) -> dict | None:
    """All runs judged together, each run one paired unit (its serial engines vs its parallel engines).

    Runs of one engine instance get batch-only intervals of their own (no verdict); across runs, the spread of
    the per-run differences holds engine-to-engine variance, so `nwor.stats.change_ci` with the runs as paired
    instances gives an instance-aware interval (Student t on the run means, len(run_ids) - 1 df). None below 2 runs.
    """
    if len(run_ids) < 2:
        return None
    flat = {name: [[x for instance in lat[run_id] for x in instance] for run_id in run_ids]
            for name, lat in (("serial", lat_s), ("parallel", lat_p))}
    est = stats.change_ci(flat["serial"], flat["parallel"], paired=True)
    said = verdict(est, "lower", band)
    return {"runs": len(run_ids), "latency_change_pct": est.value, "ci_low": est.ci_low, "ci_high": est.ci_high,
            "method": f"{est.method}; runs as paired instances", "verdict": said, "agrees": said in AGREE}


def run_effects(within) -> dict[str, float]:
    """run id -> arm "run"'s latency change % against its reference arm in the same run (a nwor.arms.within_run
    table: the study's own result), for ok runs with two arms that are not an A/A pair."""
    within = within[(within.arm == "run") & ~within.aa.astype(bool) & within.latency_change_pct.notna()]
    return dict(zip(within.run_id, within.latency_change_pct))


def effects(within_s, within_p) -> dict | None:
    """Serial and parallel per two-arm run, what the run measures (arm "run" against its reference arm), and the
    difference in points; together, the mean difference over runs with a Student-t interval (runs as instances:
    nwor.stats.mean_ci). The host's load may shift absolute latencies while effects measured arm against arm
    in one engine stay; a difference whose interval excludes 0 changed the results. None without such runs."""
    s, p = run_effects(within_s), run_effects(within_p)
    rows = [{"run_id": run_id, "serial_pct": s[run_id], "parallel_pct": p[run_id],
             "difference_points": p[run_id] - s[run_id]} for run_id in sorted(set(s) & set(p))]
    if not rows:
        return None
    est = stats.mean_ci([[row["difference_points"]] for row in rows])
    return {"rows": rows, "runs": len(rows), "difference_points": est.value, "ci_low": est.ci_low,
            "ci_high": est.ci_high, "method": f"{est.method}; runs as instances",
            "agrees": bool(est.has_ci and est.ci_low <= 0 <= est.ci_high)}


def compare(serial: Path, parallel: Path, profile: str, band=None) -> dict:
    """The per-run comparison rows, the A/A band used and the wall times."""
    frames_s, frames_p = load_profile(serial, profile), load_profile(parallel, profile)
    # Each folder's within-run comparisons once: they give the A/A band and the effects.
    within_s, within_p = (within_run(frames, Samples(frames.arm_batches)) for frames in (frames_s, frames_p))
    note = "from --aa-band"
    if band is None:
        band, note = aa_band(calibration(within_s), "engines-interleaved")
    lat_s, lat_p = run_latencies(frames_s), run_latencies(frames_p)
    docs_s, docs_p = run_docs(serial, profile), run_docs(parallel, profile)
    common, rows = sorted(set(lat_s) & set(lat_p)), []
    per_run = varying_env([docs_s[run_id] for run_id in common if run_id in docs_s])
    for run_id in common:
        est = stats.change_ci(lat_s[run_id], lat_p[run_id])
        said = verdict(est, "lower", band)
        rows.append({"run_id": run_id, "latency_change_pct": est.value, "ci_low": est.ci_low, "ci_high": est.ci_high,
                     "instances": [est.instances_baseline, est.instances_treatment], "method": est.method,
                     "verdict": said, "agrees": said in AGREE, "placement": docs_p.get(run_id, {}).get("placement"),
                     "env_differs": env_differences(docs_s.get(run_id, {}), docs_p.get(run_id, {}), per_run)})
    wall = {"serial_s": wall_s(serial, profile), "parallel_s": wall_s(parallel, profile)}
    ratio = wall["parallel_s"] / wall["serial_s"] if wall["serial_s"] and wall["parallel_s"] is not None else None
    return {"profile": profile, "aa_band_pct": band, "aa_band_note": note, "rows": rows,
            "pooled": pooled(lat_s, lat_p, common, band), "effects": effects(within_s, within_p), "wall": wall,
            "wall_ratio": ratio, "only_serial": sorted(set(lat_s) - set(lat_p)),
            "only_parallel": sorted(set(lat_p) - set(lat_s))}


def _fmt(x) -> str:
    return "null" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:+.1f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("serial", type=Path, help="outputs folder of the serial (local executor) suite")
    parser.add_argument("parallel", type=Path, help="outputs folder of the parallel (--executor ray) suite")
    parser.add_argument("--profile", required=True)
    parser.add_argument("--aa-band", nargs=2, type=float, metavar=("LOW", "HIGH"),
                        help="A/A latency change band in %% (default: from the serial folder's A/A runs)")
    parser.add_argument("--max-wall-ratio", type=float, default=0.3)
    parser.add_argument("--pooled", action="store_true",
                        help="judge the runs together (needed with one engine instance per run, e.g. gpu-smoke-1x, "
                             "whose per-run intervals are batch-only)")
    parser.add_argument("--out", type=Path, help="write the comparison as JSON here")
    args = parser.parse_args(argv)
    try:
        result = compare(args.serial, args.parallel, args.profile, tuple(args.aa_band) if args.aa_band else None)
    except (FileNotFoundError, ValueError) as err:
        print(f"parallel_vs_serial: error: {err}", file=sys.stderr)
        return 2
    print(f"A/A band: {result['aa_band_note']}")
    for r in result["rows"]:
        where = r["placement"] or {}
        print(f"{r['run_id']:<48} {_fmt(r['latency_change_pct'])}% [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}] "
              f"{r['verdict']}  gpu {where.get('gpu_ids') if isinstance(where, dict) else None}")
    agree, together = sum(r["agrees"] for r in result["rows"]), result["pooled"]
    if together:
        print(f"all {together['runs']} runs together: {_fmt(together['latency_change_pct'])}% "
              f"[{_fmt(together['ci_low'])}, {_fmt(together['ci_high'])}] {together['verdict']}")
    moved = result["effects"]
    if moved:
        print(f"what the {moved['runs']} two-arm runs measure (arm run vs its reference), parallel minus serial: "
              f"{_fmt(moved['difference_points'])} points [{_fmt(moved['ci_low'])}, {_fmt(moved['ci_high'])}] "
              f"({'interval includes 0' if moved['agrees'] else 'changed'})")
    ratio = result["wall_ratio"]
    print(f"{agree} of {len(result['rows'])} runs agree; wall serial {result['wall']['serial_s']} s, parallel "
          f"{result['wall']['parallel_s']} s, ratio {'null' if ratio is None else f'{ratio:.2f}'} "
          f"(target <= {args.max_wall_ratio})")
    differ = {r["run_id"]: r["env_differs"] for r in result["rows"] if r["env_differs"]}
    for run_id, names in differ.items():
        print(f"not comparable, environment differs: {run_id}: " +
              ", ".join(f"{name} {a!r} (serial) vs {b!r} (parallel)" for name, (a, b) in names.items()))
    if result["only_serial"] or result["only_parallel"]:
        print(f"not compared (ok in one folder only): {result['only_serial'] + result['only_parallel']}")
    if args.out:
        from nwor.files import atomic_write_text

        atomic_write_text(args.out, json.dumps(result, indent=1, default=str) + "\n")
    same = bool(together and together["agrees"]) if args.pooled else bool(result["rows"]) and agree == len(
        result["rows"])
    ok = same and not differ and (not moved or moved["agrees"]) and ratio is not None and ratio <= args.max_wall_ratio
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
