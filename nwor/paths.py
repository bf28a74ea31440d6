"""Every output path of a run and of a report, built in one place.

Run ids hold dots (`temp0.0`, `thresh0.5`), so no name here goes through `Path.with_suffix`/`stem`: each
file is `<run_id><suffix>` spelled out. Layout: `<outputs>/<profile>/<grid>/<run_id>.{json,ipynb,vllm.log}`,
ncu side files beside them, `<outputs>/<profile>/report/` for the report.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
OUTPUTS_ENV = "NWOR_OUTPUTS"
RESULT_SUFFIX = ".json"
MASTER_LOG = "master_experiment.log"  # per profile: every grid's events
GRID_LOG = "experiment.log"  # per grid folder
REPORT_FOLDER = "report"
STAGING_FOLDER = ".report-rendering"  # beside report/, so that the final rename stays on one filesystem
# Tags of a run's ncu passes: the measured window, and the KV-cache write sub-pass (nwor/ncu_pass.py).
NCU_TAGS = ("ncu", "ncu-kv")
# A study assembled from several sessions keeps each session's calibration runs as `<run_id>__<session>`
# (nwor/study.py).
SESSION_SEPARATOR = "__"


def outputs_root() -> Path:
    """`$NWOR_OUTPUTS`, else the project's `outputs/` (the checkout nwor is imported from, known by its
    pyproject.toml and parameters/), else `outputs/` in the current directory (an installed nwor).

    Not the current directory first: JupyterLab runs a notebook in notebooks/, which must write where
    `nwor run` does.
    """
    if os.environ.get(OUTPUTS_ENV):
        return Path(os.environ[OUTPUTS_ENV]).resolve()
    if (PACKAGE_ROOT / "pyproject.toml").is_file() and (PACKAGE_ROOT / "parameters").is_dir():
        return PACKAGE_ROOT / "outputs"
    return Path("outputs").resolve()


def profile_dir(profile: str, root: str | Path | None = None) -> Path:
    """`<root>/<profile>`; `root` None is `outputs_root()`."""
    return (Path(root).resolve() if root else outputs_root()) / profile


def run_dir(profile: str, grid: str, root: str | Path | None = None) -> Path:
    """`<root>/<profile>/<grid>`: where a grid's notebooks, JSON, logs and ncu reports live."""
    return profile_dir(profile, root) / grid


@dataclass(frozen=True)
class NcuPaths:
    """Files of one ncu pass next to the run's JSON (tag "ncu": `RUN.ncu-rep`, `RUN.ncu.log`,
    `RUN.ncu-pass.json`, `RUN.ncu-pass.vllm.log`, `RUN.ncu-summary.txt`; tag "ncu-kv": `RUN.ncu-kv.ncu-rep`,
    `RUN.ncu-kv.log`, `RUN.ncu-kv-pass.json`, ...)."""

    report: Path
    log: Path
    pass_result: Path
    vllm_log: Path
    summary: Path


@dataclass(frozen=True)
class RunPaths:
    """The files of one run: `folder / (run_id + suffix)` for each."""

    folder: Path
    run_id: str

    @classmethod
    def of(cls, profile: str, grid: str, run_id: str, root: str | Path | None = None) -> RunPaths:
        return cls(run_dir(profile, grid, root), run_id)

    @classmethod
    def from_result(cls, result_path: str | Path) -> RunPaths:
        """The paths of the run whose result JSON is `result_path` (any folder, any run id)."""
        path = Path(result_path)
        return cls(path.parent, path.name.removesuffix(RESULT_SUFFIX))

    def _named(self, suffix: str) -> Path:
        return self.folder / f"{self.run_id}{suffix}"

    @property
    def result(self) -> Path:
        return self._named(RESULT_SUFFIX)

    @property
    def notebook(self) -> Path:
        return self._named(".ipynb")

    @property
    def vllm_log(self) -> Path:
        return self._named(".vllm.log")

    @property
    def grid_log(self) -> Path:
        return self.folder / GRID_LOG

    def ncu(self, tag: str = "ncu") -> NcuPaths:
        if tag not in NCU_TAGS:
            raise ValueError(f"unknown ncu pass tag {tag!r} (known: {', '.join(NCU_TAGS)})")
        return NcuPaths(report=self._named(".ncu-rep" if tag == "ncu" else f".{tag}.ncu-rep"),
                        log=self._named(f".{tag}.log"), pass_result=self._named(f".{tag}-pass.json"),
                        vllm_log=self._named(f".{tag}-pass.vllm.log"), summary=self._named(f".{tag}-summary.txt"))


def is_side_result(path: str | Path) -> bool:
    """True for a JSON beside the runs' that is not a run's result (an ncu pass's own result)."""
    return any(Path(path).name.endswith(f".{tag}-pass.json") for tag in NCU_TAGS)


@dataclass(frozen=True)
class ReportPaths:
    """The files of a profile's report: rendered in `staging`, renamed to `folder` when whole."""

    profile_dir: Path

    @classmethod
    def of(cls, profile: str, root: str | Path | None = None) -> ReportPaths:
        return cls(profile_dir(profile, root))

    @property
    def folder(self) -> Path:
        return self.profile_dir / REPORT_FOLDER

    @property
    def staging(self) -> Path:
        return self.profile_dir / STAGING_FOLDER

    @property
    def executed(self) -> Path:
        """The executed report notebook while rendering (it moves into `folder` with the rename)."""
        return self.staging / "report.ipynb"

    @property
    def html(self) -> Path:
        return self.folder / "report.html"


def report_folder(outputs_root: str | Path, profile: str) -> Path:
    """`<outputs_root>/<profile>/report` as given (relative stays relative: the report notebook's figures)."""
    return Path(outputs_root) / profile / REPORT_FOLDER
