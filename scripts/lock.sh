#!/usr/bin/env bash
# Regenerate requirements/lock-cpu.txt: resolve pyproject.toml's CPU set-up afresh in a throw-away venv
# and pin every package it installed. `make lock` runs this; scripts/setup.sh installs with `-c` on it.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$python" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install -q -e '.[cpu,ray,test]'
# The same removal as scripts/setup.sh: PyPI's CUDA builds of these break a CPU torch (see README).
"$tmp/venv/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec
{
  echo "# The CPU set-up's exact versions: \`make lock\` regenerates this file, scripts/setup.sh installs with -c."
  echo "# Resolved with $("$tmp/venv/bin/python" --version) on $(uname -m); torch's +cpu build comes from"
  echo "# PyTorch's CPU package index (or a local wheel folder), everything else from PyPI."
  "$tmp/venv/bin/python" -m pip freeze --exclude-editable --all
} > requirements/lock-cpu.txt.new
mv requirements/lock-cpu.txt.new requirements/lock-cpu.txt
echo "nwor: requirements/lock-cpu.txt: $(grep -c '==' requirements/lock-cpu.txt) packages pinned"
