"""nwor.shift and the controller grid: workload parts per measured round, their specs, validation, and the
opt-in controller_grid as expanded under the smoke and GPU profiles."""
from __future__ import annotations

import pytest

from nwor.config import RunSpec
from nwor.design import PLUGIN_FIELDS, arms_of, engine_key
from nwor.errors import ConfigError
from nwor.grid import GRIDS, OPT_IN_GRIDS, expand, expand_all, load_profile
from nwor.shift import load_part_prompts, part_of_round, part_spec, parts

SHIFT = ({"prompt_set": "builtin:code", "temperature": 0.0}, {"prompt_set": "builtin:creative", "temperature": 0.7},
         {"prompt_set": "builtin:code"})


def test_rounds_visit_the_parts_in_order_in_equal_shares():
    spec = RunSpec(prompt_shift=SHIFT, measured_batches=6, temperature=0.2)
    assert [part_of_round(spec, r) for r in range(-1, 6)] == [0, 0, 0, 1, 1, 2, 2]  # -1: warm-up
    assert [p["temperature"] for p in parts(spec)] == [0.0, 0.7, 0.2]  # a part without one keeps the run's
    creative = part_spec(spec, 1)
    assert (creative.prompt_set, creative.temperature, creative.prompt_shift) == ("builtin:creative", 0.7, ())


def test_a_run_without_a_shift_is_one_part():
    spec = RunSpec(measured_batches=3)
    assert parts(spec) == [{"prompt_set": "builtin:chat", "temperature": 0.0}]
    assert {part_of_round(spec, r) for r in range(3)} == {0} and part_spec(spec, 0) is spec


def test_each_part_loads_its_own_prompts():
    code, creative, again = load_part_prompts(RunSpec(prompt_shift=SHIFT, measured_batches=3))
    assert code == again and not set(code) & set(creative)
    assert all(("story" in p or "poem" in p or "Once upon" in p) for p in creative[:20] if "wizard" not in p)


@pytest.mark.parametrize(("shift", "needle"), [
    (({"temperature": 0.1},), "prompt_set"),
    (({"prompt_set": "builtin:code", "top_k": 3},), "unknown key 'top_k'"),
    (({"prompt_set": "builtin:code", "temperature": -1},), "temperature must be >= 0"),
    (SHIFT + SHIFT, "measured_batches >= 6"),
])
def test_bad_shifts_are_refused(shift, needle):
    with pytest.raises(ConfigError, match=needle):
        RunSpec(prompt_shift=shift, measured_batches=3)


def test_a_shift_is_the_runs_not_an_arms():
    with pytest.raises(ConfigError, match="prompt_shift is the run's"):
        RunSpec(arms=({"name": "b", "prompt_shift": SHIFT},))


def test_ewma_alpha_is_a_plugin_setting_so_alpha_arms_share_an_engine():
    assert "ewma_alpha" in PLUGIN_FIELDS
    run, other = arms_of(RunSpec(adaptive_draft_length=True, arms=({"name": "a2", "ewma_alpha": 0.2},)))
    assert engine_key(run, {}) == engine_key(other, {})
    with pytest.raises(ConfigError, match="ewma_alpha"):
        RunSpec(ewma_alpha=0.0)


def test_controller_grid_is_opt_in():
    assert "controller_grid" in OPT_IN_GRIDS and "controller_grid" not in GRIDS
    assert not [s for s in expand_all(["all"], "smoke") if s.grid == "controller_grid"]


def test_controller_grid_under_smoke_and_gpu():
    smoke = {s.run_id: s for s in expand("controller_grid", load_profile("smoke"))}
    shift = smoke["ctl_shift_alpha_r12_t768_d10"]
    assert [p["prompt_set"] for p in shift.prompt_shift] == ["builtin:code", "builtin:creative", "builtin:code"]
    assert shift.measured_batches == 3 and shift.max_new_tokens == 192 and shift.ewma_alpha == 0.1  # the fork's
    assert {a["name"]: a["ewma_alpha"] for a in shift.arms} == {"alpha0.05": 0.05, "alpha0.2": 0.2, "alpha0.4": 0.4}
    assert all("nwor extension" in a["label"] for a in shift.arms)
    levels = sorted(s.synthetic_acceptance_rate for s in smoke.values() if s.synthetic_acceptance_rate is not None)
    assert levels == pytest.approx([0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    gpu = {s.run_id: s for s in expand("controller_grid", load_profile("gpu-smoke-1x"))}
    assert gpu["ctl_shift_alpha_r12_t768_d10"].max_new_tokens + 64 <= gpu["ctl_shift_alpha_r12_t768_d10"].max_model_len
    assert {s.engine_instances for s in gpu.values()} == {1}
    synthetic = gpu["ctl_synthetic_a0.5_r36_t128_d10"]
    assert sorted(a.get("num_speculative_tokens", 10) for a in synthetic.arms) == [2, 5, 10]
