"""Tests for nwor.bundle: a run's files collected, tagged and published atomically (JSON last), sizes bounded."""
from __future__ import annotations

import json
import pickle

import pytest

from nwor.bundle import BundleTooLarge, atomic_write_bytes, collect, publish, with_result_field
from nwor.errors import NworError

RUN = "run1_r12_t64_temp0.0_d10_adaptive1"


def _run_files(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{RUN}.json").write_text(json.dumps({"schema_version": 2, "status": "ok", "summary": {"x": 1}}))
    (folder / f"{RUN}.ipynb").write_text("{}")
    (folder / f"{RUN}.ncu-rep").write_bytes(b"\x00\xffbinary")
    (folder / f".{RUN}.json.abc.tmp").write_text("half")  # an atomic write in flight: never shipped
    (folder / "run1_r12_t64_temp0.0_d10_adaptive10.json").write_text("{}")  # another run sharing the prefix
    return folder


def test_collect_takes_only_this_runs_files(tmp_path):
    files = collect(_run_files(tmp_path / "w"), RUN)
    assert sorted(files) == [f"{RUN}.ipynb", f"{RUN}.json", f"{RUN}.ncu-rep"]
    assert files[f"{RUN}.ncu-rep"] == b"\x00\xffbinary"


def test_collect_refuses_an_oversized_bundle_naming_the_largest_file(tmp_path):
    folder = _run_files(tmp_path / "w")
    (folder / f"{RUN}.vllm.log").write_bytes(b"x" * 3000)
    with pytest.raises(BundleTooLarge, match=rf"{RUN}.vllm.log"):
        collect(folder, RUN, max_bytes=2048)
    err = pickle.loads(pickle.dumps(BundleTooLarge("m", run_id=RUN)))
    assert err.context == {"run_id": RUN}


def test_with_result_field_adds_placement_and_keeps_seed_paths(tmp_path):
    files = collect(_run_files(tmp_path / "w"), RUN)
    tagged = with_result_field(files, RUN, "placement", {"hostname": "h", "gpu_ids": ["2"]})
    doc = json.loads(tagged[f"{RUN}.json"])
    assert doc["placement"] == {"hostname": "h", "gpu_ids": ["2"]}
    assert doc["summary"] == {"x": 1} and doc["status"] == "ok"
    assert tagged[f"{RUN}.ipynb"] == files[f"{RUN}.ipynb"]
    with pytest.raises(NworError, match="no readable"):
        with_result_field({f"{RUN}.ipynb": b"{}"}, RUN, "placement", {})


def test_publish_writes_every_file_and_the_json_last(tmp_path, monkeypatch):
    files = collect(_run_files(tmp_path / "w"), RUN)
    order = []
    import nwor.bundle

    real = nwor.bundle.atomic_write_bytes
    monkeypatch.setattr(nwor.bundle, "atomic_write_bytes", lambda p, d: (order.append(p.name), real(p, d)))
    written = publish(files, tmp_path / "out" / "smoke" / "adaptive_grid", RUN)
    assert order[-1] == f"{RUN}.json" and len(written) == 3
    for name, data in files.items():
        assert (tmp_path / "out" / "smoke" / "adaptive_grid" / name).read_bytes() == data
    assert not [p for p in (tmp_path / "out" / "smoke" / "adaptive_grid").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("name", ["../escape.json", f"sub/{RUN}.json", "other_run.json", f".{RUN}.json"])
def test_publish_refuses_names_outside_the_run(tmp_path, name):
    with pytest.raises(NworError, match="refusing to publish"):
        publish({name: b"{}"}, tmp_path, RUN)
    assert not list(tmp_path.iterdir())


def test_publish_stopped_by_a_full_disk_leaves_no_json(tmp_path, monkeypatch):
    import errno

    import nwor.bundle

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(nwor.bundle, "atomic_write_bytes", full)
    with pytest.raises(OSError, match="No space"):
        publish({f"{RUN}.ipynb": b"{}", f"{RUN}.json": b"{}"}, tmp_path, RUN)
    assert not (tmp_path / f"{RUN}.json").exists()


def test_atomic_write_bytes_replaces_whole_file(tmp_path):
    path = tmp_path / "f.bin"
    atomic_write_bytes(path, b"old")
    atomic_write_bytes(path, b"new contents")
    assert path.read_bytes() == b"new contents"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]
