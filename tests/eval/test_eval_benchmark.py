"""benchmarks/eval_throughput.py on CPU: all 57 subjects, two batch sizes, the same scores.
Its timings mean nothing here; the GPU numbers are in the issue-8 note."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_eval_benchmark_scores_every_question_at_each_batch_size(always_c_model, tmp_path):
    out = tmp_path / "eval.json"
    proc = subprocess.run(
        [sys.executable, "benchmarks/eval_throughput.py", "--model", str(always_c_model),
         "--n-test", "1", "--fewshot", "1", "--batch-sizes", "1,4", "--device", "cpu",
         "--dtype", "float32", "--work", str(tmp_path / "work"), "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["questions"] == 57
    one, four = result["runs"]["1"], result["runs"]["4"]
    assert one["mmlu_n"] == four["mmlu_n"] == 57  # every generated question was scored
    assert one["mmlu_acc"] == four["mmlu_acc"]  # batching changes speed, not answers
    assert one["questions_per_s"] > 0 and "| 4 |" in proc.stdout
