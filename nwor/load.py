"""Driving a running server with vLLM's own load generator (`vllm bench serve`) over a concurrency sweep.

Each load point gets its own prompts (consecutive slices of the run's prompt set, the same for every arm),
its own client result file, and the server's counters over that point only (/metrics before and after).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

from nwor import metrics as m
from nwor.config import RunSpec
from nwor.errors import ServerError
from nwor.engine import quiet_streams
from nwor.serve import Server, plugin_call, scrape_metrics

CLIENT_TIMEOUT_S = 3600.0
LATENCY_METRICS = ("ttft", "tpot", "itl", "e2el")  # the client's names: e2el is end-to-end latency
CLIENT_PERCENTILES = m.PERCENTILES


def concurrency_levels(max_concurrency: int) -> list[int]:
    """1, 2, 4, ... doubling up to `max_concurrency` (included even when it is not a power of two)."""
    levels, c = [], 1
    while c < max_concurrency:
        levels.append(c)
        c *= 2
    return levels + [max_concurrency]


def requests_at(spec: RunSpec, concurrency: int) -> int:
    return spec.serve_requests_per_slot * concurrency


def slice_prompts(prompts: list[str], start: int, n: int) -> list[str]:
    """`n` prompts from position `start` of the shuffled set, wrapping around."""
    return [prompts[(start + j) % len(prompts)] for j in range(n)]


def parse_metrics(text: str) -> dict:
    """Counters of a Prometheus exposition, summed over label sets; `..._per_pos` as a list by position.

    Names drop the `_total` suffix, as `llm.get_metrics()` names them, so `nwor.metrics.diff` and
    `spec_decode_metrics` apply unchanged.
    """
    from prometheus_client.parser import text_string_to_metric_families

    out: dict = {}
    for family in text_string_to_metric_families(text):
        if family.type != "counter" or not family.name.startswith("vllm:"):
            continue
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue  # `_created` timestamps
            if "position" in sample.labels:
                values = out.setdefault(family.name, [])
                pos = int(sample.labels["position"])
                values.extend([0] * (pos + 1 - len(values)))
                values[pos] += sample.value
            else:
                out[family.name] = out.get(family.name, 0) + sample.value
    return out


def write_dataset(path: Path, prompts: list[str]) -> Path:
    """The client's `custom` dataset: one `{"prompt": ...}` per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return path


def client_args(spec: RunSpec, server: Server, model: str, dataset: Path, num_prompts: int, concurrency: int,
                result_file: Path) -> list[str]:
    """`vllm bench serve` arguments for one load point: the run's sampling settings, raw prompts (no chat
    template, as offline), a fixed output length, percentiles in the house set, goodput for the run's SLOs."""
    rate = "inf" if spec.serve_request_rate is None else str(spec.serve_request_rate)
    args = [
        "--backend", "openai", "--base-url", server.base_url, "--endpoint", "/v1/completions",
        "--model", model, "--dataset-name", "custom", "--dataset-path", str(dataset),
        "--num-prompts", str(num_prompts), "--no-oversample", "--disable-shuffle", "--skip-chat-template",
        "--custom-output-len", str(spec.max_new_tokens), "--max-concurrency", str(concurrency),
        "--request-rate", rate, "--temperature", str(spec.temperature), "--top-p", str(spec.top_p),
        "--percentile-metrics", ",".join(LATENCY_METRICS),
        "--metric-percentiles", ",".join(str(p) for p in CLIENT_PERCENTILES),
        "--seed", str(spec.seed), "--disable-tqdm", "--save-result",
        "--result-dir", str(result_file.parent), "--result-filename", result_file.name]
    if spec.ignore_eos:
        args.append("--ignore-eos")
    slos = {"ttft": spec.serve_slo_ttft_ms, "tpot": spec.serve_slo_tpot_ms}
    goodput = [f"{k}:{v}" for k, v in slos.items() if v is not None]
    if goodput:
        args += ["--goodput", *goodput]
    return args


def _number(value):
    return None if value is None or (isinstance(value, float) and not math.isfinite(value)) else value


def point_record(client: dict, counters: dict, plugin_stats: dict | None) -> dict:
    """One load point in nwor's names, from the client's saved JSON and the server's counter deltas.

    Latencies keep the client's unit (ms); the spec-decode numbers are vLLM's own formulas over the
    point's counter deltas; the client's own acceptance figure is kept beside them as a cross-check.
    """
    completed = client.get("completed")
    out = {
        "num_prompts": client.get("num_prompts"), "completed": completed, "failed": client.get("failed"),
        "max_concurrency": client.get("max_concurrency"), "request_rate": client.get("request_rate"),
        "duration_s": _number(client.get("duration")),
        "num_output_tokens": client.get("total_output_tokens"),
        "request_throughput_per_s": _number(client.get("request_throughput")),
        "request_goodput_per_s": _number(client.get("request_goodput")),
        "output_tokens_per_s": _number(client.get("output_throughput")),
        "total_tokens_per_s": _number(client.get("total_token_throughput")),
        "max_concurrent_requests": client.get("max_concurrent_requests"),
    }
    for name in LATENCY_METRICS:
        out[f"mean_{name}_ms"] = _number(client.get(f"mean_{name}_ms")) if completed else None
        for p in CLIENT_PERCENTILES:
            out[f"p{p}_{name}_ms"] = _number(client.get(f"p{p}_{name}_ms")) if completed else None
    out.update(m.spec_decode_metrics(counters))
    rate = client.get("spec_decode_acceptance_rate")
    out["client_draft_acceptance_rate"] = rate / 100 if rate is not None else None  # the client says percent
    out["counters"] = counters
    out["plugin"] = _plugin_fields(plugin_stats)
    return out


