"""Tests for the serving pieces that need no engine: /metrics parsing and per-point diffs, the client's result
read into nwor's names, the sweep's levels and prompt slices, ABBA order, server and client command lines,
stopping a whole process group (real processes), and the effect-vs-load arithmetic."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from nwor import metrics as m
from nwor.config import RunSpec, hash_params
from nwor.errors import ConfigError, ServerError
from nwor.features import Capability, plan_features
from nwor.load import client_args, concurrency_levels, parse_metrics, point_record, slice_prompts
from nwor.serve import HOST, Server, engine_flags, server_argv, stop_server, wait_ready
from nwor.serving import _arm_totals, plan_serving
from nwor import stats
from nwor.serving_report import effect_vs_load, plot_effect_vs_load, sign_changes, sweep_frame

FIXTURES = Path(__file__).parent / "fixtures" / "serving"
P = m.SPEC_PREFIX
SERVING = dict(serve_max_concurrency=4, serve_requests_per_slot=2)


def test_parse_metrics_sums_engines_orders_positions_and_keeps_counters_only():
    parsed = parse_metrics((FIXTURES / "metrics.txt").read_text())
    assert parsed == {P + "num_drafts": 15.0, P + "num_draft_tokens": 60.0, P + "num_accepted_tokens": 20.0,
                      P + "num_accepted_tokens_per_pos": [10.0, 7.0, 3.0, 0.0]}


def test_point_counters_are_after_minus_before():
    before = parse_metrics((FIXTURES / "metrics.txt").read_text())
    after_text = (FIXTURES / "metrics.txt").read_text().replace(
        'num_drafts_total{engine="0",model_name="m"} 11.0', 'num_drafts_total{engine="0",model_name="m"} 21.0'
    ).replace('num_accepted_tokens_total{engine="0",model_name="m"} 17.0',
              'num_accepted_tokens_total{engine="0",model_name="m"} 32.0').replace(
        'num_draft_tokens_total{engine="0",model_name="m"} 44.0',
        'num_draft_tokens_total{engine="0",model_name="m"} 84.0')
    delta = m.diff(before, parse_metrics(after_text))
    spec = m.spec_decode_metrics(delta)
    assert spec["num_drafts"] == 10 and spec["num_draft_tokens"] == 40 and spec["num_accepted_tokens"] == 15
    assert spec["draft_acceptance_rate"] == pytest.approx(15 / 40, abs=1e-12)
    assert spec["mean_acceptance_length"] == pytest.approx(1 + 15 / 10, abs=1e-12)
    assert spec["num_accepted_tokens_per_pos"] == [0, 0, 0, 0]  # the vector did not move over the point


def test_point_record_reads_the_clients_json():
    client = json.loads((FIXTURES / "client_result.json").read_text())
    counters = {P + "num_drafts": 11, P + "num_draft_tokens": 44, P + "num_accepted_tokens": 17,
                P + "num_accepted_tokens_per_pos": [8, 6, 3, 0]}
    record = point_record(client, counters, {"tokens_stopped": 2, "checks": 10, "stop_pct": 20.0, "steps": 5,
                                             "draft_length_histogram": {"8": 1, "2": 4}, "config": {}})
    assert record["completed"] == 4 and record["failed"] == 0 and record["max_concurrency"] == 2
    assert record["output_tokens_per_s"] == client["output_throughput"]
    assert record["p99_ttft_ms"] == client["p99_ttft_ms"] and record["p50_e2el_ms"] == client["p50_e2el_ms"]
    assert record["request_goodput_per_s"] is None  # no SLOs were given
    # nwor's /metrics diff and the client's own figure agree on the same window.
    assert record["draft_acceptance_rate"] == pytest.approx(client["spec_decode_acceptance_rate"] / 100, abs=1e-9)
    assert record["mean_acceptance_length"] == pytest.approx(client["spec_decode_acceptance_length"], abs=1e-9)
    assert list(record["plugin"]["draft_length_histogram"]) == ["2", "8"]


def test_point_record_with_nothing_completed_has_null_latencies():
    client = {**json.loads((FIXTURES / "client_result.json").read_text()), "completed": 0, "failed": 4}
    record = point_record(client, {}, None)
    assert record["p50_ttft_ms"] is None and record["mean_e2el_ms"] is None
    assert record["draft_acceptance_rate"] is None and record["plugin"] is None


@pytest.mark.parametrize(("top", "levels"), [(1, [1]), (4, [1, 2, 4]), (6, [1, 2, 4, 6]), (64, [1, 2, 4, 8, 16, 32, 64])])
def test_concurrency_levels_double_up_to_the_top(top, levels):
    assert concurrency_levels(top) == levels


def test_slice_prompts_wraps_around():
    assert slice_prompts(["a", "b", "c"], 2, 4) == ["c", "a", "b", "c"]


def test_each_arm_gets_its_own_servers_in_balanced_rounds():
    spec = RunSpec(adaptive_draft_length=True, serve_instances=2, arms=[{"name": "baseline", "adaptive_draft_length": False}],
                   **SERVING)
    design = plan_serving(spec, _cap())
    assert design.name == "engines-interleaved" and design.groups == [["run"], ["baseline"]]
    order = [tuple(i["arms"]) for i in design.instances]
    assert order[2:] == order[:2][::-1] and set(order[:2]) == {("run",), ("baseline",)}  # ABBA or BAAB
    loaded = {design.groups[i["group"]][0]: design.setups[i["group"]].plugin_loaded for i in design.instances}
    assert loaded == {"run": True, "baseline": False}  # the baseline server is stock vLLM
    assert plan_serving(spec, _cap()).instances == design.instances  # seeded: the same order every time


def test_arm_totals_add_points_and_plugin_counters():
    points = [{"counters": {"a": 1, "v": [1, 2]}, "plugin": {"tokens_stopped": 1, "checks": 4, "steps": 2,
                                                              "draft_length_histogram": {"4": 2}}},
              {"counters": {"a": 2, "v": [1, 1, 1]}, "plugin": {"tokens_stopped": 0, "checks": 4, "steps": 1,
                                                                 "draft_length_histogram": {"2": 1}}}]
    counters, plugin = _arm_totals(points)
    assert counters == {"a": 3, "v": [2, 3, 1]}
    assert plugin["draft_length_histogram"] == {2: 1, 4: 2} and plugin["stop_pct"] == pytest.approx(12.5, abs=1e-12)


def test_engine_flags_follow_vllm_serve_spelling():
    flags = engine_flags({"tensor_parallel_size": 2, "enforce_eager": True, "enable_prefix_caching": False,
                          "disable_log_stats": False, "async_scheduling": False, "attention_config": {"backend": "X"},
                          "dtype": "auto", "nothing": None})
    assert flags == ["--tensor-parallel-size", "2", "--enforce-eager", "--no-enable-prefix-caching",
                     "--no-async-scheduling", "--attention-config", '{"backend": "X"}', "--dtype", "auto"]


def _cap(**kw) -> Capability:
    return Capability("0.32.0", "cpu", "stock", plugin_supported=True, **kw)


def test_server_argv_carries_the_plan_and_the_speculative_config():
    spec = RunSpec(adaptive_draft_length=True, num_speculative_tokens=5, **SERVING)
    plan = plan_features(spec, _cap())
    argv = server_argv(spec, {"target_model": "/m/target", "draft_model": "/m/eagle"}, plan, 4321)
    assert argv[:6] == [sys.executable, "-m", "nwor.vllm_cli", "serve", "/m/target", "--host"]
    assert argv[argv.index("--host") + 1] == HOST == "127.0.0.1"
    assert argv[argv.index("--port") + 1] == "4321"
    speculative = json.loads(argv[argv.index("--speculative-config") + 1])
    assert speculative == {"method": "eagle", "model": "/m/eagle", "num_speculative_tokens": 5}
    assert "--no-enable-prefix-caching" in argv and plan.uses_plugin


def test_client_args_for_one_point():
    spec = RunSpec(max_new_tokens=24, temperature=0.7, ignore_eos=False, serve_slo_ttft_ms=500.0, **SERVING)
    server = Server(process=None, port=1234, argv=[], env={}, log_path=Path("s.log"))
    argv = client_args(spec, server, "/m/target", Path("d/p.jsonl"), 8, 4, Path("d/r.json"))
    value = {flag: argv[argv.index(flag) + 1] for flag in ("--base-url", "--max-concurrency", "--num-prompts",
                                                           "--custom-output-len", "--request-rate", "--temperature",
                                                           "--result-dir", "--result-filename", "--goodput")}
    assert value == {"--base-url": "http://127.0.0.1:1234", "--max-concurrency": "4", "--num-prompts": "8",
                     "--custom-output-len": "24", "--request-rate": "inf", "--temperature": "0.7",
                     "--result-dir": "d", "--result-filename": "r.json", "--goodput": "ttft:500.0"}
    assert "--ignore-eos" not in argv and "--skip-chat-template" in argv and "--disable-shuffle" in argv


def test_serving_fields_count_in_the_hash_only_for_serving_runs():
    offline = RunSpec()
    assert hash_params({**offline.to_dict(), "serve_instances": 3}) == offline.params_hash()
    serving = RunSpec(**SERVING)
    assert hash_params({**serving.to_dict(), "serve_instances": 3}) != serving.params_hash()


@pytest.mark.parametrize(("field", "value"), [("serve_max_concurrency", 0), ("serve_request_rate", -1.0),
                                              ("serve_requests_per_slot", 0), ("serve_instances", 0),
                                              ("serve_slo_tpot_ms", 0)])
def test_serving_fields_are_validated(field, value):
    with pytest.raises(ConfigError, match=field):
        RunSpec(**{**SERVING, field: value})


def _server(argv: list[str], tmp_path: Path) -> Server:
    log = tmp_path / "server.log"
    fh = open(log, "ab")
    proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    return Server(process=proc, port=1, argv=argv, env={}, log_path=log, _log=fh)


def test_wait_ready_names_the_log_when_the_server_exits(tmp_path):
    server = _server([sys.executable, "-c", "print('model folder missing'); raise SystemExit(3)"], tmp_path)
    with pytest.raises(ServerError, match=r"exited with code 3 .*server\.log \(model folder missing\)"):
        wait_ready(server, timeout_s=60)
    stop_server(server)


def test_stop_server_kills_the_whole_group_even_when_sigterm_is_ignored(tmp_path):
    script = textwrap.dedent("""
        import signal, subprocess, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        child = subprocess.Popen([sys.executable, "-c",
                                  "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
        print(child.pid, flush=True)
        time.sleep(600)
    """)
    server = _server([sys.executable, "-c", script], tmp_path)
    for _ in range(100):
        text = server.log_path.read_text().strip()
        if text:
            break
        time.sleep(0.1)
    child = int(text)
    stop_server(server, grace_s=1.0)
    for pid in (server.process.pid, child):
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    stop_server(server)  # idempotent


def _doc(values: dict, run_id: str = "r1", aa: bool = False) -> dict:
    """values: {(arm, instance, concurrency): tokens/s} for one run."""
    doc = {"status": "ok", "run_id": run_id, "grid": "serving_grid", "workload": {"name": "w"},
           "serving": {"aa": aa}, "replicates": []}
    by_instance: dict = {}
    for (arm, instance, concurrency), value in values.items():
        by_instance.setdefault((arm, instance), []).append(
            {"concurrency": concurrency, "output_tokens_per_s": value, "counters": {}, "plugin": None})
    for (arm, instance), sweep in by_instance.items():
        doc["replicates"].append({"instance": instance, "arms": [arm], "sweep": sweep})
    return doc


def _frame(values: dict):
    return sweep_frame([_doc(values), {"status": "failed", "run_id": "x"}])


def test_effect_vs_load_relative_difference_and_sign_change():
    frame = _frame({("baseline", 0, 1): 100.0, ("run", 1, 1): 110.0, ("baseline", 0, 2): 200.0,
                    ("run", 1, 2): 180.0, ("baseline", 0, 4): 300.0, ("run", 1, 4): 270.0})
    effects = effect_vs_load(frame)
    assert effects["effect"].tolist() == pytest.approx([0.10, -0.10, -0.10], abs=1e-12)
    assert effects["sign_change"].tolist() == [False, True, False]
    assert effects["low"].isna().all()  # one instance per arm: no interval
    flips = sign_changes(effects)
    assert flips[["from_concurrency", "to_concurrency"]].values.tolist() == [[1, 2]]


def test_effect_interval_over_instances_contains_the_effect():
    frame = _frame({("baseline", 0, 1): 100.0, ("run", 1, 1): 121.0, ("run", 2, 1): 119.0,
                    ("baseline", 3, 1): 102.0})
    row = effect_vs_load(frame).iloc[0]
    assert row["effect"] == pytest.approx(120 / 101 - 1, abs=1e-12)
    assert row["low"] <= row["effect"] <= row["high"]
    # Two servers an arm: the interval is Student-t scaled (nwor.stats.change_ci), so it is wider than the
    # range of the instance means a percentile bootstrap would give ([119/102 - 1, 121/100 - 1]).
    assert row["low"] < 119 / 102 - 1 and row["high"] > 121 / 100 - 1
    expected = stats.change_ci([[100.0], [102.0]], [[121.0], [119.0]], seed=0)
    assert (row["low"], row["high"]) == pytest.approx((expected.ci_low / 100, expected.ci_high / 100))
    assert plot_effect_vs_load(effect_vs_load(frame)).axes[0].get_xscale() == "log"


def test_effect_vs_load_unknown_metric():
    with pytest.raises(KeyError, match="no metric"):
        effect_vs_load(_frame({("run", 0, 1): 1.0}), "nope")


def test_load_sweeps_reads_a_grid_folder_and_skips_what_is_not_a_serving_result(tmp_path):
    from nwor.results import SCHEMA_VERSION
    from nwor.serving_report import load_sweeps

    doc = {"schema_version": SCHEMA_VERSION, "status": "ok", "run_id": "r1", "grid": "serving_grid",
           "workload": {"name": "w"}, "serving": {},
           "replicates": [{"instance": 0, "arms": ["run"], "sweep": [{"concurrency": 1, "output_tokens_per_s": 5.0,
                                                                      "counters": {}, "plugin": None}]}]}
    (tmp_path / "r1.json").write_text(json.dumps(doc))
    (tmp_path / "offline.json").write_text(json.dumps({**doc, "run_id": "o", "serving": None, "replicates": []}))
    (tmp_path / "broken.json").write_text("{")
    frame = load_sweeps(tmp_path)
    assert frame[["run_id", "arm", "concurrency", "output_tokens_per_s"]].values.tolist() == [["r1", "run", 1, 5.0]]


def test_effects_are_judged_against_the_aa_band_of_the_same_workload_and_load():
    from nwor.serving_report import judge_against_aa

    def two_per_arm(run_values, base_values, **kw):  # {concurrency: (first, second)} per arm
        values = {}
        for arm, per_load, first in (("run", run_values, 0), ("baseline", base_values, 2)):
            for concurrency, pair in per_load.items():
                for k, value in enumerate(pair):
                    values[(arm, first + k, concurrency)] = value
        return _doc(values, **kw)

    aa = two_per_arm({1: (101.0, 103.0), 2: (99.0, 101.0)}, {1: (100.0, 100.0), 2: (100.0, 100.0)}, run_id="aa",
                     aa=True)
    run = two_per_arm({1: (102.0, 102.5), 2: (60.0, 59.0)}, {1: (100.0, 100.0), 2: (100.0, 100.0)})
    judged = judge_against_aa(effect_vs_load(sweep_frame([aa, run]))).set_index(["run_id", "concurrency"])
    assert judged.loc[("r1", 1), "established"] is False  # +2.2 %: its interval overlaps the A/A band
    assert judged.loc[("r1", 2), "established"] is True  # -40.5 %: wholly below the A/A band
    band = stats.change_ci([[100.0], [100.0]], [[99.0], [101.0]], seed=0)
    assert judged.loc[("r1", 2), "aa_low"] == pytest.approx(band.ci_low / 100)
    assert judged.loc[("aa", 1), "established"] is None
    # One server per arm: no interval, so no verdict however large the point effect (the protocol's rule).
    single = _doc({("baseline", 0, 1): 100.0, ("run", 1, 1): 180.0}, run_id="r2")
    single_aa = _doc({("baseline", 0, 1): 100.0, ("run", 1, 1): 99.0}, run_id="aa2", aa=True)
    lone = judge_against_aa(effect_vs_load(sweep_frame([single_aa, single]))).set_index("run_id")
    assert lone.loc["r2", "established"] is None


def test_load_curves_one_line_per_arm_and_instance():
    from nwor.serving_report import plot_load_curves

    frame = _frame({("baseline", 0, 1): 100.0, ("run", 1, 1): 110.0, ("baseline", 0, 2): 200.0, ("run", 1, 2): 180.0})
    axes = plot_load_curves(frame).axes[0]
    assert len(axes.lines) == 4 and [t.get_text() for t in axes.get_legend().get_texts()] == ["baseline", "run"]
    with pytest.raises(KeyError, match="no run"):
        plot_load_curves(frame, run_id="nope")
