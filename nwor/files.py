"""Filesystem faults as one line: atomic notebook writes, outputs folders checked up front, OSError described."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from nwor.errors import ConfigError


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` so that a reader sees the old file or the whole new one, never a torn one.

    Raises:
        OSError: the folder cannot be written (full, read-only, missing); `path` is then unchanged.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; notebooks are shared artifacts
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        # A failed write(2) names no file: name the one that could not be written.
        raise type(err)(err.errno, err.strerror, err.filename or str(path)) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def use_atomic_notebook_writes() -> None:
    """Make papermill save executed notebooks atomically: it rewrites them after every cell, and a full
    disk mid-write would otherwise leave a truncated, unreadable notebook."""
    from papermill.iorw import LocalHandler, papermill_io

    class AtomicLocalHandler(LocalHandler):
        def write(self, buf, path):
            atomic_write_text(path, buf)

    # papermill has no public way to replace its "local" handler; its handler list is (scheme, handler).
    papermill_io._handlers = [(scheme, AtomicLocalHandler() if scheme == "local" and type(h) is LocalHandler else h)
                              for scheme, h in papermill_io._handlers]


def describe_os_error(err: OSError, where: str | Path | None = None) -> str:
    """`<path>: <cause>` (e.g. `outputs/smoke/.nwor.lock: Read-only file system`), the path relative where
    possible; `where` names the place when the error names no file (a failed write names none)."""
    from nwor.provenance import display_path

    cause = err.strerror or str(err)
    paths = [display_path(p) for p in (err.filename, err.filename2) if p is not None]
    paths = paths or ([display_path(where)] if where is not None else [])
    return f"{' -> '.join(map(str, paths))}: {cause}" if paths else cause


def check_writable(folder: str | Path) -> None:
    """Create `folder` if needed and write (then remove) a file in it: a read-only or full outputs folder
    is then reported before anything starts.

    Raises:
        OSError: the folder cannot be created or written, with the path that failed.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / ".nwor-write-check", "ok\n")
    (folder / ".nwor-write-check").unlink(missing_ok=True)  # another runner may check at the same time


def check_folders(folders) -> None:
    """Raise unless each path is a folder or does not exist yet (then it is created when needed).

    Raises:
        ConfigError: a path (or one of its parents) is a file.
    """
    from nwor.provenance import display_path

    for folder in folders:
        for path in (*reversed(Path(folder).parents), Path(folder)):
            if path.exists() and not path.is_dir():
                raise ConfigError(f"outputs path {display_path(path)} is a file, not a folder: move it away or "
                                  f"pass --outputs DIR", path=str(path))