def _plugin_fields(stats: dict | None) -> dict | None:
    if stats is None:
        return None
    return {"tokens_stopped": stats.get("tokens_stopped"), "checks": stats.get("checks"),
            "stop_pct": stats.get("stop_pct"), "steps": stats.get("steps"),
            "draft_length_histogram": {str(k): v for k, v in sorted(
                (int(k), v) for k, v in (stats.get("draft_length_histogram") or {}).items())},
            "config": stats.get("config")}


def run_client(args: list[str], result_file: Path, log_path: Path) -> dict:
    """Run vLLM's `vllm bench serve` (its Python entry, in a worker thread: a notebook kernel already runs an
    event loop; one import of vLLM instead of one per point), its output appended to `log_path`.

    Returns:
        The client's saved result JSON.

    Raises:
        ServerError: the client raised or saved nothing (names its log).
    """
    from concurrent.futures import ThreadPoolExecutor

    from vllm.benchmarks.serve import add_cli_args, main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(prog="vllm bench serve")
    add_cli_args(parser)
    namespace = parser.parse_args(args)
    result_file.unlink(missing_ok=True)
    with open(log_path, "a") as log:
        log.write("\n$ vllm bench serve " + " ".join(args) + "\n")
    pool = ThreadPoolExecutor(1)
    try:
        with quiet_streams(log_path):
            pool.submit(main, namespace).result(timeout=CLIENT_TIMEOUT_S)
    except Exception as err:  # the client's own errors (ValueError, aiohttp, timeouts) all end the point
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        raise ServerError(f"vllm bench serve failed ({type(err).__name__}: {first}); see {log_path}",
                          log_path=str(log_path)) from None
    finally:
        pool.shutdown(wait=False)  # a hung client must not hang the run; stopping the server ends it
    if not result_file.exists():
        raise ServerError(f"vllm bench serve saved no result; see {log_path}", log_path=str(log_path))
    return json.loads(result_file.read_text())


def run_point(spec: RunSpec, server: Server, model: str, prompts: list[str], concurrency: int, folder: Path,
              name: str, client_log: Path, *, plugin: bool) -> dict:
    """One load point: counters before, the client, counters after; the record over this point only.

    Raises:
        ServerError: the client or the server failed.
    """
    dataset = write_dataset(folder / f"{name}.prompts.jsonl", prompts)
    result_file = folder / f"{name}.client.json"
    args = client_args(spec, server, model, dataset, len(prompts), concurrency, result_file)
    if plugin:
        plugin_call(server, "reset")
    before = parse_metrics(scrape_metrics(server))
    started = time.perf_counter()
    client = run_client(args, result_file, client_log)
    wall_s = time.perf_counter() - started
    counters = m.diff(before, parse_metrics(scrape_metrics(server)))
    record = point_record(client, counters, plugin_call(server, "stats") if plugin else None)
    if record["failed"]:
        raise ServerError(f"{record['failed']} of {len(prompts)} requests failed at concurrency {concurrency}; "
                          f"see {server.log_path}", log_path=str(server.log_path))
    return {"concurrency": concurrency, "client_wall_s": wall_s, "client_result": result_file.name, **record}


def sweep(spec: RunSpec, server: Server, model: str, prompts: list[str], folder: Path, prefix: str,
          client_log: Path, *, plugin: bool, rule) -> tuple[dict, list[dict]]:
    """Warm-up points at the top concurrency until `rule` (nwor.design.WarmupRule) says stable or cap, then
    every load point. Prompt positions are the same for every arm and instance, so points pair across arms.

    Returns:
        (warm-up record in the replicate contract's shape, the measured points in order).

    Raises:
        ServerError: the client or the server failed.
    """
    levels = concurrency_levels(spec.serve_max_concurrency)
    top, start, series = levels[-1], 0, []
    ended_by = rule.verdict(series, [])
    while ended_by is None:
        n = requests_at(spec, top)
        point = run_point(spec, server, model, slice_prompts(prompts, start, n), top, folder,
                          f"{prefix}_warmup{len(series)}", client_log, plugin=plugin)
        series.append(point["duration_s"])
        start += n
        ended_by = rule.verdict(series, [prefix] * len(series))
    warmup = {"rule": {**rule.to_dict(), "unit": f"load point at concurrency {top}, {requests_at(spec, top)} requests"},
              "series_s": series, "batches": len(series), "ended_by": ended_by}
    points = []
    for position, concurrency in enumerate(levels):
        n = requests_at(spec, concurrency)
        point = run_point(spec, server, model, slice_prompts(prompts, start, n), concurrency, folder,
                          f"{prefix}_c{concurrency}", client_log, plugin=plugin)
        points.append({"position": position, "first_prompt": start, **point})
        start += n
    return warmup, points
