"""nwor.machines: a run's machine from its env, which pairs of runs compare, the per-machine counts the report shows."""
from __future__ import annotations

import pandas as pd

from nwor import machines


def test_machine_name_prefers_the_label_then_the_id():
    assert machines.machine_name({"machine_label": "h100-session7", "machine_id": "0123456789ab"}) == "h100-session7"
    assert machines.machine_name({"machine_label": None, "machine_id": "0123456789ab"}) == "0123456789ab"
    assert machines.machine_name({"gpus": []}) == machines.UNKNOWN  # written before machines were recorded


def test_only_two_known_different_machines_are_not_comparable():
    assert machines.different_machines("a", "b") == "runs from different machines: a vs b"
    for same_or_unknown in (("a", "a"), ("a", machines.UNKNOWN), (machines.UNKNOWN, "b"), (None, "b"),
                            (float("nan"), "a"), (machines.UNKNOWN, machines.UNKNOWN)):
        assert machines.different_machines(*same_or_unknown) is None, same_or_unknown


def test_shared_machine_is_known_only_when_both_runs_name_it():
    assert machines.shared_machine("a", "a") == "a"
    assert machines.shared_machine("a", machines.UNKNOWN) == machines.UNKNOWN
    assert machines.shared_machine(None, None) == machines.UNKNOWN


def test_counts_and_warning_only_for_more_than_one_machine():
    one = pd.DataFrame({"run_id": ["r1", "r2", "r3"], "machine": ["a", "a", None]})  # r3: missing, no result
    assert machines.machine_counts(one).to_dict("records") == [{"machine": "a", "runs": 2}]
    assert machines.mixed_machines_warning(one) is None
    mixed = pd.DataFrame({"run_id": ["r1", "r2", "r3", "r4"], "machine": ["b", machines.UNKNOWN, "b", "a"]})
    assert machines.machine_counts(mixed).to_dict("records") == [
        {"machine": "b", "runs": 2}, {"machine": "a", "runs": 1}, {"machine": machines.UNKNOWN, "runs": 1}]
    assert machines.mixed_machines_warning(mixed).startswith("**Runs from 3 machines.**")
    assert machines.machine_of(mixed) == {"r1": "b", "r2": machines.UNKNOWN, "r3": "b", "r4": "a"}
    assert machines.machine_of(pd.DataFrame({"run_id": ["r1"]})) == {}


def test_only_machine_of_comparison_rows():
    rows = pd.DataFrame({"machine": ["a", None, "a"]})  # None: a row that was not compared
    assert machines.only_machine(rows) == ("a", 1)
    assert machines.only_machine(pd.DataFrame({"machine": ["a", "b"]})) == (None, 2)
    assert machines.only_machine(pd.DataFrame({"x": [1]})) == (None, 0)
