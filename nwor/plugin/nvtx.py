"""An NVTX range around the EAGLE drafter's `propose`, so an Nsight Compute pass can tell the drafter's
kernels (its KV-cache writes above all) from the target's. Installed by `nwor.plugin.register` when
`NWOR_NVTX_DRAFTER=1` — only in the ncu KV-write sub-pass (`nwor/ncu_pass.py`) — for stock vLLM, nwor's
plugin and the fork alike; never otherwise.
"""
from __future__ import annotations

import functools
import logging
import os

logger = logging.getLogger(__name__)

ENV_VAR = "NWOR_NVTX_DRAFTER"
RANGE = "nwor_drafter"


def requested() -> bool:
    return os.environ.get(ENV_VAR) == "1"


def install() -> bool:
    """Wrap `vllm.v1.spec_decode.eagle.EagleProposer.propose` in `RANGE`; False (nothing done) without CUDA.

    The wrapper keeps the signature visible (`functools.wraps`), so nwor's hook-signature check still sees
    vLLM's parameters, and nwor's proposer subclass, built afterwards, calls it through `super()`.
    """
    import torch

    if not torch.cuda.is_available():
        logger.info("%s=1 ignored: no CUDA device for NVTX ranges", ENV_VAR)
        return False
    # vllm 0.32.0 / 0.24.0 (and the fork) vllm/v1/spec_decode/eagle.py: the class the V1 runner drafts with.
    from vllm.v1.spec_decode import eagle

    original = eagle.EagleProposer.propose
    if getattr(original, "nwor_nvtx", False):
        return True

    @functools.wraps(original)
    def propose(self, *args, **kwargs):
        torch.cuda.nvtx.range_push(RANGE)
        try:
            return original(self, *args, **kwargs)
        finally:
            torch.cuda.nvtx.range_pop()

    propose.nwor_nvtx = True
    eagle.EagleProposer.propose = propose
    return True
