"""Tests for nwor.ray_suite's pure parts: the Ray resources a run reserves, and the CLI's executor options."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from nwor.cli import _ray_options
from nwor.config import RunSpec
from nwor.errors import ConfigError
from nwor.ray_suite import expected_work, submission_order, task_resources

SPEC = RunSpec(run_id="run1_x", grid="adaptive_grid", profile="smoke", num_requests=3)


def test_cpu_cluster_runs_take_one_cpu_and_no_gpu():
    assert task_resources(SPEC, node_gpus=0) == {"num_cpus": 1, "num_gpus": 0}


@pytest.mark.parametrize("tensor_parallel_size", [1, 2, 4])
def test_gpu_runs_reserve_tensor_parallel_size_gpus(tensor_parallel_size):
    spec = RunSpec(run_id="r", tensor_parallel_size=tensor_parallel_size)
    assert task_resources(spec, node_gpus=4) == {"num_cpus": 1, "num_gpus": tensor_parallel_size}


def test_ncu_runs_reserve_the_whole_node():
    assert task_resources(RunSpec(run_id="r", ncu=True), node_gpus=4) == {"num_cpus": 1, "num_gpus": 4}
    assert task_resources(RunSpec(run_id="r", ncu=True), node_gpus=8)["num_gpus"] == 8


def test_a_run_wider_than_any_node_is_refused_not_left_waiting():
    with pytest.raises(ConfigError, match="tensor_parallel_size 8 needs more GPUs than any node.*\\(4\\)"):
        task_resources(RunSpec(run_id="r", tensor_parallel_size=8), node_gpus=4)


def test_executor_options():
    assert _ray_options("local", None, None) is None
    assert _ray_options("ray", None, 2) == {"executor": "ray", "ray_address": None, "ray_local_cpus": 2}
    assert _ray_options("ray", "auto", None)["ray_address"] == "auto"
    for args, message in [(("dask", None, None), "choose one of local, ray"),
                          (("local", "auto", None), "need --executor ray"),
                          (("local", None, 2), "need --executor ray"),
                          (("ray", "auto", 2), "a cluster at --address has its own"),
                          (("ray", None, 0), "at least 1")]:
        with pytest.raises(ConfigError, match=message):
            _ray_options(*args)


def test_runs_are_submitted_ncu_first_then_longest_first_ties_in_suite_order():
    shape = dict(num_requests=36, max_new_tokens=128, measured_batches=8, warmup_batches=10, warmup_max_batches=30)
    one_arm, same = RunSpec(run_id="a0", **shape), RunSpec(run_id="a0b", **shape)
    two_arms = RunSpec(run_id="a1", arms=({"name": "baseline", "adaptive_draft_length": False},), **shape)
    assert expected_work(two_arms) == 2 * expected_work(one_arm) == 2 * 18 * 36 * 128
    small_ncu = RunSpec(run_id="n", ncu=True, num_requests=1, max_new_tokens=1)
    todo = [SimpleNamespace(spec=s) for s in (one_arm, two_arms, same, small_ncu)]
    assert [st.spec.run_id for st in submission_order(todo)] == ["n", "a1", "a0", "a0b"]
