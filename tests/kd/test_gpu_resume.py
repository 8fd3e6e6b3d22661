"""GPU tier, one GPU: the distributed optimizer resumes on CUDA without TE/Apex, with
``checkpoint.async_save`` (which needs CUDA, so the CPU layout matrix cannot cover it).

A bf16 run of 20 iterations saves at 10 and 20 (async), validating at 10 and 20; a second run
starts from a copy of the iteration-10 save and must continue the uninterrupted curve. The
comparison is within ``REL``: cuDNN/flash attention's backward accumulates with atomics, so bf16
runs are not bitwise reproducible on GPU even without a resume (the CPU matrix,
tests/kd/test_layout_matrix.py, checks bitwise). The numbers are printed as a KD_GPU_RESUME line.

    source scripts/gpu/setup_device.sh   # on the device machine
    python -m pytest tests/kd/test_gpu_resume.py -s
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from kd import checkpoints as ckpts
from tests.kd.conftest import losses_of, make_spec, run_ranks

pytestmark = pytest.mark.gpu
ITERS, AT, REL = 20, 10, 2e-2


@pytest.fixture(scope="module", autouse=True)
def one_gpu():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a GPU")


def test_distributed_optimizer_with_async_save_resumes_on_gpu(fixture_cache, tiny_tokenizer,
                                                               token_prefix, kd_runs):
    from assets.tiny import build_llama
    from kd.distill import spec_to_json

    teacher = build_llama(fixture_cache / "gpu_resume_teacher", tiny_tokenizer, layers=6,
                          hidden=1024, ffn=4096, heads=16, kv_heads=4, max_positions=2048, seed=0)
    student = build_llama(fixture_cache / "gpu_resume_student", tiny_tokenizer, layers=4,
                          hidden=1024, ffn=2816, heads=16, kv_heads=4, max_positions=2048, seed=1)

    def spec(out: Path):
        return make_spec(student, teacher, token_prefix, out, precision="bf16", device="cuda",
                         seq_length=512, micro_batch_size=2, global_batch_size=8,
                         train_iters=ITERS, lr=1e-4, min_lr=1e-5, lr_warmup_iters=2,
                         save_interval=AT, eval_interval=AT, eval_iters=2,
                         distributed_optimizer=True, async_save=True)

    def run(name: str, out: Path) -> str:
        return "\n".join(run_ranks(
            ["-m", "kd.distill", "--spec", str(spec_to_json(spec(out), kd_runs / f"{name}.json"))],
            1, kd_runs / f"{name}_logs", timeout=540))

    full = run("gpu_full", kd_runs / "gpu_full")
    src = kd_runs / "gpu_full" / "checkpoints"
    assert ckpts.complete_iterations(src) == [AT, ITERS]  # async saves finalized
    dst = kd_runs / "gpu_resumed" / "checkpoints"
    dst.mkdir(parents=True)
    shutil.copytree(src / f"iter_{AT:07d}", dst / f"iter_{AT:07d}")
    (dst / ckpts.TRACKER).write_text(str(AT))
    resumed = run("gpu_resumed", kd_runs / "gpu_resumed")

    assert f"resuming from iteration {AT} to {ITERS}" in resumed
    assert "distributed optimizer True" in resumed
    before, after = losses_of(full), losses_of(resumed)
    assert sorted(after) == list(range(AT + 1, ITERS + 1)), after
    diffs = {it: abs(after[it] - before[it]) / abs(before[it]) for it in after}
    print("KD_GPU_RESUME " + json.dumps({
        "max_rel_diff": max(diffs.values()), "iterations": sorted(after),
        "losses_uninterrupted": [before[i] for i in sorted(after)],
        "losses_resumed": [after[i] for i in sorted(after)]}), flush=True)
    for it, d in diffs.items():
        assert d < REL, (it, before[it], after[it])
    assert ckpts.saved_layout(dst).distributed_optimizer
