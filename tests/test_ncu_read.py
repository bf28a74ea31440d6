"""Tests for nwor.ncu_read on real H100 ncu output (tests/fixtures/ncu, see its README)."""
from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import pytest

from nwor import ncu_read
from nwor.errors import ProfilerError

needs_ncu_report = pytest.mark.skipif(importlib.util.find_spec("ncu_report") is None,
                                      reason="ncu_report not installed (pip install ncu-report)")
READ, WRITE, TIME = "dram__bytes_read.sum", "dram__bytes_write.sum", "gpu__time_duration.sum"
PCT = "dram__throughput.avg.pct_of_peak_sustained_elapsed"
RAW_FILES = ("h100_profiler_range_raw.csv", "h100_child_process_raw.csv", "h100_nvtx_raw.csv")
# probe.py's copy kernels (IDs 3 and 4): analytic bytes read and written.
COPY_READ = {3: 268_435_456, 4: 67_108_864}
COPY_WRITE = 134_217_728


def _values(df, metric):
    rows = df[df["Metric"] == metric]
    return dict(zip(rows["ID"], rows["Value"]))


@pytest.mark.parametrize("name", RAW_FILES)
def test_raw_csv_has_five_kernels_and_copy_bytes(name, ncu_fixtures):
    df = ncu_read.read_csv_export(ncu_fixtures / name)
    assert ncu_read.count_results(df) == 5
    reads, writes = _values(df, READ), _values(df, WRITE)
    for kernel_id, expected in COPY_READ.items():
        assert reads[kernel_id] == pytest.approx(expected, rel=1e-3)  # within 0.1 %
        assert 0.75 * COPY_WRITE <= writes[kernel_id] <= 1.01 * COPY_WRITE
    assert set(df.loc[df["ID"] == 3, "Unit"]) >= {"byte", "ns", "%"}


def test_raw_csv_parses_thousands_separators_exactly(ncu_fixtures):
    df = ncu_read.read_csv_export(ncu_fixtures / "h100_profiler_range_raw.csv")
    assert _values(df, READ)[2] == 1_160_820_992
    assert _values(df, TIME)[2] == 1_412_160
    assert _values(df, PCT)[2] == pytest.approx(27.23, abs=1e-9)
    assert set(df["Process"]) == {575}
    assert "Range" not in df.columns


def test_nvtx_csv_carries_range_name(ncu_fixtures):
    df = ncu_read.read_csv_export(ncu_fixtures / "h100_nvtx_raw.csv")
    assert list(df.columns) == ncu_read.COLUMNS + ["Range"]
    assert set(df["Range"]) == {"measure"}


def test_details_auto_units_match_base_units(ncu_fixtures):
    auto = ncu_read.read_csv_export(ncu_fixtures / "h100_profiler_range_details.csv")
    base = ncu_read.read_csv_export(ncu_fixtures / "h100_profiler_range_details_base_units.csv")
    raw = ncu_read.read_csv_export(ncu_fixtures / "h100_profiler_range_raw.csv", metrics=ncu_read.DEFAULT_METRICS)
    assert len(auto) == len(base) == 20
    assert set(auto["Unit"]) == set(base["Unit"]) == {"byte", "ns", "%"}
    key = ["ID", "Metric"]
    merged = auto.merge(base, on=key, suffixes=("_auto", "_base")).merge(raw, on=key)
    assert len(merged) == 20
    assert (merged["Value_base"] == merged["Value"]).all()
    # Auto units print 2 decimals: '8.41 Mbyte' is 8,410,624 byte only with SI (1000) prefixes,
    # so the error must stay under half a unit of the last digit of the scaled value.
    for row in merged.itertuples():
        assert abs(row.Value_auto - row.Value_base) <= 0.005 * _scale(row.Value_base) + 1e-9, row


def _scale(value):
    # The prefix ncu would pick for the value: the largest power of 1000 not above it.
    scale = 1.0
    while value >= scale * 1000:
        scale *= 1000
    return scale


