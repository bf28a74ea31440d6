"""environment.yml (conda, GPU users) and pyproject.toml (pip) must name the same dependencies."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import yaml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]
# Entries of environment.yml that are not nwor's own dependencies: the interpreter, the installer, the
# CUDA engine and the torch it pins, and nwor itself.
ENV_ONLY = {"python", "pip", "vllm", "torch", "-e ."}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _name(requirement: str) -> str:
    requirement = requirement.strip()
    if requirement.startswith("-e "):
        return requirement
    return re.split(r"[\s=<>!~\[;]", requirement, maxsplit=1)[0]


def _environment_entries() -> list[str]:
    data = yaml.safe_load((REPO / "environment.yml").read_text())
    entries = []
    for dep in data["dependencies"]:
        if isinstance(dep, dict):
            entries += [_name(d) for d in dep.get("pip", [])]
        else:
            entries.append(_name(dep))
    return entries


def _project_dependencies() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {_norm(_name(d)) for d in project["dependencies"]}


def test_name_parsing():
    assert _name("vllm==0.24.0") == "vllm"
    assert _name("python=3.12") == "python"
    assert _name("ncu-report>=1; python_version>'3'") == "ncu-report"
    assert _name("-e .") == "-e ."
    assert _norm("Ncu_Report") == _norm("ncu-report")


def test_every_project_dependency_is_in_environment_yml():
    env = {_norm(e) for e in _environment_entries()}
    missing = sorted(_project_dependencies() - env)
    assert not missing, f"pyproject dependencies missing from environment.yml: {missing}"


def test_environment_yml_has_nothing_extra():
    project = _project_dependencies()
    extra = sorted(e for e in _environment_entries() if e not in ENV_ONLY and _norm(e) not in project)
    assert not extra, f"environment.yml entries that pyproject.toml does not declare: {extra}"


def test_environment_yml_installs_nwor_and_vllm():
    entries = _environment_entries()
    assert "-e ." in entries and "vllm" in entries and "python" in entries
