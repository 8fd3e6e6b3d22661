"""``kd_gen``: a tiny generative (``generate_until``) task shaped like gsm8k, with local data.

A question, ``Answer:``, a short greedy generation, two filters (the first, ``strict-match``,
is the primary one, as in gsm8k) and ``exact_match``. The always-C model generates "C" after
``Answer:``, so its strict-match exact_match is the share of "C" targets (hand count below).
"""

from __future__ import annotations

import json
from pathlib import Path

TASK = "kd_gen"
# Targets of the 6 test questions; the always-C model answers C: exact_match 3/6.
TARGETS = ["C", "A", "C", "D", "C", "B"]
EXPECTED_ALWAYS_C = TARGETS.count("C") / len(TARGETS)

YAML = """\
task: kd_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
num_fewshot: 0
output_type: generate_until
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n", "Question:"]
  max_gen_toks: 3
  do_sample: false
filter_list:
  - name: strict-match
    filter:
      - function: regex
        regex_pattern: "\\\\b([A-D])\\\\b"
      - function: take_first
  - name: flexible-extract
    filter:
      - function: regex
        regex_pattern: "(\\\\S+)"
        group_select: -1
      - function: take_first
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
metadata:
  version: 1.0
"""


def write_gen_task(task_dir: Path, data_dir: Path) -> Path:
    """Write the data (JSONL) into ``data_dir`` and ``kd_gen.yaml`` into ``task_dir``."""
    data_dir.mkdir(parents=True, exist_ok=True)
    data = data_dir / "kd_gen_test.jsonl"
    rows = [{"question": f"Which letter is number {i} ? A B C D", "answer": a}
            for i, a in enumerate(TARGETS)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task_dir.mkdir(parents=True, exist_ok=True)
    (task_dir / "kd_gen.yaml").write_text(YAML.format(data=data.resolve()))
    return task_dir
