#!/usr/bin/env bash
# Create (idempotently) the project virtualenv at .venv with the pinned CPU stack.
# torch first (the CPU build that pip finds on this disk / the CPU index), then the
# Megatron/ModelOpt packages without their GPU-only requirements, then the rest.
# Installs with uv when it can be had (a fresh venv in ~30 s instead of ~80 s with pip);
# falls back to pip. Set KD_INSTALLER=pip to force pip.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${KD_VENV:-.venv}
STAMP="$VENV/.kdlaunch-env-ok"
# what the stamp records: the pinned stack and how it was installed (a venv made before
# --compile-bytecode below is rebuilt once)
stamp_text() { cat requirements/cpu.txt; echo "# installed with compiled bytecode"; }
if [ -f "$STAMP" ] && cmp -s "$STAMP" <(stamp_text); then
  exit 0
fi
python3 -m venv "$VENV"
PY="$VENV/bin/python"

# pip's index settings on this machine name local indexes that lack most projects: pip warns
# "Location ... is ignored" once per package. Those lines are noise; every other line is kept.
quiet_pip() {
  "$PY" -m pip "$@" 2> >(grep -v "^WARNING: Location '.*' is ignored" >&2)
}

# find-links directories from pip's settings (torch's CPU wheel may lie there): uv does not
# read pip's configuration, so they are passed on explicitly.
links=()
for dir in ${PIP_FIND_LINKS:-} $("$PY" -m pip config get global.find-links 2>/dev/null || true); do
  [ -d "$dir" ] && [[ " ${links[*]-} " != *" $dir "* ]] && links+=(--find-links "$dir")
done

# --compile-bytecode: uv, unlike pip, leaves the .pyc files out. Where PYTHONDONTWRITEBYTECODE
# is set (this CI machine, many container images) Python then never writes them either, and
# every process (each stage job, each test subprocess) compiles torch, Megatron and lm-eval
# from source again: measured, that doubled the CPU time of the whole test suite.
if [ "${KD_INSTALLER:-uv}" = uv ] && quiet_pip install -q uv >/dev/null 2>&1; then
  install() {
    "$VENV/bin/uv" pip install -q --compile-bytecode --python "$PY" ${links[@]+"${links[@]}"} "$@"
  }
else
  quiet_pip install -q --upgrade pip
  install() { quiet_pip install -q "$@"; }
fi
install "torch==${KD_TORCH_VERSION:-2.13.0}" || \
  install torch --index-url https://download.pytorch.org/whl/cpu
install --no-deps megatron-core==0.16.1 megatron-bridge==0.3.1 \
  nvidia-modelopt==0.47.0 nvidia-resiliency-ext==0.4.1
install -r requirements/cpu.txt
install --no-deps -e .
stamp_text > "$STAMP"
echo "environment ready: $VENV"
