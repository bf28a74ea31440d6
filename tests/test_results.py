"""Tests for nwor.results: round trip, atomic writing, file mode, schema checks, failure records, and the
seed's summary field names."""
from __future__ import annotations

import json
import stat

import pytest

import nwor
from nwor.config import RunSpec
from nwor.errors import ConfigError, SchemaError
from nwor.results import SCHEMA_VERSION, envelope, failure, read_result, seed_summary, write_result

METRICS = {"mean_latency_s": 1.5, "p50_latency_s": 1.25, "p95_latency_s": 2.75, "num_drafts": 10,
           "num_draft_tokens": 40, "num_accepted_tokens": 20, "mean_accepted_per_draft": 2.0,
           "draft_acceptance_rate": 0.5, "acceptance_rate_per_pos": [0.8, 0.6, 0.4, 0.2], "ttft": None}


def _doc(**kw):
    return envelope(RunSpec(**kw), "ok", metrics=dict(METRICS))


def test_round_trip(tmp_path):
    doc = _doc(run_id="r1", ncu_metrics=["a.sum"])
    path = write_result(tmp_path / "sub" / "r1.json", doc)
    assert path == tmp_path / "sub" / "r1.json"
    back = read_result(path)
    assert back == json.loads(json.dumps(doc))
    assert back["metrics"] == METRICS
    assert back["schema_version"] == SCHEMA_VERSION and back["status"] == "ok"
    assert back["nwor_version"] == nwor.__version__
    assert back["params_hash"] == RunSpec(run_id="r1", ncu_metrics=("a.sum",)).params_hash()
    assert RunSpec(**back["spec"]) == RunSpec(run_id="r1", ncu_metrics=("a.sum",))


def test_envelope_fields():
    doc = envelope(RunSpec(run_id="x", grid="g", profile="p", workload_number=3, workload_name="w"), "ok")
    assert (doc["run_id"], doc["grid"], doc["profile"], doc["error"]) == ("x", "g", "p", None)
    assert doc["workload"] == {"number": 3, "name": "w"}


def test_write_is_atomic_on_failure(tmp_path):
    path = tmp_path / "r.json"
    write_result(path, _doc())
    before = path.read_bytes()
    bad = _doc(run_id="changed")
    bad["metrics"]["mean_latency_s"] = float("nan")
    with pytest.raises(ValueError):
        write_result(path, bad)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_written_file_mode_is_0644(tmp_path):
    path = write_result(tmp_path / "r.json", _doc())
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_overwrite_replaces(tmp_path):
    path = tmp_path / "r.json"
    write_result(path, _doc(run_id="a"))
    write_result(path, _doc(run_id="b"))
    assert read_result(path)["run_id"] == "b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


@pytest.mark.parametrize("version", [0, 1, 3, None, "2"])
def test_read_rejects_other_schema_version(tmp_path, version):
    doc = _doc()
    doc["schema_version"] = version
    path = tmp_path / "r.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(SchemaError, match="schema_version") as info:
        read_result(path)
    assert info.value.context["path"] == str(path)


@pytest.mark.parametrize("text", ['{"schema_version": 1,', "", "[1, 2]", "not json"])
def test_read_rejects_broken_json(tmp_path, text):
    path = tmp_path / "r.json"
    path.write_text(text)
    with pytest.raises(SchemaError):
        read_result(path)


def test_read_missing_file(tmp_path):
    with pytest.raises(SchemaError, match="cannot read"):
        read_result(tmp_path / "none.json")


@pytest.mark.parametrize("status", ["done", "", None, "OK"])
def test_write_refuses_unknown_status(tmp_path, status):
    doc = _doc()
    doc["status"] = status
    with pytest.raises(SchemaError, match="refusing"):
        write_result(tmp_path / "r.json", doc)
    assert not (tmp_path / "r.json").exists()


def test_write_refuses_missing_schema_version(tmp_path):
    doc = _doc()
    del doc["schema_version"]
    with pytest.raises(SchemaError):
        write_result(tmp_path / "r.json", doc)


