"""nwor.provenance.vllm_source: the commit a vLLM install was built from (the fork's, for the fork-cpu kit)."""
from __future__ import annotations

import json

from nwor.provenance import FORK_BUILD_FILE, recorded_env, vllm_source

SHA = "33af2e7ef696299ada9f16c3a1425eada298f316"


class Dist:
    """Stand-in for importlib.metadata.Distribution: files by name, a version."""

    def __init__(self, files: dict, version: str = "0.11.1+cpu"):
        self.files, self.version = files, version

    def read_text(self, name):
        return self.files.get(name)


def test_fork_build_file_wins():
    recorded = {"repository": "IluvatarLabs/vllm", "branch": "elastic-speculation-PR", "commit": SHA}
    source = vllm_source(Dist({FORK_BUILD_FILE: json.dumps(recorded), "direct_url.json": "{}"}))
    assert source == {**recorded, "source": FORK_BUILD_FILE}


def test_pip_git_install_gives_commit_and_drops_file_urls():
    direct = {"url": "https://github.com/IluvatarLabs/vllm",
              "vcs_info": {"vcs": "git", "commit_id": SHA, "requested_revision": "elastic-speculation"}}
    assert vllm_source(Dist({"direct_url.json": json.dumps(direct)})) == {
        "commit": SHA, "requested_revision": "elastic-speculation", "url": direct["url"], "source": "direct_url.json"}
    local = {**direct, "url": "file:///home/someone/vllm"}
    assert vllm_source(Dist({"direct_url.json": json.dumps(local)}))["url"] is None


def test_scm_version_and_nothing():
    assert vllm_source(Dist({}, "0.11.1.dev5+g33af2e7ef.d20251113")) == {"commit": "33af2e7ef", "source": "version"}
    assert vllm_source(Dist({FORK_BUILD_FILE: "not json"}, "0.32.0")) == {"commit": None, "source": None}


def test_recorded_env_names_no_machine_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = {"VLLM_LOGGING_CONFIG_PATH": "/scratch/nwor-vllm-logging-abc.json", "NWOR_MODEL_CACHE": str(tmp_path / "m"),
           "VLLM_CPU_KVCACHE_SPACE": "2", "NWOR_PLUGIN_CONFIG": '{"stats_path": null}'}
    assert recorded_env(env) == {"VLLM_LOGGING_CONFIG_PATH": ".../nwor-vllm-logging-abc.json", "NWOR_MODEL_CACHE": "m",
                                 "VLLM_CPU_KVCACHE_SPACE": "2", "NWOR_PLUGIN_CONFIG": '{"stats_path": null}'}
