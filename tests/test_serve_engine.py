"""A real `vllm serve` on the CPU build, driven by `vllm bench serve` through the serving notebook.

One module-scoped run (two servers start, ~40 s each on 2 cores): adaptive draft length (nwor's plugin) on
against its features-off baseline, 3 load points each; then every assertion, including that no server or
engine process is left. On a shared machine, run it under the machines' one-engine-at-a-time lock.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

import psutil
import pytest

from nwor.config import RunSpec
from nwor.errors import ServerError
from nwor.execute import run_notebook
from nwor.features import detect_capability, plan_features
from nwor.serve import start_server
from nwor.serving import artifacts_dir
from nwor.serving_report import effect_vs_load, sweep_frame

pytestmark = pytest.mark.engine
RUN, BASELINE = "run", "baseline"

SPEC = dict(run_id="serve_test", grid="serving_grid", profile="adhoc", adaptive_draft_length=True,
            arms=[{"name": "baseline", "adaptive_draft_length": False}], warmup_max_batches=1,
            num_speculative_tokens=4, max_new_tokens=16, warmup_batches=0, serve_max_concurrency=4,
            serve_requests_per_slot=1, serve_slo_ttft_ms=60000.0, serve_slo_tpot_ms=60000.0)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("outputs")
    spec = RunSpec(**SPEC)
    doc = run_notebook(spec, root=root)
    return {"doc": doc, "spec": spec, "dir": root / "adhoc" / "serving_grid"}


def _group_members(pgid: int) -> list[psutil.Process]:
    members = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(proc)
        except (ProcessLookupError, psutil.Error):
            continue
    return members


def test_no_server_or_engine_process_is_left(served):
    for rep in served["doc"]["replicates"]:
        pid = rep["server"]["pid"]
        assert not _group_members(pid), f"instance {rep['instance']}: processes of group {pid} still run"
        port = int(rep["server"]["argv"][rep["server"]["argv"].index("--port") + 1])
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0, f"something still listens on {port}"
    leftovers = [p for p in psutil.process_iter(["cmdline"]) if "nwor.vllm_cli" in " ".join(p.info["cmdline"] or [])]
    assert not leftovers


def _by_arm(doc: dict) -> dict:
    return {r["arms"][0]: r for r in doc["replicates"]}


def test_design_is_one_server_per_arm(served):
    doc = served["doc"]
    assert doc["status"] == "ok"
    assert doc["design"]["name"] == "engines-interleaved" and doc["design"]["instance_kind"] == "vllm serve"
    assert sorted(r["arms"][0] for r in doc["replicates"]) == [BASELINE, RUN]
    assert doc["features"]["arms"][RUN]["impl"]["adaptive_draft_length"] == "nwor-plugin"
    assert doc["features"]["arms"][BASELINE]["feature_impl"] == "none"
    assert "NWOR_PLUGIN_CONFIG" in _by_arm(doc)[RUN]["server"]["env"]
    assert "NWOR_PLUGIN_CONFIG" not in _by_arm(doc)[BASELINE]["server"]["env"]


def test_every_instance_sweeps_three_load_points(served):
    for rep in served["doc"]["replicates"]:
        points = rep["sweep"]
        assert [p["concurrency"] for p in points] == [1, 2, 4]
        assert [p["completed"] for p in points] == [1, 2, 4] and not any(p["failed"] for p in points)
        for p in points:
            assert p["p50_ttft_ms"] > 0 and p["p50_e2el_ms"] >= p["p50_ttft_ms"] and p["output_tokens_per_s"] > 0
            assert p["num_output_tokens"] == 16 * p["completed"]  # ignore_eos: every request runs to the end
            assert p["request_goodput_per_s"] == pytest.approx(p["request_throughput_per_s"], rel=1e-9)
        assert len(rep["batches"]) == 3 and rep["warmup"]["batches"] == 0 and rep["warmup"]["ended_by"] == "stable"


def test_spec_decode_counters_cover_each_point_only(served):
    for rep in served["doc"]["replicates"]:
        for p in rep["sweep"]:
            assert p["num_drafts"] > 0 and p["num_draft_tokens"] >= p["num_drafts"]
            # the client diffs /metrics around its own requests too; both windows are the point
            assert p["draft_acceptance_rate"] == pytest.approx(p["client_draft_acceptance_rate"], abs=1e-9)
    run = [p for r in served["doc"]["replicates"] if r["arms"] == [RUN] for p in r["sweep"]]
    assert served["doc"]["metrics"]["num_drafts"] == sum(p["num_drafts"] for p in run)


def test_plugin_counters_per_point_on_the_plugin_arm_only(served):
    base, run = _by_arm(served["doc"])[BASELINE], _by_arm(served["doc"])[RUN]
    assert all(p["plugin"] is None for p in base["sweep"])
    for p in run["sweep"]:
        assert p["plugin"]["config"]["adaptive_draft_length"] is True
        assert sum(p["plugin"]["draft_length_histogram"].values()) == p["plugin"]["steps"] > 0


def test_artifacts_next_to_the_json(served):
    folder, doc = served["dir"], served["doc"]
    assert (folder / "serve_test.json").exists() and (folder / "serve_test.ipynb").exists()
    serve_dir = artifacts_dir(folder / "serve_test.json")
    for rep in doc["replicates"]:
        assert "Application startup complete" in (serve_dir / rep["server"]["log"]).read_text()
        for p in rep["sweep"]:
            assert (serve_dir / p["client_result"]).exists()


def test_effect_vs_load_has_a_row_per_point(served):
    effects = effect_vs_load(sweep_frame([served["doc"]]), "output_tokens_per_s")
    assert effects["concurrency"].tolist() == [1, 2, 4] and effects["effect"].notna().all()


def test_a_server_that_cannot_start_names_its_log(tmp_path):
    spec = RunSpec(**SPEC)
    plan = plan_features(spec, detect_capability())
    missing = {"target_model": str(tmp_path / "no-model"), "draft_model": str(tmp_path / "no-draft")}
    log = tmp_path / "bad.server.log"
    with pytest.raises(ServerError, match="exited with code .* before it was ready; see .*bad.server.log"):
        start_server(spec, missing, plan, log, timeout_s=300)


def test_report_draws_effect_vs_load_from_the_serving_grid(served, tmp_path):
    import nbformat
    import papermill

    from nwor.execute import REPORT_NOTEBOOK

    # A profile's offline results beside its serving grid, as after `nwor run all` + `nwor run serving_grid`.
    import shutil

    root = served["dir"].parent.parent
    shutil.copytree(Path(__file__).parent / "fixtures" / "results" / "smoke", root / "adhoc", dirs_exist_ok=True)
    out = tmp_path / "report.ipynb"
    papermill.execute_notebook(str(REPORT_NOTEBOOK), str(out), parameters={"outputs_root": str(root),
                                                                           "profile": "adhoc"},
                               cwd=str(REPORT_NOTEBOOK.parent.parent), progress_bar=False)
    text = "\n".join(str(o.get("data", {}).get("text/markdown", "")) for c in nbformat.read(out, as_version=4).cells
                     if c.cell_type == "code" for o in c.outputs)
    assert "1 serving runs (0 A/A), load points 1, 2, 4" in text
    png = root / "adhoc" / "report" / "serving_effect_vs_load.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
