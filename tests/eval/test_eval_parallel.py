"""Data-parallel eval (kd/eval_shards.py): two model processes give the single-process results.

The tiny teacher (not the always-C model: its answers depend on small logit differences) on the
local MMLU and the generative kd_gen task, once in one process and once over two.
"""

from __future__ import annotations

import gzip

import gen_task
import pytest

from kd import eval_shards, evaluate, results
from kd.specs import EvalSpec


def test_two_processes_merge_to_the_single_process_results(tiny_teacher, mmlu_and_gen_tasks,
                                                           tmp_path):
    records, files = {}, {}
    for n in (1, 2):
        out = tmp_path / f"p{n}" / "student_before.json"
        spec = EvalSpec(role="student_before", model=str(tiny_teacher), out_file=str(out),
                        tasks=("mmlu", gen_task.TASK), include_path=str(mmlu_and_gen_tasks),
                        batch_size=4, device="cpu", limit=3)
        records[n], files[n] = evaluate.run(spec, processes=n), out
    one, two = records[1], records[2]
    assert (one["settings"]["processes"], two["settings"]["processes"]) == (1, 2)
    # the same questions with the same scores, aggregates and stderrs, to the last bit
    assert two["groups"] == one["groups"]
    assert [g["n"] for g in one["groups"].values()] == [12, 3, 3, 3, 3, 3]
    assert one["groups"]["kd_gen"]["metric"] == "exact_match,strict-match"
    assert two["fingerprint"] == one["fingerprint"]
    # the merged per-question samples too (same file, byte for byte)
    assert two["samples"] == one["samples"] and one["samples"]["questions"] == 15
    assert (gzip.decompress(results.samples_file(files[2]).read_bytes())
            == gzip.decompress(results.samples_file(files[1]).read_bytes()))


def test_process_count_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("KD_EVAL_PROCESSES", raising=False)
    assert eval_shards.processes_for("cpu") == 1
    assert eval_shards.processes_for("cpu", 3) == 3
    monkeypatch.setenv("KD_EVAL_PROCESSES", "2")
    assert eval_shards.processes_for("cuda") == 2
    assert eval_shards.worker_devices("cuda", 2) == ["cuda:0", "cuda:1"]
    assert eval_shards.worker_devices("cpu", 2) == ["cpu", "cpu"]
    monkeypatch.setenv("KD_EVAL_PROCESSES", "two")
    with pytest.raises(ValueError, match="KD_EVAL_PROCESSES"):
        eval_shards.processes_for("cuda")
