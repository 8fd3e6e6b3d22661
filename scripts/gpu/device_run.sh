#!/usr/bin/env bash
# One `run` call on the device machine: start scripts/gpu/pipeline.sh in its own session (it
# survives the call while the machine stays warm) unless it is already running, wait up to
# WAIT_S seconds for it to finish or for a phase to fail, then copy what it has to $OUT.
#   bash scripts/gpu/device_run.sh WAIT_S ["PHASES"]
# Call again (within the machine's idle release) to keep waiting; a rerun after a failure
# starts a new pipeline that skips finished phases.
WAIT_S=${1:-540}
PHASES=${2:-setup gputest tp2 tp4}
W=${KD_GPU_WORK:-/tmp/kdgpu}
OUT=${OUT:-$W/out}
mkdir -p "$W" "$OUT"
running() { [ -f "$W/pid" ] && kill -0 "$(cat "$W/pid")" 2>/dev/null; }
if ! running; then
  rm -f "$W/finished"
  rm -rf "$W/failed"
  setsid nohup bash scripts/gpu/pipeline.sh "$PHASES" > "$W/pipeline.out" 2>&1 < /dev/null &
  echo $! > "$W/pid"
  echo "started pipeline pid $(cat "$W/pid"): $PHASES"
fi
failed_count() { ls "$W/failed" 2>/dev/null | wc -l; }
seen=$(failed_count)
end=$((SECONDS + WAIT_S))
while running && [ $SECONDS -lt $end ] && [ "$(failed_count)" = "$seen" ]; do sleep 5; done
# results: at most 8 files come back
cp "$W/progress.log" "$OUT/" 2>/dev/null
cat "$W"/results/*.json* > "$OUT/results.jsonl" 2>/dev/null
(cd "$W" && find logs runs pytest pytest_resume bench4 bench2 bench8b evalbench evalbench8b val_big val_seq2048 val_recompute -type f \( -name "*.log" -o -name "*.out" -o -name "*.json" \
  -o -name "*.md" -o -name "*.done" \) -size -20M 2>/dev/null | tar czf "$OUT/logs.tgz" -T -)
echo "== progress"; tail -n 30 "$W/progress.log" 2>/dev/null
for f in "$W"/failed/*; do
  [ -e "$f" ] || continue
  name=$(basename "$f"); echo "== FAILED $name (rc $(cat "$f")): tail of logs/$name.log"
  tail -n 60 "$W/logs/$name.log"
done
echo "== results"; cat "$W"/results/*.json* 2>/dev/null | head -c 6000
running && echo "== pipeline still running" || echo "== pipeline not running"
