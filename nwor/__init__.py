"""nwor: run, profile and analyse speculative-decoding experiments on vLLM (notebook-first)."""
__version__ = "0.1.0"

from nwor.bench import measure  # noqa: E402
from nwor.config import RunSpec, spec_from_mapping  # noqa: E402
from nwor.execute import run_paths  # noqa: E402
from nwor.ncu_pass import attach as attach_ncu  # noqa: E402
from nwor.ncu_pass import run_ncu_pass  # noqa: E402
from nwor.results import write_result  # noqa: E402

__all__ = ["RunSpec", "attach_ncu", "measure", "run_ncu_pass", "run_paths", "spec_from_mapping", "write_result"]
