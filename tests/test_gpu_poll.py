"""scripts/gpu_poll.sh on real files: it returns once the expected queues are done, packs what exists (never
.ncu-rep files) and splits an archive too large for the device tool into pieces that join back."""
from __future__ import annotations

import os
import subprocess
import tarfile
import time
from pathlib import Path

SCRIPT = Path(__file__).parent.parent / "scripts" / "gpu_poll.sh"


def _poll(seconds, logs, expected, archive, *dirs, cwd):
    started = time.monotonic()
    out = subprocess.run(["bash", str(SCRIPT), str(seconds), str(logs), str(expected), str(archive), *dirs],
                         cwd=cwd, capture_output=True, text=True, check=True, timeout=120)
    return out.stdout, time.monotonic() - started


def test_returns_when_done_and_packs_logs_and_results(tmp_path):
    logs = tmp_path / "qlogs"
    logs.mkdir()
    (logs / "q0.log").write_text("[01:00:00] START x\n[01:02:00] QUEUE DONE\n")
    (logs / "q1.log").write_text("[01:00:00] START y\n")
    run = tmp_path / "outputs" / "s1"
    run.mkdir(parents=True)
    (run / "a.json").write_text("{}")
    (run / "a.ncu-rep").write_bytes(b"x" * 100)
    archive = tmp_path / "s1.tgz"
    # One of two queues done: it waits the whole time, then packs what exists.
    out, took = _poll(2, logs, 2, archive, "outputs/s1", cwd=tmp_path)
    assert took >= 2 and "1 of 2 done" in out and "q1.log: [01:00:00] START y" in out
    with tarfile.open(archive) as tar:
        assert sorted(tar.getnames()) == ["outputs/s1", "outputs/s1/a.json", "qlogs", "qlogs/q0.log",
                                          "qlogs/q1.log"]
    # Both done: it returns at once although it was given minutes.
    (logs / "q1.log").write_text("[01:00:00] START y\n[01:03:00] QUEUE DONE\n")
    out, took = _poll(300, logs, 2, archive, "outputs/s1", cwd=tmp_path)
    assert took < 30 and "2 of 2 done" in out


def test_a_large_archive_comes_back_in_pieces_that_join(tmp_path):
    logs = tmp_path / "qlogs"
    logs.mkdir()
    (logs / "scale.log").write_text("[01:00:00] SCALE DONE\n")
    big = tmp_path / "big"
    big.mkdir()
    (big / "noise.bin").write_bytes(os.urandom(17 * 1048576))  # random bytes do not compress
    archive = tmp_path / "s.tgz"
    _poll(60, logs, 1, archive, "big", cwd=tmp_path)
    pieces = sorted(tmp_path.glob("s.tgz.*"))
    assert not archive.exists() and len(pieces) == 2
    assert all(p.stat().st_size <= 15 * 1048576 for p in pieces)
    joined = tmp_path / "joined.tgz"
    joined.write_bytes(b"".join(p.read_bytes() for p in pieces))
    with tarfile.open(joined) as tar:
        assert tar.extractfile("big/noise.bin").read() == (big / "noise.bin").read_bytes()
