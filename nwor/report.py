"""Rendering the analysis notebook for a profile: executed notebook plus HTML, next to its figures."""
from __future__ import annotations

from pathlib import Path

from nwor.errors import ConfigError, RunFailed
from nwor.execute import REPORT_NOTEBOOK, check_parameters, outputs_root, relative_path


def render_report(profile: str, root: str | Path | None = None) -> Path:
    """Execute notebooks/report.ipynb for `profile` and export it to HTML; return the HTML path.

    Raises:
        ConfigError: the profile has no outputs yet.
        RunFailed: the notebook raised (the executed copy is kept for reading).
    """
    import nbformat
    import papermill
    from nbconvert import HTMLExporter

    base = Path(root).resolve() if root else outputs_root()
    if not (base / profile).is_dir():
        raise ConfigError(f"no outputs for profile {profile!r} under {base}; run `nwor run --profile {profile}` first")
    folder = base / profile / "report"
    folder.mkdir(parents=True, exist_ok=True)
    executed = folder / "report.ipynb"
    check_parameters(REPORT_NOTEBOOK, ("profile", "outputs_root"))
    try:
        papermill.execute_notebook(relative_path(REPORT_NOTEBOOK), relative_path(executed), kernel_name="python3",
                                   progress_bar=False,
                                   parameters={"profile": profile, "outputs_root": relative_path(base)})
    except papermill.PapermillExecutionError as err:
        raise RunFailed(f"report for {profile} failed: {err.ename}: {err.evalue} (see {executed})",
                        notebook=str(executed)) from None
    body, _ = HTMLExporter().from_notebook_node(nbformat.read(executed, as_version=4))
    html = folder / "report.html"
    html.write_text(body)
    return html
