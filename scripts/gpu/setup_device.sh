#!/usr/bin/env bash
# Source on the GPU device machine, in the repo root:  source scripts/gpu/setup_device.sh
# Makes a venv (--system-site-packages) at $KD_GPU_VENV (default /tmp/kd-venv) that sees the
# image's torch 2.11 / triton / numpy and, in front of them, the wheels of .cache/whl312
# (scripts/gpu/fetch_wheels.sh; carry them with run(carry=[".cache/whl312"])), installed with
# pip --no-index --no-deps. Idempotent. Exports PATH (python = the venv's) and the settings every
# process there needs (NVLink multicast off, offline Hub).
_kd_setup() {
  local repo whl venv base_site site stamp
  repo=$(pwd)
  whl=${KD_WHEELS:-$repo/.cache/whl312}
  venv=${KD_GPU_VENV:-/tmp/kd-venv}
  stamp=$venv/.kd-wheels
  if [ ! -f "$stamp" ] || ! cmp -s "$stamp" <(ls "$whl"); then
    [ -d "$whl" ] || { echo "setup_device: no wheels in $whl (carry .cache/whl312)" >&2; return 1; }
    # the image's python3 is itself a venv (/opt/torch/.venv): a venv made from it sees only the
    # base interpreter's site-packages, so the image's site dir is added by a .pth file.
    base_site=$(python3 -c 'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))')
    rm -rf "$venv"
    python3 -m venv --without-pip --system-site-packages "$venv" || return 1
    site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" \
      "$whl"/*.whl || return 1
    # after the venv's own dirs; addsitedir also runs the image's own .pth files
    printf 'import site; site.addsitedir(%s)\n%s\n' "'$base_site'" "$repo" > "$site/zz_kd_image.pth"
    ls "$whl" > "$stamp"
  fi
  export PATH=$venv/bin:$PATH
  export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
  export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
  export PYTHONUNBUFFERED=1 CUDA_DEVICE_MAX_CONNECTIONS=1
  python -c 'from kd import compat; compat.activate("auto")
import sys, torch, transformers, megatron.bridge, modelopt.torch.puzzletron.plugins, lm_eval
print("setup_device:", sys.executable, "torch", torch.__version__, "transformers",
      transformers.__version__, "gpus", torch.cuda.device_count())'
}
_kd_setup
