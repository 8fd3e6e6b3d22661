"""benchmarks/eval_throughput.py on CPU: 4 subjects (one per category), 1 and 2 data-parallel
processes, the same scores. Its timings mean nothing here; the GPU numbers are in
CONTRIBUTING.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_eval_benchmark_scores_every_question_with_one_and_two_processes(always_c_model,
                                                                          tmp_path):
    out = tmp_path / "eval.json"
    proc = subprocess.run(
        [sys.executable, "benchmarks/eval_throughput.py", "--model", str(always_c_model),
         "--n-test", "3", "--few-subjects", "--fewshot", "1", "--batch-sizes", "4",
         "--processes", "1,2",
         "--device", "cpu",
         "--dtype", "float32", "--work", str(tmp_path / "work"), "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["questions"] == 12
    one, two = result["runs"]["p1_bs4"], result["runs"]["p2_bs4"]
    assert one["mmlu_n"] == two["mmlu_n"] == 12  # every generated question was scored
    assert one["mmlu_acc"] == two["mmlu_acc"]  # processes change speed, not answers
    assert two["same_scores_as_1_process"] is True and two["speedup_vs_1_process"] > 0
    assert one["questions_per_s"] > 0 and "| 2 | 4 |" in proc.stdout
