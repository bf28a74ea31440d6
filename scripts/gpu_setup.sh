#!/usr/bin/env bash
# On the offline GPU machine (Python 3.12, torch 2.11, ncu; no vLLM, no internet): install vLLM 0.24.0 from
# the staged wheel parts and nwor's carried wheels (requirements/gpu-smoke.txt) into SITE, register nwor's
# console script and vLLM plugin entry point there, and print what to export. Idempotent per machine.
# Usage: source scripts/gpu_setup.sh PARTS_DIR TOOLS_DIR NWOR_WHEELS_DIR [SITE]
#   TOOLS_DIR holds install-wheels.sh, env.sh and wheels.tar.sha256 from ../shared/gpu and download-wheels.sh.
set -euo pipefail
parts=$1 tools=$2 wheels=$3 site=${4:-/tmp/site}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ ! -f "$site/.nwor-ready" ]; then
  bash "$tools/install-wheels.sh" "$parts" "$tools/wheels.tar.sha256" "$site"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$wheels"/*.whl
  # nwor's metadata (console script, vllm.general_plugins entry point) without a copy of the package:
  # `import nwor` must resolve to the checkout, whose notebooks/ and parameters/ it uses.
  dist=$(mktemp -d)
  python3 -m pip install -q --no-index --no-deps --no-build-isolation --target "$dist" "$repo"
  cp -r "$dist"/nwor-*.dist-info "$site"/
  mkdir -p "$site/bin" && cp "$dist"/bin/nwor "$site/bin/nwor"
  rm -rf "$dist"
  touch "$site/.nwor-ready"
fi
export PYTHONPATH="$repo:$site" PATH="$site/bin:$PATH"
source "$tools/env.sh"
python3 -c "import vllm, nwor, papermill, ncu_report; print('ready: vllm', vllm.__version__, 'nwor', nwor.__version__)"
