"""GPU tier (device machine, 2 GPUs, no Transformer Engine): TP=2, bf16, a >=100M-parameter
student distilled from a larger teacher; tokens/s/GPU and peak memory per rank are printed
(KD_GPU_REPORT lines) and appended to $KD_GPU_REPORT (default KD_RUNS/gpu_report.json); the
AnyModel student too; HF export in one process with the GPUs hidden, as the launcher's export job
runs (the rank-0 job).

    source scripts/gpu/setup_device.sh   # on the device machine
    python -m pytest tests/kd/test_gpu.py -s
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import statistics
from pathlib import Path

import pytest

from kd.paths import latest_iteration
from kd.sections import Export
from kd.specs import ExportSpec
from tests.kd.conftest import REPO, losses_of, make_spec, run_python, run_ranks, tagged_json

pytestmark = pytest.mark.gpu
ITERS, SEQ, MBS, GBS, WORLD = 20, 1024, 2, 8, 2
STEP_MS = re.compile(r"iteration\s+(\d+)/.*?elapsed time per iteration \(ms\): ([0-9.]+)")


@pytest.fixture(scope="module", autouse=True)
def two_gpus():
    import torch

    if torch.cuda.device_count() < WORLD:
        pytest.skip(f"needs {WORLD} GPUs")


@pytest.fixture(scope="module")
def big_teacher(fixture_cache, tiny_tokenizer) -> Path:
    from assets.tiny import build_llama

    return build_llama(
        fixture_cache / "gpu_teacher",
        tiny_tokenizer,
        layers=12,
        hidden=1024,
        ffn=4096,
        heads=16,
        kv_heads=4,
        max_positions=2048,
        seed=0,
    )


@pytest.fixture(scope="module")
def big_student(fixture_cache, tiny_tokenizer) -> Path:
    from assets.tiny import build_llama

    return build_llama(
        fixture_cache / "gpu_student",
        tiny_tokenizer,
        layers=10,
        hidden=1024,
        ffn=2816,
        heads=16,
        kv_heads=4,
        max_positions=2048,
        seed=1,
    )


@pytest.fixture(scope="module")
def big_anymodel(fixture_cache, big_teacher) -> Path:
    from assets.tiny import build_pruned_anymodel
    from kd import compat

    compat.activate(compat.resolve_device("auto"))  # modelopt imports pulp: stubbed when absent
    return build_pruned_anymodel(big_teacher, fixture_cache / "gpu_anymodel")


def parameter_count(hf_dir: Path) -> int:
    from safetensors import safe_open

    total = 0
    for file in hf_dir.rglob("*.safetensors"):
        with safe_open(str(file), framework="pt") as f:
            total += sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    return total


def distill_on_gpus(name, student, teacher, prefix, kd_runs) -> dict:
    from kd.distill import spec_to_json

    spec = make_spec(
        student,
        teacher,
        prefix,
        kd_runs / name,
        tp=WORLD,
        precision="bf16",
        device="cuda",
        seq_length=SEQ,
        micro_batch_size=MBS,
        global_batch_size=GBS,
        train_iters=ITERS,
        lr=1e-4,
        min_lr=1e-5,
        lr_warmup_iters=2,
        save_interval=None,
    )
    outputs = run_ranks(
        ["-m", "kd.distill", "--spec", str(spec_to_json(spec, kd_runs / f"{name}.json"))],
        WORLD,
        kd_runs / f"{name}_logs",
        timeout=540,
    )
    text = "\n".join(outputs)
    steps = {int(m.group(1)): float(m.group(2)) for m in STEP_MS.finditer(text)}
    steady = statistics.median(ms for it, ms in steps.items() if it > 3)
    summary = tagged_json(text, "KD_SUMMARY")
    losses = losses_of(text)
    memory = {
        m["rank"]: m
        for m in (
            json.loads(ln.split(" ", 1)[1])
            for ln in text.splitlines()
            if ln.startswith("KD_PEAK_MEMORY ")
        )
    }
    report = {
        "run": name,
        "student_params": parameter_count(student),
        "teacher_params": parameter_count(teacher),
        "tp": WORLD,
        "seq": SEQ,
        "gbs": GBS,
        "step_ms": steady,
        "step_ms_first": steps.get(1),
        "tokens_per_s_per_gpu": round(GBS * SEQ / (steady / 1e3) / WORLD),
        "peak_memory_gib_rank0": summary["peak_memory_gib"],
        "peak_allocated_gib_per_rank": [memory[r]["allocated_gib"] for r in sorted(memory)],
        "peak_reserved_gib_per_rank": [memory[r]["reserved_gib"] for r in sorted(memory)],
        "gpu": _gpu_name(),
        "first_loss": losses[1],
        "last_loss": losses[ITERS],
    }
    print("KD_GPU_REPORT " + json.dumps(report), flush=True)
    with Path(os.environ.get("KD_GPU_REPORT", kd_runs / "gpu_report.json")).open("a") as f:
        f.write(json.dumps(report) + "\n")
    assert sorted(losses) == list(range(1, ITERS + 1))
    assert sorted(memory) == list(range(WORLD))
    assert all(math.isfinite(v) for v in losses.values())
    assert latest_iteration(Path(spec.output_dir) / "checkpoints") == ITERS
    return {"spec": spec, "report": report}


def _gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0)


def export_and_check(kd_runs, name, run, template, student) -> dict:
    spec = ExportSpec(
        checkpoints=str(Path(run["spec"].output_dir) / "checkpoints"),
        out_dir=str(kd_runs / f"{name}_hf"),
        export=Export(hf_template=str(template)),
        student=str(student),
    )
    spec_file = kd_runs / f"{name}_export.json"
    spec_file.write_text(json.dumps(dataclasses.asdict(spec)))
    # CPU only, like the launcher's export job (no GPU asked); the Megatron reference forward
    # runs eagerly (the checkpoint's fused bias-activation/dropout kernels are torch.compile'd)
    proc = run_python(
        [str(REPO / "tests/kd/_export_check.py"), str(spec_file)],
        kd_runs / f"{name}_export.log",
        env={"CUDA_VISIBLE_DEVICES": "", "TORCHDYNAMO_DISABLE": "1"},
        timeout=540,
    )
    check = tagged_json(proc.stdout, "KD_EXPORT_CHECK")
    assert check["iteration"] == ITERS
    # bf16 weights: the Megatron side computes in bf16, transformers in fp32
    assert check["max_abs_diff"] < 0.05 * max(1.0, check["ref_scale"]), check
    return check


def test_tp2_bf16_dense_student(kd_runs, big_student, big_teacher, token_prefix):
    assert parameter_count(big_student) >= 100_000_000
    run = distill_on_gpus("gpu_dense", big_student, big_teacher, token_prefix, kd_runs)
    assert run["report"]["last_loss"] < run["report"]["first_loss"]
    export_and_check(kd_runs, "gpu_dense", run, big_student, big_student)


def test_tp2_bf16_anymodel_student(kd_runs, big_anymodel, big_teacher, token_prefix):
    run = distill_on_gpus("gpu_anymodel", big_anymodel, big_teacher, token_prefix, kd_runs)
    check = export_and_check(kd_runs, "gpu_anymodel", run, big_teacher, big_anymodel)
    assert check["block_configs"][0]["attention"]["no_op"]
