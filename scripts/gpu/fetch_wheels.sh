#!/usr/bin/env bash
# Rebuild the wheel set for the GPU device machine (Python 3.12, x86_64, image 'cuda' with
# torch 2.11 + transformers 5 and no Megatron/ModelOpt/lm-eval) in .cache/whl312 (git-ignored).
# It is carried with `run(..., carry=[".cache/whl312"])` and installed there by
# scripts/gpu/setup_device.sh. Needs PyPI access here; about 45 MiB in all.
#
#   scripts/gpu/fetch_wheels.sh [DEST]
#
# Pins follow the CPU venv (requirements/cpu.txt, scripts/setup_env.sh). The transformers-4 set
# (transformers 4.57.6 + tokenizers 0.22 + huggingface_hub 0.36) shadows the image's
# transformers 5: megatron-bridge 0.3.1 requires transformers<5 and the CPU tests run on 4.57.
set -euo pipefail
cd "$(dirname "$0")/../.."
DEST=${1:-.cache/whl312}
PY=${PYTHON:-.venv/bin/python}
mkdir -p "$DEST"
PLATFORMS=(--platform manylinux_2_39_x86_64 --platform manylinux_2_35_x86_64
           --platform manylinux_2_34_x86_64 --platform manylinux_2_31_x86_64
           --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
           --platform manylinux1_x86_64 --platform linux_x86_64)
BINARY=(
  # Megatron / ModelOpt (installed --no-deps: TE, apex, mamba, wandb... are not needed)
  megatron-core==0.16.1 megatron-bridge==0.3.1 nvidia-modelopt==0.47.0
  nvidia-resiliency-ext==0.4.1 omegaconf==2.3.0 hydra-core==1.3.2
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  defusedxml==0.7.1 termcolor==3.3.0 immutabledict==4.3.1 lru-dict==1.4.1 typeguard==4.6.1
  fire==0.7.1 pytz==2026.6 tzdata
  # transformers < 5 (the image has 5.x)
  transformers==4.57.6 tokenizers==0.22.2 huggingface-hub==0.36.2
  # lm-eval and the small deps the image lacks (datasets is small: kept)
  lm-eval==0.4.13 datasets==5.0.1 dill==0.4.1 multiprocess==0.70.19 evaluate==0.4.6
  pytablewriter==1.2.1 dataproperty==1.1.0 mbstrdecoder==1.1.5 pathvalidate==3.3.1
  tabledata==1.3.5 tcolorpy==0.1.7 typepy==1.3.5 chardet==6.0.0.post1 more-itertools==11.2.1
  nltk==3.10.4 peft==0.21.2
  # modelopt imports pulp at module level (kd.data and kd.evaluate import modelopt unstubbed)
  pulp==3.3.2
  # the launcher (submitit LocalExecutor on the device)
  submitit==1.5.4 cloudpickle==3.1.3
)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d "$DEST" "${BINARY[@]}"
# sdist-only, pure Python: build py3-none-any wheels here
SDIST=(antlr4-python3-runtime==4.9.3 rouge-score==0.1.2 sqlitedict==2.1.0 word2number==1.1)
for pkg in "${SDIST[@]}"; do
  name=${pkg%%==*}
  if ! ls "$DEST" | grep -qi "^${name//-/_}-"; then
    "$PY" -m pip wheel -q --no-deps -w "$DEST" "$pkg"
  fi
done
du -sh "$DEST"
ls "$DEST" | wc -l
