#!/usr/bin/env bash
# The GPU work on one device machine, phase by phase: the TP=2 GPU test and launcher runs
# ("setup gputest tp2 tp4"), the 1B-pair benchmarks ("setup assets data bench4 bench2
# evalbench": one job at a time, so no timing shares the machine with another run), held-out
# memory layouts ("val"), the 8B-shaped pair ("assets8b lossbench bench8b"); started in the
# background by scripts/gpu/device_run.sh (which outlives one `run` call). Idempotent: a phase
# with a done marker is skipped, so a rerun continues. State in $KD_GPU_WORK (/tmp/kdgpu):
# progress.log, logs/<phase>.log, results/*.json, runs/<run>/ (launcher run dirs).
#   bash scripts/gpu/pipeline.sh "setup gputest tp2 tp4"
set -u
PHASES=${1:-setup gputest tp2 tp4}
W=${KD_GPU_WORK:-/tmp/kdgpu}
mkdir -p "$W/logs" "$W/results" "$W/done" "$W/failed" "$W/runs"
say() { echo "[$(date +%T) +$((SECONDS))s] $*" | tee -a "$W/progress.log"; }
want() { [[ " $PHASES " == *" $1 "* ]] && [ ! -f "$W/done/$1" ]; }
phase() {  # phase NAME TIMEOUT_S CMD...: run, log, mark done or failed
  local name=$1 limit=$2 rc t0=$SECONDS
  shift 2
  rm -f "$W/failed/$name"
  say "$name: start"
  timeout -k 20 "$limit" "$@" > "$W/logs/$name.log" 2>&1
  rc=$?
  if [ $rc = 0 ]; then touch "$W/done/$name"; else echo $rc > "$W/failed/$name"; fi
  say "$name: rc=$rc in $((SECONDS - t0))s"
  return $rc
}
launch() {  # launch RUN_NAME OVERRIDES...: the project's launcher, then the run's numbers
  local run=$1
  shift
  python launch/distill.py --cluster local_gpu --config gpu_1b_tp --run-dir "$W/runs/$run" "$@" \
    && python scripts/gpu/kd_log_stats.py "$W/runs/$run" --json "$W/results/$run.json"
}
export -f launch
export W

say "pipeline start: $PHASES (pid $$)"
# shellcheck source=/dev/null
if [ "${KD_SKIP_SETUP:-0}" != 1 ]; then  # 1: use the python on PATH (dry runs of this script)
  source scripts/gpu/setup_device.sh >> "$W/logs/setup.log" 2>&1 || { say "setup FAILED"; exit 1; }
fi
if want setup; then
  { nvidia-smi; nvidia-smi topo -m; python -m pip list 2>/dev/null | grep -iE \
    "^(torch|transformers|tokenizers|huggingface.hub|megatron|nvidia-modelopt|lm.eval|datasets|submitit|triton|peft|accelerate) "
    python -c "from kd import compat; print('compat', compat.activate('cuda'))"; } \
    >> "$W/logs/setup.log" 2>&1 && touch "$W/done/setup"
  say "setup: $(tail -n 1 "$W/logs/setup.log")"
fi

# GPUs 2,3: the GPU test (tests/kd/test_gpu.py, TP=2). GPUs 0,1 meanwhile: a launcher run at
# TP=2 (submitit gives it GPUs 0,1). Then all 4 GPUs: a launcher run at TP=4.
{
  want gputest && CUDA_VISIBLE_DEVICES=2,3 KD_GPU_REPORT=$W/results/gpu_test.jsonl \
    phase gputest 600 python -m pytest tests/kd/test_gpu.py -s -q -p no:cacheprovider \
    --basetemp="$W/pytest"
} &
if want tp2 || want tp4; then
  [ -f "$W/done/assets" ] || phase assets 400 python scripts/gpu/build_assets.py .cache/gpu_1b
fi
want tp2 && phase tp2 900 bash -c 'launch "$@"' - tp2 cluster.gpus_per_node=2 train.tp=2
wait
want tp4 && phase tp4 900 bash -c 'launch "$@"' - tp4