@pytest.mark.parametrize("value, unit, expected", [
    (8.41, "Mbyte", (8_410_000.0, "byte")),
    (1.16, "Gbyte", (1_160_000_000.0, "byte")),
    (2.5, "Kbyte", (2_500.0, "byte")),
    (26.43, "us", (26_430.0, "ns")),
    (1.41, "ms", (1_410_000.0, "ns")),
    (3.0, "usecond", (3_000.0, "ns")),
    (2.0, "s", (2e9, "ns")),
    (1.5, "Tbyte/second", (1.5e12, "byte/second")),
    (9.51, "%", (9.51, "%")),
    (7.0, "register/thread", (7.0, "register/thread")),
])
def test_to_base_unit(value, unit, expected):
    got = ncu_read.to_base_unit(value, unit)
    assert got[1] == expected[1]
    assert got[0] == pytest.approx(expected[0], rel=1e-12)


@pytest.mark.parametrize("name, kernels, read, write, time_ns", [
    ("h100_vllm_eagle_raw.csv", 1020, 115_360_256, 98_816, 4_465_632),
    ("h100_vllm_eagle_cudagraph_raw.csv", 948, 114_692_096, 24_576, 4_165_504),
])
def test_vllm_csv_totals(name, kernels, read, write, time_ns, ncu_fixtures):
    df = ncu_read.read_csv_export(ncu_fixtures / name, metrics=[READ, WRITE, TIME])
    assert ncu_read.count_results(df) == kernels
    assert df["Process"].nunique() == 1  # all kernels from the EngineCore process
    assert ncu_read.totals(df) == {READ: read, WRITE: write, TIME: time_ns}


@needs_ncu_report
def test_kernel_replay_report(ncu_fixtures):
    df = ncu_read.read_report(ncu_fixtures / "h100_probe_kernel_replay.ncu-rep", metrics=[READ, WRITE, TIME])
    assert ncu_read.count_results(df) == 5
    assert ncu_read.totals(df)[READ] == 1_601_817_344
    assert ncu_read.totals(df)[WRITE] == 378_382_336
    assert df["Process"].isna().all()  # ncu_report exposes no process id
    assert df.loc[df["ID"] == 3, "Kernel"].iloc[0].startswith("void at::native::vectorized_elementwise_kernel<")


@needs_ncu_report
def test_app_range_report_is_one_range_action(ncu_fixtures):
    df = ncu_read.read_report(ncu_fixtures / "h100_probe_app_range.ncu-rep", metrics=[READ, WRITE, TIME])
    assert ncu_read.count_results(df) == 1
    assert set(df["Kernel"]) == {"range"}
    assert ncu_read.totals(df) == {READ: 1_736_831_232, WRITE: 565_590_784, TIME: 98_316_704}


@needs_ncu_report
def test_report_missing_metric_is_named(ncu_fixtures):
    with pytest.raises(ProfilerError, match=PCT):
        ncu_read.read_report(ncu_fixtures / "h100_probe_kernel_replay.ncu-rep", metrics=[READ, PCT])


def test_csv_missing_metric_is_named(ncu_fixtures):
    with pytest.raises(ProfilerError, match="l2__nope.sum"):
        ncu_read.read_csv_export(ncu_fixtures / "h100_profiler_range_raw.csv", metrics=[READ, "l2__nope.sum"])


@needs_ncu_report
def test_corrupt_report_is_an_error_not_empty(tmp_path):
    # ncu_report.load_report accepts any file and returns zero ranges; that must not read as "no kernels".
    bad = tmp_path / "bad.ncu-rep"
    bad.write_text("not a report")
    with pytest.raises(ProfilerError, match="no ranges"):
        ncu_read.read_report(bad)


def test_csv_export_rejects_other_text():
    with pytest.raises(ProfilerError, match="not an ncu CSV export"):
        ncu_read.read_csv_export(io.StringIO("a,b\n1,2\n"))


