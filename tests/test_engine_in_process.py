"""In-process engines on the real CPU vLLM engine: what a run kernel skips, and runs mixing stock and plugin engines.

A run kernel is killed as soon as its notebook ends (nwor.execute): its last in-process engine is left running
and Ray is never imported. The smoke plugin-overhead run starts its stock engine, then its plugin-loaded one,
in the kernel's process: the plugin must be active in the second and absent from the first.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from nwor.execute import run_notebook
from nwor.grid import expand_all

pytestmark = pytest.mark.engine

OVERHEAD = "overhead_run1_r36_t128_temp0.0_d10_thresh0.5"
# One measure() in a process that ends after its run (as a kernel), then one in a process that does not.
DRIVER = textwrap.dedent("""
    import json, os, sys
    from nwor import engine, instances  # noqa: F401  (instances binds the real release_engine first)
    from nwor.bench import measure
    from nwor.config import RunSpec

    released = []
    real_release = engine.release_engine
    engine.release_engine = lambda llm: (released.append(1), real_release(llm))  # release_kept's releases
    spec = RunSpec(profile="smoke", num_requests=2, max_new_tokens=8, measured_batches=1, warmup_batches=1,
                   warmup_max_batches=1, enforce_eager=True, engine_in_process=True)
    os.environ[engine.PROCESS_ENDS_ENV] = "1"
    first = measure(spec)
    state = {"first_ok": first["status"], "kept_after_first": len(engine._KEPT),
             "ray_blocked": "ray" in sys.modules and sys.modules["ray"] is None}
    del os.environ[engine.PROCESS_ENDS_ENV]
    second = measure(spec)
    state.update(second_ok=second["status"], kept_after_second=len(engine._KEPT), released_kept=len(released))
    print("STATE " + json.dumps(state))
""")


@pytest.fixture(scope="module")
def driven():
    done = subprocess.run([sys.executable, "-c", DRIVER], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    line = next(x for x in reversed(done.stdout.splitlines()) if x.startswith("STATE "))
    return json.loads(line[len("STATE "):])


def test_a_process_that_ends_after_its_run_keeps_its_last_engine_and_skips_ray(driven):
    assert driven["first_ok"] == "ok" and driven["kept_after_first"] == 1
    assert driven["ray_blocked"]


def test_the_next_start_releases_a_kept_engine_and_other_processes_release_their_own(driven):
    assert driven["second_ok"] == "ok"
    assert driven["released_kept"] == 1  # the first measure's engine, before the second one started
    assert driven["kept_after_second"] == 0


@pytest.fixture(scope="module")
def overhead(tmp_path_factory):
    (spec,) = [s for s in expand_all(["calibration_grid"], "smoke") if s.run_id == OVERHEAD]
    return run_notebook(spec, root=tmp_path_factory.mktemp("outputs"))


def test_stock_then_plugin_engines_share_the_kernel_and_each_is_what_its_arm_says(overhead):
    design = overhead["design"]
    assert design["engine_process"] == "in-process" and design["engine_process_note"] is None
    assert [o["arms"] for o in design["order"]] == [["stock"], ["run", "plugin_off", "gate"]]
    stock, plugin = overhead["replicates"]
    assert stock["plugin_loaded"] is False and stock["counters"]["stock"]["plugin"] is None
    assert plugin["plugin_loaded"] is True
    # Threshold 0.5 stops drafts; 0 never does; the stock engine has no plugin to ask.
    assert plugin["counters"]["run"]["plugin"]["tokens_stopped"] > 0
    assert plugin["counters"]["plugin_off"]["plugin"]["tokens_stopped"] == 0
    assert overhead["early_exit"]["status"] == "ok" and overhead["features"]["effective"]["source"] == "nwor-plugin"
    for replicate in (stock, plugin):
        assert all(c["num_drafts"] > 0 for c in replicate["counters"].values())
