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
