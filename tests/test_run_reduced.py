"""Tests for scripts/run_reduced.py's spec cutting (no engine): the cut is recorded in the spec, and bad input
ends with one line and exit 2 before anything runs."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from nwor.errors import NworError

SCRIPT = Path(__file__).parent.parent / "scripts" / "run_reduced.py"
spec = importlib.util.spec_from_file_location("run_reduced", SCRIPT)
run_reduced = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_reduced)

CONTROLS = ("controls_grid", "controls_run3_r36_t128_temp0.0")


def test_cut_keeps_named_arms_and_sets_fields():
    cut = run_reduced.reduced_spec(*CONTROLS, "gpu-smoke", ["nospec", "k5"],
                                   ["engine_instances=2", "measured_batches=3"])
    assert [arm["name"] for arm in cut.arms] == ["nospec", "k5"]
    assert (cut.engine_instances, cut.measured_batches) == (2, 3)
    assert cut.run_id == CONTROLS[1]  # the grid's run id stays


def test_no_arms_option_keeps_every_arm():
    whole = run_reduced.reduced_spec(*CONTROLS, "gpu-smoke", None, [])
    assert len(whole.arms) == 9


@pytest.mark.parametrize("arms, sets, message", [
    (["k99"], [], "has no arm k99"),
    (None, ["nope=1"], "expected FIELD=VALUE"),
    (None, ["engine_instances"], "expected FIELD=VALUE"),
    (None, ["engine_instances=0"], "engine_instances"),
])
def test_bad_input_is_refused(arms, sets, message):
    with pytest.raises(NworError, match=message):
        run_reduced.reduced_spec(*CONTROLS, "gpu-smoke", arms, sets)


def test_unknown_run_exits_2_with_one_line(capsys):
    assert run_reduced.main(["controls_grid", "nope", "--profile", "gpu-smoke"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no run 'nope'" in err[0]
