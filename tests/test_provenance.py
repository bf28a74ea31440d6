"""nwor/provenance.py: what a result records about where it came from."""
from __future__ import annotations

import os
import stat

from nwor import provenance


def _fake_smi(tmp_path, monkeypatch, output: str):
    smi = tmp_path / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\nprintf '{output}'\n")
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")


def test_gpu_memory_used_sums_gpus_in_bytes(tmp_path, monkeypatch):
    _fake_smi(tmp_path, monkeypatch, "1024\\n2048\\n")
    assert provenance.gpu_memory_used_bytes() == 3072 * 2**20


def test_gpu_memory_used_is_null_without_a_reading(tmp_path, monkeypatch):
    _fake_smi(tmp_path, monkeypatch, "[N/A]\\n")
    assert provenance.gpu_memory_used_bytes() is None


def test_gpu_info_parses_name_memory_driver(tmp_path, monkeypatch):
    _fake_smi(tmp_path, monkeypatch, "NVIDIA H100 80GB HBM3, 81559 MiB, 580.159.04\\n")
    assert provenance.gpu_info() == {"gpus": [{"name": "NVIDIA H100 80GB HBM3", "memory": "81559 MiB"}],
                                     "driver": "580.159.04"}


def test_display_path_hides_home_and_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert provenance.display_path(tmp_path / "a" / "b.json") == "a/b.json"
    assert provenance.display_path(os.path.expanduser("~/x/y")).startswith("~/")


def test_recorded_env_keeps_engine_variables_only():
    env = provenance.recorded_env({"VLLM_X": "1", "NWOR_Y": "2", "TARGET_MODEL": "m", "SECRET_TOKEN": "s",
                                   "HF_TOKEN": "hf_x", "VLLM_API_KEY": "k"})
    assert env == {"NWOR_Y": "2", "TARGET_MODEL": "m", "VLLM_X": "1"}


def test_lock_state_hashes_the_lock_and_names_mismatches(tmp_path):
    import hashlib
    from importlib.metadata import version

    lock = tmp_path / provenance.LOCK_FILE
    lock.parent.mkdir()
    lock.write_text(f"# header\nPyTest=={version('pytest')}\nnumpy==0.0.1\n")
    state = provenance.lock_state(tmp_path)
    assert state["lock_sha256"] == hashlib.sha256(lock.read_bytes()).hexdigest()
    assert state["lock_matches"] is False
    assert state["lock_mismatches"] == [f"numpy==0.0.1 (installed: {version('numpy')})"]
    lock.write_text(f"pytest=={version('pytest')}\n")
    assert provenance.lock_state(tmp_path)["lock_matches"] is True
    assert provenance.lock_state(tmp_path / "none")["lock_sha256"] is None


def test_the_checkouts_lock_pins_torch_and_vllm():
    text = (provenance.Path(provenance.__file__).resolve().parents[1] / provenance.LOCK_FILE).read_text()
    assert "\ntorch==" in text and "\nvllm-cpu==" in text


def test_runner_id_is_not_recorded():
    assert provenance.recorded_env({"NWOR_RUNNER_ID": "1-2", "NWOR_OUTPUTS": "o"}) == {"NWOR_OUTPUTS": "o"}


def test_machine_identity_hashes_boot_id_and_every_gpu_uuid(tmp_path, monkeypatch):
    import hashlib
    import re

    boot = tmp_path / "boot_id"
    boot.write_text("7f871a9e-15f3-4549-b28e-06f05db1284b\n")
    monkeypatch.delenv(provenance.MACHINE_LABEL_ENV, raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")  # no nvidia-smi: the boot id alone
    alone = provenance.machine_identity(boot)
    assert alone == {"machine_id": hashlib.sha256(b"7f871a9e-15f3-4549-b28e-06f05db1284b").hexdigest()[:12],
                     "machine_label": None}
    smi = tmp_path / "bin"
    smi.mkdir()
    _fake_smi(smi, monkeypatch, "GPU-bbbb\\nGPU-aaaa\\n")
    with_gpus = provenance.machine_identity(boot)["machine_id"]
    assert re.fullmatch("[0-9a-f]{12}", with_gpus) and with_gpus != alone["machine_id"]
    _fake_smi(smi, monkeypatch, "GPU-aaaa\\nGPU-bbbb\\n")  # listing order does not matter
    assert provenance.machine_identity(boot)["machine_id"] == with_gpus
    _fake_smi(smi, monkeypatch, "GPU-aaaa\\nGPU-cccc\\n")  # another set of GPUs is another machine
    assert provenance.machine_identity(boot)["machine_id"] != with_gpus
    boot.write_text("another-boot\n")
    assert provenance.machine_identity(boot)["machine_id"] not in (with_gpus, alone["machine_id"])


def test_machine_identity_label_and_no_identity(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setenv(provenance.MACHINE_LABEL_ENV, " h100-session7 ")
    assert provenance.machine_identity(tmp_path / "none") == {"machine_id": None, "machine_label": "h100-session7"}
    monkeypatch.setenv(provenance.MACHINE_LABEL_ENV, "")
    assert provenance.machine_identity(tmp_path / "none")["machine_label"] is None


def test_collect_records_this_machines_identity():
    env = provenance.collect()
    assert env["machine_id"] == provenance.machine_identity()["machine_id"] and len(env["machine_id"]) == 12