def test_failure_record(tmp_path):
    spec = RunSpec(run_id="bad")
    doc = failure(spec, ConfigError("invalid top_p=2"), notebook="x.ipynb", exec_count=3)
    assert doc["status"] == "failed"
    assert doc["error"] == {"type": "ConfigError", "message": "invalid top_p=2", "notebook": "x.ipynb"}
    assert doc["exec_count"] == 3
    assert read_result(write_result(tmp_path / "bad.json", doc))["error"]["type"] == "ConfigError"


def test_failure_from_string_and_refused():
    doc = failure(RunSpec(), "no result written", status="refused")
    assert doc["status"] == "refused"
    assert doc["error"]["type"] == "Error" and doc["error"]["message"] == "no result written"
    assert doc["error"]["notebook"] is None


def test_seed_summary_names():
    spec = RunSpec(adaptive_draft_length=True, confidence_threshold=0.5, measured_batches=7)
    ncu = {"dram__bytes_write.sum": 123.0}
    mode = seed_summary(spec, METRICS, ncu)["per_mode"][0]
    assert mode == {
        "mode": "adaptive1_thresh0.5",
        "latency_avg_s": 1.5,
        "latency_p50_s": 1.25,
        "latency_p95_s": 2.75,
        "batches": 7,
        "spec_num_drafts": 10,
        "spec_num_draft_tokens": 40,
        "spec_num_accepted_tokens": 20,
        "spec_avg_accepted_per_window": 2.0,
        "spec_acceptance_ratio": 0.5,
        "ncu_metrics": {"dram__bytes_write.sum": 123.0},
    }


def test_seed_summary_missing_metrics_are_null():
    mode = seed_summary(RunSpec(), {}, None)["per_mode"][0]
    assert mode["mode"] == "adaptive0_thresh0.0"
    assert mode["latency_avg_s"] is None and mode["spec_acceptance_ratio"] is None and mode["ncu_metrics"] is None


def test_seed_summary_counts_run_batches_over_instances():
    spec = RunSpec(measured_batches=4, engine_instances=3, arms=[{"name": "baseline"}])
    assert seed_summary(spec, METRICS, None)["per_mode"][0]["batches"] == 12


def test_round_trip_of_design_and_replicates(tmp_path):
    spec = RunSpec(run_id="r2", adaptive_draft_length=True, measured_batches=2, engine_instances=1,
                   arms=[{"name": "baseline", "adaptive_draft_length": False}])
    design = {"name": "within-engine", "engine_instances": 1, "groups": [["run", "baseline"]], "seed": 5,
              "order": [{"instance": 0, "group": 0, "arms": ["run", "baseline"],
                         "batches": ["run", "baseline", "baseline", "run"]}],
              "arms": [{"name": "run", "group": 0, "plugin_loaded": True, "feature_impl": "nwor-plugin"},
                       {"name": "baseline", "adaptive_draft_length": False, "group": 0, "plugin_loaded": True,
                        "feature_impl": "none"}]}
    replicate = {"instance": 0, "group": 0, "arms": ["run", "baseline"], "engine_start_s": 30.5,
                 "warmup": {"rule": {"min_batches": 2, "max_batches": 6, "window": 2, "tolerance": 0.25},
                            "series_s": [0.5, 0.3, 0.31, 0.3], "series_arms": ["run", "baseline"] * 2,
                            "batches": 4, "ended_by": "stable"},
                 "batches": [{"arm": a, "position": k, "latency_s": 0.3 + k / 100, "num_output_tokens": 96,
                              "output_tokens_per_s": 96 / (0.3 + k / 100)}
                             for k, a in enumerate(["run", "baseline", "baseline", "run"])],
                 "counters": {"run": {"num_drafts": 9, "plugin": {"draft_length_histogram": {5: 3, 10: 6}}},
                              "baseline": {"num_drafts": 8, "plugin": None}}}
    doc = envelope(spec, "ok", metrics=dict(METRICS), design=design, replicates=[replicate])
    back = read_result(write_result(tmp_path / "r2.json", doc))
    assert back["design"] == design and back["schema_version"] == 2
    # JSON object keys are strings: the histogram's lengths come back as "5", "10".
    assert back["replicates"][0]["counters"]["run"]["plugin"]["draft_length_histogram"] == {"5": 3, "10": 6}
    assert back["replicates"][0]["warmup"] == replicate["warmup"]
    assert RunSpec(**back["spec"]) == spec
    assert back["params_hash"] == spec.params_hash()
