"""benchmarks/kd_throughput.py runs end to end on CPU (2 gloo ranks): the command the GPU
numbers come from, with its layout choice and memory-estimate columns. Timings here mean
nothing (CPU); the GPU numbers are in benchmarks/results/."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.dist
def test_benchmark_runs_the_guide_and_ours(tmp_path, anymodel_student, tiny_teacher,
                                         token_prefix):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "benchmarks/kd_throughput.py", "--student", str(anymodel_student),
         "--teacher", str(tiny_teacher), "--data", token_prefix, "--world", "2", "--tp", "2",
         "--seq", "32", "--gbs", "8", "--iters", "4", "--warmup", "1", "--device", "cpu",
         "--variants", "guide,ours", "--work", str(tmp_path / "work"), "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    ref, ours = result["variants"]["guide"], result["variants"]["ours"]
    assert (ref["attention"], ref["tp"], ref["micro_batch_size"]) == ("local", 2, 1)
    # the layout choice: no model parallelism on CPU, the largest micro-batch of 8 / dp 2
    assert (ours["attention"], ours["tp"], ours["dp"], ours["micro_batch_size"]) == (
        "sdpa", 1, 2, 4)
    # the stage's default: Megatron's distributed optimizer once dp > 1
    assert ours["distributed_optimizer"] is True and ref["distributed_optimizer"] is False
    assert ref["iterations"] == ours["iterations"] == 4
    # same models, same data, same first batch: the same first KD loss whatever the layout
    assert ours["loss_first"] == pytest.approx(ref["loss_first"], rel=1e-3)
    assert "speedup_ours_vs_guide" in result
    assert result["kd_flops_per_token"] > 0 and "| ours | sdpa | 1 | 2 | 4 | off |" in proc.stdout
    # the SP / fusion columns: the guide's TP2 runs without SP (the torch norm refuses it
    # without TE);
    # ours at TP1 has nothing to split; no fusion on CPU (train.fuse: auto)
    assert (ref["sequence_parallel"], ref["fuse"], ref["compile_teacher"]) == (False, [], False)
    assert (ours["sequence_parallel"], ours["fuse"], ours["compile_teacher"]) == (False, [], False)
    assert "| ours | sdpa | 1 | 2 | 4 | off | full | off | none | no |" in proc.stdout


def test_benchmark_variants_as_a_gpu_run_would_configure_them(tmp_path, anymodel_student,
                                                              tiny_teacher, token_prefix):
    """--dry-run --device cuda: each variant's layout, sequence parallelism and fusions, nothing
    run (the GPU call compares them side by side: scripts/gpu/pipeline.sh bench8b,
    KD_8B_VARIANTS). The former names ``reference`` and ``anchor`` (recorded commands) still
    run, as ``guide`` and ``modelopt``, with a deprecation notice."""
    proc = subprocess.run(
        [sys.executable, "benchmarks/kd_throughput.py", "--student", str(anymodel_student),
         "--teacher", str(tiny_teacher), "--data", token_prefix, "--world", "2", "--tp", "2",
         "--seq", "32", "--gbs", "8", "--device", "cuda", "--gpu-memory-gib", "80",
         "--dry-run", "--variants", "reference,anchor,ours_plain,ours,ours_ct",
         "--work", str(tmp_path / "work")],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    plan = {p["variant"]: p for p in (json.loads(ln.split(" ", 1)[1])
                                      for ln in proc.stdout.splitlines()
                                      if ln.startswith("KD_BENCH_PLAN "))}
    assert list(plan) == ["guide", "modelopt", "ours_plain", "ours", "ours_ct"]
    assert "'reference' is now 'guide'" in proc.stderr
    assert "'anchor' is now 'modelopt'" in proc.stderr
    before = ["swiglu", "residual"]  # what Megatron-Bridge's Llama provider switched on before
    assert {n: (p["sequence_parallel"], p["fuse"], p["compile_teacher"])
            for n, p in plan.items()} == {
        "guide": (False, before, False),  # TP2, but SP needs our norm: the guide has none
        "modelopt": (False, before, False),
        "ours_plain": (False, before, False),
        "ours": (False, ["norm", "rope", "swiglu", "residual"], False),  # TP1: no SP to have
        "ours_ct": (False, ["norm", "rope", "swiglu", "residual"], True)}
    assert (plan["guide"]["tp"], plan["modelopt"]["tp"], plan["ours"]["tp"]) == (2, 2, 1)
    assert plan["modelopt"]["distributed_optimizer"] and plan["modelopt"]["overlap_grad_reduce"]
    assert not (tmp_path / "work").exists()  # nothing ran
