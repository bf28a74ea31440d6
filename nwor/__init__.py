"""nwor: run, profile and analyse speculative-decoding experiments on vLLM (notebook-first)."""
from nwor._version import __version__
from nwor.bench import measure
from nwor.config import RunSpec, spec_from_mapping
from nwor.execute import run_paths
from nwor.ncu_pass import attach as attach_ncu
from nwor.ncu_pass import run_ncu_pass
from nwor.results import write_result

__all__ = ["RunSpec", "__version__", "attach_ncu", "measure", "run_ncu_pass", "run_paths", "spec_from_mapping", "write_result"]
