"""Bad input through the real CLI on the SLURM test cluster: exit code 2, the message names the
field and the fix, no run directory is created and no job reaches SLURM."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from .conftest import write_hf_dir

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slurm


CASES = [
    (["train.learning_rate=1"], "unknown key(s) train.learning_rate"),
    (["train.tp=two"], "train.tp='two': expected a positive integer or 'auto'"),
    (["train.tp=4"], "does not divide the world size 2"),
    (["train.global_batch_size=3", "train.micro_batch_size=3"], "not divisible by train.micro_batch_size"),
    (["student.path=/nonexistent/student"], "student.path='/nonexistent/student': no such directory"),
    (["data.sources=[{name: a, prefix: /nonexistent/pfx}]"], ".bin and /nonexistent/pfx.idx missing"),
    (["data.sources=[{name: a, jsonl: x.jsonl, weight: -2}]"], "data.sources[0].weight=-2.0: must be a finite number > 0"),
    (["export.hf_template=null"], "export.hf_template is not set"),
    (["cluster.partition=null"], "cluster.partition is not set for cluster 'ci'"),
    (["cluster.signal_delay_s=5", "cluster.save_time_s=60"], "cannot hold one checkpoint save"),
    (["cluster.env.WANDB_API_KEY=secret"], "looks like a secret"),
]


@pytest.mark.parametrize("overrides, message", CASES, ids=[c[1][:40] for c in CASES])
def test_rejected_before_anything_is_queued(slurm_cluster, tmp_path, overrides, message):
    name = f"bad{uuid.uuid4().hex[:8]}"
    student, teacher = write_hf_dir(tmp_path / "s"), write_hf_dir(tmp_path / "t")
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"text": "w1"}\n')
    run_dir = tmp_path / "run"
    (tmp_path / "tasks").mkdir()
    base = [f"name={name}", f"student.path={student}", f"teacher.path={teacher}",
            f"export.hf_template={teacher}", f"eval.include_path={tmp_path / 'tasks'}",
            "train.tp=1", "train.global_batch_size=2", "eval.tasks=[mmlu]",
            "train.micro_batch_size=1", f"data.sources=[{{name: c, jsonl: {corpus}}}]"]
    res = subprocess.run([sys.executable, "launch/distill.py", "--cluster", "ci", "--config",
                          "tiny_demo", "--run-dir", str(run_dir), *base, *overrides],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2, res.stdout + res.stderr
    assert message in res.stderr and "nothing was queued." in res.stderr, res.stderr
    assert not run_dir.exists()
    jobs = subprocess.run(["squeue", "-h", "-o", "%j"], capture_output=True, text=True).stdout
    assert name not in jobs


def test_student_teacher_vocab_mismatch_cli(slurm_cluster, tmp_path):
    student = write_hf_dir(tmp_path / "s", vocab=300)
    teacher = write_hf_dir(tmp_path / "t")
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"text": "w1"}\n')
    res = subprocess.run([sys.executable, "launch/distill.py", "--cluster", "ci", "--config",
                          "tiny_demo", "--run-dir", str(tmp_path / "run"),
                          f"student.path={student}", f"teacher.path={teacher}",
                          f"export.hf_template={teacher}", "train.tp=1",
                          f"eval.include_path={tmp_path}", "train.global_batch_size=32",
                          f"data.sources=[{{name: c, jsonl: {corpus}}}]"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "student and teacher vocabularies differ" in res.stderr
