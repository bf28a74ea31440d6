"""The ncu KV-write sub-pass's block of a result (`ncu.kv_cache_writes`, docs/ncu.md) as flat analysis columns:
drafter and target KV-cache write bytes and the sub-pass window's own counters."""
from __future__ import annotations

KV_COLUMNS = ("kv_drafter_bytes", "kv_target_bytes", "kv_window_draft_tokens", "kv_window_tokens_stopped",
              "kv_window_checks")


def kv_fields(kv: dict) -> dict:
    """The ncu KV-write sub-pass (docs/ncu.md): drafter and target KV-cache write bytes and its window's counters."""
    if kv.get("status") != "ok":
        return {"kv_status": kv.get("status"), "kv_reason": kv.get("reason") or "no KV-write sub-pass",
                **dict.fromkeys(KV_COLUMNS)}
    window = kv.get("window") or {}
    return {"kv_status": "ok", "kv_reason": kv.get("reason"),
            "kv_drafter_bytes": (kv.get("drafter") or {}).get("bytes_written"),
            "kv_target_bytes": (kv.get("target") or {}).get("bytes_written"),
            "kv_window_draft_tokens": window.get("num_draft_tokens"),
            "kv_window_tokens_stopped": window.get("tokens_stopped"), "kv_window_checks": window.get("checks")}
