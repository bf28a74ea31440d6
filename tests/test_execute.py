"""Tests for nwor.execute: output layout, the parameters-cell check (fixture notebooks in tests/notebooks/),
the committed run notebook's shape, and papermill failures turned into failure records."""
from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from nwor.config import SPEC_FIELDS, RunSpec
from nwor.errors import ConfigError, RunFailed
from nwor.execute import (OUTPUTS_ENV, PATH_PARAMETERS, RUN_NOTEBOOK, check_parameters, notebook_path,
                          outputs_root, run_dir, run_notebook, run_paths)
from nwor.results import read_result

NOTEBOOKS = Path(__file__).resolve().parent / "notebooks"
SPEC = RunSpec(run_id="run3_x_adaptive1", grid="adaptive_grid", profile="smoke")


def test_outputs_root_default_and_env(tmp_path, monkeypatch):
    monkeypatch.delenv(OUTPUTS_ENV, raising=False)
    monkeypatch.chdir(tmp_path)  # e.g. JupyterLab's notebooks/: the project's outputs/, not the CWD's
    assert outputs_root() == Path(__file__).resolve().parents[1] / "outputs"
    monkeypatch.setenv(OUTPUTS_ENV, str(tmp_path / "elsewhere"))
    assert outputs_root() == (tmp_path / "elsewhere").resolve()


def test_run_dir(tmp_path, monkeypatch):
    assert run_dir("smoke", "adaptive_grid", tmp_path) == tmp_path.resolve() / "smoke" / "adaptive_grid"
    monkeypatch.setenv(OUTPUTS_ENV, str(tmp_path / "env"))
    assert run_dir("full", "early_exit_grid") == (tmp_path / "env").resolve() / "full" / "early_exit_grid"


def test_run_paths_relative_to_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result, log = run_paths(SPEC, root=tmp_path / "out")
    assert result == "out/smoke/adaptive_grid/run3_x_adaptive1.json"
    assert log == "out/smoke/adaptive_grid/run3_x_adaptive1.vllm.log"
    assert notebook_path(result) == Path("out/smoke/adaptive_grid/run3_x_adaptive1.ipynb")


def test_run_paths_absolute_outside_cwd(tmp_path, monkeypatch):
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    result, log = run_paths(SPEC, root=tmp_path / "out")
    assert result == str(tmp_path.resolve() / "out" / "smoke" / "adaptive_grid" / "run3_x_adaptive1.json")
    assert Path(log).name == "run3_x_adaptive1.vllm.log"


def test_run_paths_explicit(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result, log = run_paths(SPEC, result_path="a/b.json")
    assert (result, log) == ("a/b.json", "a/run3_x_adaptive1.vllm.log")
    assert run_paths(SPEC, result_path="a/b.json", log_path="c/d.log") == ("a/b.json", "c/d.log")


def test_check_parameters_ok():
    check_parameters(NOTEBOOKS / "ok.ipynb", ("a", "b"))
    check_parameters(NOTEBOOKS / "ok.ipynb", ("a",))


def test_check_parameters_names_missing():
    with pytest.raises(ConfigError) as info:
        check_parameters(NOTEBOOKS / "ok.ipynb", ("a", "b", "z", "c"))
    assert str(info.value) == "ok.ipynb: parameters cell does not declare c, z"  # c is set later, not declared


def test_check_parameters_without_tagged_cell():
    with pytest.raises(ConfigError, match=r"no_parameters\.ipynb: parameters cell does not declare a, b") as info:
        check_parameters(NOTEBOOKS / "no_parameters.ipynb", ("a", "b"))
    assert info.value.context["notebook"].endswith("no_parameters.ipynb")


def test_run_notebook_declares_every_parameter():
    check_parameters(RUN_NOTEBOOK, (*SPEC_FIELDS, *PATH_PARAMETERS))


def test_run_notebook_defaults_match_runspec():
    import papermill

    declared = papermill.inspect_notebook(str(RUN_NOTEBOOK))
    for name in SPEC_FIELDS:
        default = declared[name]["default"]
        value = getattr(RunSpec(), name)
        if isinstance(value, tuple):
            value = list(value)
        assert default == repr(value) or eval(default) == value, name  # noqa: S307 - our own notebook


def test_run_notebook_committed_clean():
    nb = json.loads(RUN_NOTEBOOK.read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    assert nb["metadata"]["kernelspec"]["language"] == "python"
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code
    for cell in code:
        assert cell["outputs"] == [] and cell["execution_count"] is None
    tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1
    assert "papermill" not in nb["metadata"]


@pytest.mark.parametrize("name", ["ok", "no_parameters", "broken"])
def test_fixture_notebooks_valid(name):
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"


def _execute(notebook: Path, out: Path, **parameters):
    import papermill

    return papermill.execute_notebook(str(notebook), str(out), parameters=parameters, kernel_name="python3",
                                      progress_bar=False, log_output=False)


def test_broken_notebook_error_carries_ename(tmp_path):
    import papermill

    out = tmp_path / "broken.out.ipynb"
    with pytest.raises(papermill.PapermillExecutionError) as info:
        _execute(NOTEBOOKS / "broken.ipynb", out, a=7)
    assert info.value.ename == "ValueError"
    assert info.value.evalue == "broken fixture a=7"
    executed = nbformat.read(out, as_version=4)  # papermill keeps the executed notebook with the traceback
    assert any(o.get("ename") == "ValueError" for c in executed.cells if c.cell_type == "code"
               for o in c.get("outputs", []))


def test_run_notebook_failure_writes_failed_record(tmp_path, monkeypatch):
    # A stand-in run notebook: declares every parameter, then raises.
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"}})
    params = "\n".join(f"{name} = None" for name in (*SPEC_FIELDS, *PATH_PARAMETERS))
    nb.cells = [nbformat.v4.new_code_cell(params, metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("raise RuntimeError('engine exploded: ' + run_id)")]
    notebook = tmp_path / "fake_run.ipynb"
    nbformat.write(nb, notebook)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RunFailed, match="run run3_x_adaptive1 failed: RuntimeError: engine exploded") as info:
        run_notebook(SPEC, root=tmp_path / "out", notebook=notebook)
    result_path, _ = run_paths(SPEC, root=tmp_path / "out")
    doc = read_result(result_path)
    assert doc["status"] == "failed"
    assert doc["exception"] == "RuntimeError"
    assert doc["error"]["type"] == "RunFailed"
    assert "engine exploded: run3_x_adaptive1" in doc["error"]["message"]
    assert Path(doc["error"]["notebook"]).exists()
    assert info.value.context["exception"] == "RuntimeError"


def test_each_attempt_starts_a_fresh_vllm_log(tmp_path, monkeypatch):
    # A stand-in run notebook that writes a line to its vLLM log, then fails: the second attempt's log
    # must not keep the first attempt's line.
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"}})
    params = "\n".join(f"{name} = None" for name in (*SPEC_FIELDS, *PATH_PARAMETERS))
    nb.cells = [nbformat.v4.new_code_cell(params, metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("open(log_path, 'a').write('attempt\\n')\nraise RuntimeError('x')")]
    notebook = tmp_path / "fake_run.ipynb"
    nbformat.write(nb, notebook)
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        with pytest.raises(RunFailed):
            run_notebook(SPEC, root=tmp_path / "out", notebook=notebook)
    assert Path(run_paths(SPEC, root=tmp_path / "out")[1]).read_text() == "attempt\n"
