"""Rendering the analysis notebook for a profile: executed notebook plus HTML, next to its figures.

A render first removes the old `<profile>/report/`, renders into a staging folder beside it and renames
that into place when it succeeded; a failed render leaves the failed executed notebook alone there. An
older report.html and its figures never stay behind looking current.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from nwor.errors import ConfigError, RunFailed
from nwor.execute import REPORT_NOTEBOOK, check_parameters, relative_path
from nwor.grid import load_profile
from nwor.kernel import ipc_kernel_manager_class
from nwor.paths import STAGING_FOLDER, ReportPaths, profile_dir  # noqa: F401  (STAGING_FOLDER: read by tests)


def check_profile(profile: str, root: str | Path | None = None) -> Path:
    """The profile's outputs folder, after checking that the profile is known and has outputs.

    A profile is known if parameters/profiles.yaml defines it or its outputs folder exists (e.g. adhoc).

    Raises:
        ConfigError: unknown profile, or one without result JSONs yet (one line each).
    """
    folder = profile_dir(profile, root)
    base = folder.parent
    if not folder.is_dir():
        load_profile(profile)  # raises ConfigError "unknown profile ..." for a name profiles.yaml lacks
        raise ConfigError(f"no outputs for profile {profile!r} under {base}; run `nwor run --profile {profile}` "
                          "first")
    if not any(folder.glob("*/*.json")):
        raise ConfigError(f"no result JSONs under {folder}/<grid>/; run `nwor run --profile {profile}` first")
    return folder


def render_report(profile: str, root: str | Path | None = None) -> Path:
    """Execute notebooks/report.ipynb for `profile` and export it to HTML; return the HTML path.

    Raises:
        ConfigError: unknown profile, or the profile has no outputs yet.
        RunFailed: the notebook raised (the executed copy is kept in the report folder for reading).
    """
    import nbformat
    import papermill
    from nbconvert import HTMLExporter

    paths = ReportPaths(check_profile(profile, root))
    folder, staging = paths.folder, paths.staging
    check_parameters(REPORT_NOTEBOOK, ("profile", "outputs_root", "report_folder"))
    for stale in (staging, folder):  # a killed render's staging; the old report, which this one replaces
        if stale.exists():
            shutil.rmtree(stale)  # whatever stops this render (an error, Ctrl-C) leaves no old report behind
    staging.mkdir()
    try:
        executed = paths.executed
        try:
            parameters = {"profile": profile, "outputs_root": relative_path(paths.profile_dir.parent),
                          "report_folder": relative_path(staging)}
            papermill.execute_notebook(relative_path(REPORT_NOTEBOOK), relative_path(executed),
                                       kernel_name="python3", kernel_manager_class=ipc_kernel_manager_class(),
                                       progress_bar=False, parameters=parameters)
        except papermill.PapermillExecutionError as err:
            for stale in staging.iterdir():  # figures of a failed render are incomplete
                if stale != executed:
                    stale.unlink()
            staging.rename(folder)
            raise RunFailed(f"report for {profile} failed: {err.ename}: {err.evalue} (see "
                            f"{relative_path(folder / executed.name)})", notebook=str(folder / executed.name)) from None
        body, _ = HTMLExporter().from_notebook_node(nbformat.read(executed, as_version=4))
        (staging / paths.html.name).write_text(body)
        staging.rename(folder)  # one rename: the report appears whole or not at all
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return paths.html