def test_empty_raw_export_has_no_results():
    text = '"ID","Process ID","Kernel Name","dram__bytes_read.sum"\n"","","","byte"\n'
    df = ncu_read.read_csv_export(io.StringIO(text))
    assert ncu_read.count_results(df) == 0


def test_csv_export_argv():
    assert ncu_read.csv_export_argv("/opt/ncu", Path("/o/r.ncu-rep")) == [
        "/opt/ncu", "--import", "/o/r.ncu-rep", "--csv", "--page", "raw", "--print-units", "base"]


def test_percentages_are_time_weighted_not_summed(ncu_fixtures):
    df = ncu_read.read_csv_export(ncu_fixtures / "h100_profiler_range_raw.csv", metrics=[PCT, TIME])
    pct = _values(df, PCT)
    assert ncu_read.totals(df)[PCT] < max(pct.values())
    assert ncu_read.totals(df)[PCT] > min(pct.values())
    assert ncu_read.totals(df[df["Metric"] == PCT])[PCT] is None  # no durations: null, not a guess


def test_top_kernels_ranked_by_dram_write(ncu_fixtures):
    df = ncu_read.read_csv_export(ncu_fixtures / "h100_profiler_range_raw.csv", metrics=[READ, WRITE])
    top = ncu_read.top_kernels(df, n=2)
    assert [entry["kernel"] for entry in top][0] == "nvjet_sm90_tst_320x128_64x3_1x2_h_bz_coopB_NNT"
    assert top[0][WRITE] == 128_157_696 and top[0]["count"] == 1
    assert top[1][WRITE] == 114_721_536
    grouped = ncu_read.top_kernels(df, by=READ)
    matmul_a = next(e for e in grouped if e["kernel"] == "nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_NNT")
    assert matmul_a["count"] == 2 and matmul_a[READ] == 8_410_624 + 103_560_704
    with pytest.raises(ProfilerError, match=TIME):
        ncu_read.top_kernels(df, by=TIME)


@needs_ncu_report
def test_summarize_text(ncu_fixtures):
    text = ncu_read.summarize(ncu_fixtures / "h100_vllm_eagle_raw.csv")
    assert "results: 1020" in text
    assert "115,360,256 byte" in text and "98,816 byte" in text and "4,465,632 ns" in text
    report = ncu_read.summarize(ncu_fixtures / "h100_probe_app_range.ncu-rep")
    assert "results: 1 " in report and "1,736,831,232 byte" in report


def test_one_metric_list_in_the_project():
    """nwor/ncu_metrics.py holds the only list; the run notebook's hand-run default equals it."""
    import json
    import re
    from pathlib import Path

    from nwor.config import DEFAULT_NCU_METRICS
    from nwor.ncu_metrics import NCU_METRICS, with_required

    root = Path(__file__).resolve().parent.parent
    files = [p for d in ("nwor", "scripts", "parameters") for p in (root / d).rglob("*") if p.suffix in (".py", ".yaml")]
    holders = sorted(str(p.relative_to(root)) for p in files
                     if re.search(r"dram__bytes_read\.sum|dram__throughput\.avg", p.read_text()))
    assert holders == ["nwor/ncu_metrics.py"]
    assert DEFAULT_NCU_METRICS is NCU_METRICS and ncu_read.DEFAULT_METRICS is NCU_METRICS
    cells = json.loads((root / "notebooks" / "run_experiment.ipynb").read_text())["cells"]
    source = next("".join(c["source"]) for c in cells if "parameters" in c.get("metadata", {}).get("tags", []))
    default = re.search(r"^ncu_metrics = (\[.*?\])", source, re.M).group(1)
    assert tuple(json.loads(default.replace("'", '"'))) == NCU_METRICS
    # A run's own shorter list still yields the pct counter and the time it is weighted by.
    assert with_required(["dram__bytes_read.sum", "l1tex__t_bytes.sum"]) == (
        "dram__bytes_read.sum", "l1tex__t_bytes.sum", "dram__bytes_write.sum",
        "dram__throughput.avg.pct_of_peak_sustained_elapsed", "gpu__time_duration.sum")
