"""Filesystem faults on real small filesystems (a tmpfs mounted for the test: needs root, as here and in CI,
else skipped): a full disk never tears a notebook and stops the suite with one line; a read-only outputs
folder is one line."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from nwor.config import RunSpec
from nwor.errors import OutputsUnwritable
from nwor.files import atomic_write_text, describe_os_error
from nwor.results import read_result

NWOR = str(Path(sys.executable).with_name("nwor"))


@pytest.fixture
def small_fs(tmp_path):
    """Mount a tmpfs; yields a function that mounts one (size, read-only) and returns its folder."""
    mounted = []

    def mount(size: str = "1m", read_only: bool = False) -> Path:
        folder = tmp_path / f"fs{len(mounted)}"
        folder.mkdir()
        opts = f"size={size}" + (",ro" if read_only else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(folder)], capture_output=True,
                              text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def _fill(folder: Path) -> None:
    """Write until the filesystem is full (unbuffered: a short write comes first, then ENOSPC)."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        while True:
            os.write(fd, b"\0" * 65536)
    except OSError as err:
        assert err.errno == errno.ENOSPC
    finally:
        os.close(fd)


def test_atomic_write_on_a_full_disk_keeps_the_old_file(small_fs):
    fs = small_fs("256k")
    path = fs / "run.ipynb"
    atomic_write_text(path, "old, complete")
    _fill(fs)
    with pytest.raises(OSError) as info:
        atomic_write_text(path, "x" * 100_000)
    assert info.value.errno == errno.ENOSPC
    assert path.read_text() == "old, complete"
    assert sorted(p.name for p in fs.iterdir()) == ["filler", "run.ipynb"]  # no temp file left
    assert describe_os_error(info.value) == f"{path}: No space left on device"  # the file, though write() names none


def test_read_only_outputs_is_one_line(small_fs, tmp_path):
    fs = small_fs(read_only=True)
    proc = subprocess.run([NWOR, "run", "adaptive_grid", "--only", "run1_r12_t64_temp0.0_d10_adaptive0",
                           "--outputs", str(fs)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("nwor: error: ") and proc.stderr.rstrip().endswith(": Read-only file system")
    assert "fs0/smoke" in proc.stderr


def test_disk_full_mid_suite_stops_with_one_line_and_no_torn_notebook(small_fs, tmp_path, monkeypatch):
    from nwor.suite import run_suite

    fs = small_fs("4m")
    monkeypatch.chdir(tmp_path)
    # Runs that fail fast (a missing prompt file) but go through papermill, a kernel and the suite's records.
    specs = [RunSpec(run_id=rid, grid="adaptive_grid", profile="smoke", prompt_set=str(tmp_path / "none.jsonl"))
             for rid in ("a", "b", "c")]
    grid_dir = fs / "smoke" / "adaptive_grid"

    def progress(event, state, index, total):
        if event == "start" and state.spec.run_id == "b":
            _fill(fs)  # the disk fills between two runs

    with pytest.raises(OutputsUnwritable) as info:
        run_suite(specs, root=fs, progress=progress)
    message = str(info.value)
    assert message.startswith("suite stopped: cannot write ") and "\n" not in message
    assert ": No space left on device; run adaptive_grid/b could not be recorded as failed; 1 runs not attempted" \
        in message
    assert read_result(grid_dir / "a.json")["status"] == "refused"  # the bad prompt file: a bad input
    nbformat.validate(nbformat.read(grid_dir / "a.ipynb", as_version=4))
    for path in grid_dir.iterdir():  # every notebook left is whole JSON; no temp files
        assert not path.name.endswith(".tmp"), path
        if path.suffix == ".ipynb":
            json.loads(path.read_text())
    assert not (grid_dir / "c.json").exists()
    assert not (fs / "smoke" / ".nwor.lock").exists()
    os.remove(fs / "filler")
