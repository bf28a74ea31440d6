"""The one Nsight Compute metric list of the project: every ncu pass collects these (and a run may add more).

DRAM traffic and time of the measured region, all collected in one replay pass. `gpu__time_duration.sum` is
what `ncu_read.totals` weights percentages by: without it `dram__throughput...pct...` would be null.
`l1tex__t_bytes.sum` (in the original harness's list) is not here: nothing reads it, and on the H100 it cost
the gpu-smoke profile a second replay pass of the whole workload.
"""
from __future__ import annotations

DRAM_WRITE = "dram__bytes_write.sum"
DRAM_READ = "dram__bytes_read.sum"
DRAM_PCT = "dram__throughput.avg.pct_of_peak_sustained_elapsed"
GPU_TIME = "gpu__time_duration.sum"
NCU_METRICS = (DRAM_WRITE, DRAM_READ, DRAM_PCT, GPU_TIME)
# The KV-cache write sub-pass (nwor/ncu_pass.py) adds L2 write sectors: a KV writer's stores reach L2
# within the kernel, while their DRAM write-back may land after it (or never, for a cache that fits L2).
LTS_WRITE_SECTORS = "lts__t_sectors_op_write.sum"
SECTOR_BYTES = 32
KV_WRITE_METRICS = NCU_METRICS + (LTS_WRITE_SECTORS,)
# What every ncu result must carry whatever a run's own list says (added to it by the pass).
REQUIRED = (DRAM_WRITE, DRAM_PCT, GPU_TIME)


def with_required(metrics) -> tuple[str, ...]:
    """A run's metric list with the required ones appended when missing, order kept."""
    out = list(dict.fromkeys(metrics))
    return tuple(out + [m for m in REQUIRED if m not in out])
