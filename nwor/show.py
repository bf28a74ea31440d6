"""Small tables a run notebook displays: what was asked, what the engine did, what was measured."""
from __future__ import annotations

import pandas as pd


def spec_table(spec) -> pd.DataFrame:
    return pd.DataFrame(sorted(spec.to_dict().items()), columns=["parameter", "value"]).set_index("parameter")


def features_table(doc: dict) -> pd.DataFrame:
    f = doc["features"]
    rows = {"vLLM build": f["capability"]["vllm_version"] + f" ({f['capability']['flavour']}, "
                                                               f"{f['capability']['platform']})",
            "feature implementation": f["feature_impl"],
            **{f"impl: {k}": v for k, v in f["impl"].items()},
            **{f"switch {k}": v for k, v in f["switches"].items()},
            **{f"effective {k}": v for k, v in f["effective"].items()}}
    return pd.DataFrame({"value": [str(v) for v in rows.values()]}, index=list(rows))


def metrics_table(doc: dict) -> pd.DataFrame:
    keep = ("mean_latency_s", "p50_latency_s", "p95_latency_s", "output_tokens_per_s", "mean_ttft_s",
            "p99_ttft_s", "mean_tpot_s", "mean_e2e_s", "num_drafts", "num_draft_tokens", "num_accepted_tokens",
            "draft_acceptance_rate", "mean_acceptance_length", "num_corrupted_requests")
    return pd.DataFrame({"value": [doc["metrics"].get(k) for k in keep]}, index=list(keep))


def batches_table(doc: dict) -> pd.DataFrame:
    return pd.DataFrame(doc["results"])[["batch", "latency_s", "num_requests", "num_output_tokens",
                                         "output_tokens_per_s"]].set_index("batch")


def instrumentation_table(doc: dict) -> pd.DataFrame:
    early, lengths, ncu = doc["early_exit"], doc["draft_lengths"], doc["ncu"]
    rows = {"early exit": early.get("status"), "early exit: tokens stopped / checks":
            f"{early.get('tokens_stopped')} / {early.get('checks')} ({early.get('stop_pct')} %)",
            "early exit: note": early.get("reason"),
            "draft lengths chosen (length: steps)": lengths.get("histogram") or lengths.get("reason"),
            "ncu": ncu.get("status"), "ncu: note": ncu.get("reason"),
            "ncu: ranges / kernels": f"{ncu.get('num_ranges')} / {ncu.get('num_kernels')}",
            **{f"ncu: {k}": v for k, v in (ncu.get("totals") or {}).items()}}
    return pd.DataFrame({"value": [str(v) for v in rows.values()]}, index=list(rows))


def design_table(doc: dict) -> pd.DataFrame:
    """One row per engine instance: its arms, engine start, warm-up (batches, end, series) and batch order."""
    d = doc["design"]
    rows = [{"instance": r["instance"], "arms": ", ".join(r["arms"]), "engine_start_s": r["engine_start_s"],
             "warm-up batches": r["warmup"]["batches"], "warm-up ended by": r["warmup"]["ended_by"],
             "warm-up series (s)": ", ".join(f"{s:.3f}" for s in r["warmup"]["series_s"]),
             "measured order": " ".join(b["arm"] for b in r["batches"])} for r in doc["replicates"]]
    frame = pd.DataFrame(rows).set_index("instance")
    frame.attrs["design"] = f"{d['name']}, {d['engine_instances']} engine(s) per group, seed {d['seed']}"
    return frame


def replicates_table(doc: dict) -> pd.DataFrame:
    """Mean batch latency and acceptance of every arm in every engine instance."""
    rows = []
    for r in doc["replicates"]:
        for arm in r["arms"]:
            lat = [b["latency_s"] for b in r["batches"] if b["arm"] == arm]
            c = r["counters"][arm]
            rows.append({"instance": r["instance"], "arm": arm, "batches": len(lat),
                         "mean_latency_s": sum(lat) / len(lat) if lat else None,
                         "draft_acceptance_rate": c.get("draft_acceptance_rate"),
                         "mean_acceptance_length": c.get("mean_acceptance_length")})
    return pd.DataFrame(rows).set_index(["instance", "arm"])
