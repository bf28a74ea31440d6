"""House rules that span modules: no module imports the nwor package itself, each constant has one home."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "nwor"


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _submodule_names() -> set[str]:
    names = {p.stem for p in PACKAGE.glob("*.py")}
    return names | {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}


def _back_imports(path: Path, submodules: set[str]) -> list[str]:
    """`import nwor` or `from nwor import <name>` where name is not a submodule: both run the package."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [f"line {node.lineno}: import {a.name}" for a in node.names if a.name == "nwor"]
        elif isinstance(node, ast.ImportFrom) and node.module == "nwor" and node.level == 0:
            found += [f"line {node.lineno}: from nwor import {a.name}" for a in node.names
                      if a.name not in submodules]
    return found


def test_no_module_imports_the_package_itself():
    submodules = _submodule_names()
    offenders = {str(p.relative_to(PACKAGE.parent)): hits for p in _modules()
                 if p != PACKAGE / "__init__.py" and (hits := _back_imports(p, submodules))}
    assert offenders == {}


def test_back_import_scan_catches_both_forms(tmp_path):
    # The scan itself must be able to fail: a package import and a re-exported name are both caught.
    bad = tmp_path / "bad.py"
    bad.write_text("import nwor\nfrom nwor import measure\nfrom nwor import stats\nfrom nwor.bench import measure\n")
    assert _back_imports(bad, {"stats", "bench"}) == ["line 1: import nwor", "line 2: from nwor import measure"]


def test_package_init_has_no_deferred_imports():
    text = (PACKAGE / "__init__.py").read_text()
    assert "noqa: E402" not in text


@pytest.mark.parametrize("name", ["results", "provenance", "cli"])
def test_version_is_read_from_its_own_module(name):
    import importlib

    from nwor._version import __version__

    module = importlib.import_module(f"nwor.{name}")
    assert module.__version__ == __version__


def _string_literals(path: Path) -> list[str]:
    """Every string constant of a module except docstrings (prose may name a metric)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    return [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)
            and isinstance(node.value, str) and id(node) not in docstrings]


def test_ncu_metric_names_have_one_source():
    from nwor import ncu_metrics

    names = set(ncu_metrics.KV_WRITE_METRICS)
    scripts = PACKAGE.parent / "scripts"
    holders = {str(p.relative_to(PACKAGE.parent)) for p in [*_modules(), *sorted(scripts.glob("*.py"))]
               if any(name in text for text in _string_literals(p) for name in names)}
    assert holders == {"nwor/ncu_metrics.py"}


def test_schema_version_and_statuses_have_one_source():
    assignments = {}
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Name) and target.id in ("SCHEMA_VERSION", "STATUSES"):
                        assignments.setdefault(target.id, []).append(str(path.relative_to(PACKAGE.parent)))
    assert assignments == {"SCHEMA_VERSION": ["nwor/results.py"], "STATUSES": ["nwor/results.py"]}


def test_refusal_is_decided_by_the_error_hierarchy():
    from nwor.errors import is_refusal

    assert is_refusal("ConfigError") and is_refusal("FeatureUnavailable")
    assert not is_refusal("RunFailed") and not is_refusal("ValueError") and not is_refusal("is_refusal")


def test_modules_stay_readable_in_one_sitting():
    # House style: one job per module, about 300 lines at most; the plugin (vLLM hooks) is exempt.
    long = {str(p.relative_to(PACKAGE.parent)): n for p in _modules()
            if "plugin" not in p.relative_to(PACKAGE).parts and (n := len(p.read_text().splitlines())) > 310}
    assert long == {}