# The 1B-pair benchmarks, nothing else running: assets, tokenized data, then the KD benchmark on 4 and on 2
# GPUs (seq 4096, ~1B teacher, ~0.5B student), then MMLU eval throughput on one GPU.
BENCH_DATA=$W/data/synth_text_document
tokenize() {
  python - "$W/data" <<'PY'
import sys
from kd import compat
compat.activate("cpu")
from kd import data
from kd.sections import Data
from kd.specs import DataSource, DataSpec
print(data.run(DataSpec(data=Data(sources=(DataSource(name="synth", jsonl=".cache/gpu_1b/corpus.jsonl"),),
                                  tokenizer=".cache/gpu_1b/tokenizer", workers=8, log_interval=1000),
                        out_dir=sys.argv[1])))
PY
}
kdbench() {  # kdbench WORLD [VARIANTS]: GPUs 0..WORLD-1, the guide's TP = WORLD
  python benchmarks/kd_throughput.py --student .cache/gpu_1b/student_small \
    --teacher .cache/gpu_1b/teacher --data "$BENCH_DATA" --world "$1" --tp "$1" --seq 4096 \
    --gbs 16 --iters "${KD_BENCH_ITERS:-10}" --warmup 3 --variants "${2:-guide,sdpa,auto_tp,ours,ours_overlap}" \
    --work "$W/bench$1" --out "$W/results/kd_throughput_$1gpu.json"
}
kdval() {  # kdval NAME STUDENT SEQ GBS VARIANTS [ARGS...]: layouts measured after the memory fit
  local name=$1 student=$2 seq=$3 gbs=$4 variants=$5
  shift 5
  python benchmarks/kd_throughput.py --student ".cache/gpu_1b/$student" \
    --teacher .cache/gpu_1b/teacher --data "$BENCH_DATA" --world 4 --tp 4 --seq "$seq" \
    --gbs "$gbs" --iters 8 --warmup 3 --variants "$variants" --work "$W/$name" \
    --out "$W/results/kd_$name.json" "$@"
}
export -f tokenize kdbench kdval
export BENCH_DATA
if want assets || want data || want bench4 || want bench2 || want evalbench || want val; then
  [ -f "$W/done/assets" ] || phase assets 500 python scripts/gpu/build_assets.py .cache/gpu_1b
fi
want data && phase data 300 bash -c tokenize
want bench4 && CUDA_VISIBLE_DEVICES=0,1,2,3 phase bench4 900 bash -c 'kdbench 4'
want bench2 && CUDA_VISIBLE_DEVICES=0,1 phase bench2 700 bash -c 'kdbench 2 guide,sdpa,ours'
# held-out checks of the memory estimate (and the gains of micro-batch 8 and recompute's cost)
want val && CUDA_VISIBLE_DEVICES=0,1,2,3 phase val 560 bash -c '
  kdval val_big student 4096 16 ours &&
  kdval val_seq2048 student_small 2048 64 auto_tp,ours &&
  kdval val_recompute student_small 4096 16 ours --recompute full'
want evalbench && CUDA_VISIBLE_DEVICES=0 phase evalbench 600 python benchmarks/eval_throughput.py \
  --model .cache/gpu_1b/teacher --batch-sizes 1,auto --n-test 10 --work "$W/evalbench" \
  --out "$W/results/eval_throughput.json"

# The 8B-shaped pair (scripts/gpu/build_8b.py; teacher depth KD_8B_LAYERS, 32 = the real 8B,
# 12 = what fits one 80 GB card with unsharded Adam), the KD loss alone, then side by side on
# all visible GPUs, 80 GB budget each: the guide's settings (guide), Model-Optimizer's
# distill.py settings (modelopt), ours without SP and the norm/RoPE fusions (ours_plain), ours
# now (SP at TP > 1, every fusion) and ours + the compiled teacher (ours_ct).
B8=${KD_8B_ROOT:-$W/gpu_8b}
NGPU=$(python -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 1)
bench8b() {
  python benchmarks/kd_throughput.py --student "$B8/student" --teacher "$B8/teacher" \
    --data "$B8/data_text_document" --world "$NGPU" --tp "$NGPU" --seq 4096 \
    --gbs "${KD_8B_GBS:-16}" --iters "${KD_8B_ITERS:-23}" --warmup 3 --repeats "${KD_8B_REPEATS:-2}" \
    --gpu-memory-gib 79.6 --variants "${KD_8B_VARIANTS:-guide,modelopt,ours_plain,ours,ours_ct}" \
    --timeout 900 --work "$W/bench8b" --out "$W/results/kd_8b_${NGPU}gpu.json"
}
export -f bench8b
export B8 NGPU
# one GPU: the distributed optimizer (with async save) resumes on CUDA; the fusions' inductor
# kernels match the unfused modules
want gpuresume && phase gpuresume 600 python -m pytest tests/kd/test_gpu_resume.py \
  tests/kd/test_fused_gpu.py -s -q \
  -p no:cacheprovider --basetemp="$W/pytest_resume"
want assets8b && phase assets8b 600 python scripts/gpu/build_8b.py "$B8" \
  --layers "${KD_8B_LAYERS:-32}"
want lossbench && phase lossbench 300 python benchmarks/kd_loss_bench.py \
  --out "$W/results/kd_loss_bench.json"
want bench8b && phase bench8b 3000 bash -c bench8b
# eval of the 8B-shaped teacher on 1 GPU and on all of them (kd/eval_shards.py, one process per
# GPU, model load included), same questions, scores checked identical by the benchmark
want evalbench8b && phase evalbench8b 900 python benchmarks/eval_throughput.py \
  --model "$B8/teacher" --batch-sizes "${KD_EVAL_BS:-32}" --processes "1,$NGPU" \
  --n-test "${KD_EVAL_NTEST:-20}" --work "$W/evalbench8b" --out "$W/results/eval_8b_${NGPU}gpu.json"
say "pipeline finished"
touch "$W/finished"
