#!/usr/bin/env bash
# One-time, idempotent set-up on a fresh Debian/Ubuntu machine: Fashion-MNIST from Debian's package,
# a virtual environment in .venv with PyTorch and hgsearch (editable) plus the test tools.
# TORCH_SPEC overrides the PyTorch requirement (default: the CPU wheel this kind of machine has on disk;
# on a GPU machine use e.g. TORCH_SPEC="torch==2.13.0" with your CUDA index).
set -euo pipefail
cd "$(dirname "$0")"
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq dataset-fashion-mnist
fi

# chromium: the real-browser checks of report.html and optuna-dashboard (tests/test_report_browser.py).
if ! command -v chromium >/dev/null; then
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq chromium
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
# Install torch first and on its own: a bare `torch` requirement with nothing installed would pull a
# CUDA build of several GB; with this version present, pyproject's `torch>=2.4` installs nothing more.
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
# postgres: the driver for --storage postgresql://... (many workers, many hosts; the tests use it too).
.venv/bin/python -m pip install -q -e ".[test,postgres]"
echo "set-up done: .venv/bin/hgsearch --help"
