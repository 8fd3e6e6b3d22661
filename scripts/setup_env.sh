#!/usr/bin/env bash
# Create (idempotently) the project virtualenv at .venv with the pinned CPU stack.
# torch first (the CPU build that pip finds on this disk / the CPU index), then the
# Megatron/ModelOpt packages without their GPU-only requirements, then the rest.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${KD_VENV:-.venv}
STAMP="$VENV/.kdlaunch-env-ok"
if [ -f "$STAMP" ] && cmp -s "$STAMP" requirements/cpu.txt; then
  exit 0
fi
python3 -m venv "$VENV"
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip
python -m pip install -q "torch==${KD_TORCH_VERSION:-2.13.0}" || \
  python -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
python -m pip install -q --no-deps megatron-core==0.16.1 megatron-bridge==0.3.1 \
  nvidia-modelopt==0.47.0 nvidia-resiliency-ext==0.4.1
python -m pip install -q -r requirements/cpu.txt
python -m pip install -q --no-deps -e .
cp requirements/cpu.txt "$STAMP"
echo "environment ready: $VENV"
