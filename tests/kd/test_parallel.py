"""Tensor parallelism across 2 gloo processes gives the TP=1 losses."""

from __future__ import annotations

from pathlib import Path

import pytest

from kd.paths import latest_iteration
from tests.kd.conftest import REPO, losses_of, make_spec, run_python, run_ranks, tagged_json


@pytest.mark.dist
def test_tp2_matches_tp1(dense_tp1_run, dense_tp2_run):
    tp1, tp2 = losses_of(dense_tp1_run["out"]), losses_of(dense_tp2_run["out"])
    assert sorted(tp2) == sorted(tp1) == list(range(1, 9))
    for it in tp1:
        assert tp2[it] == pytest.approx(tp1[it], rel=1e-4, abs=1e-6), (it, tp1[it], tp2[it])
    summary = tagged_json(dense_tp2_run["out"], "KD_SUMMARY")
    assert summary["world_size"] == 2 and summary["tp"] == 2
    assert latest_iteration(Path(dense_tp2_run["spec"].output_dir) / "checkpoints") == 8


def test_full_recompute_gives_the_same_losses(kd_runs, dense_tp1_run, dense_student,
                                              tiny_teacher, token_prefix):
    """train.recompute=full (chosen by launch/layout.py when nothing fits without it) rebuilds
    each student layer in backward: the same math, so the same losses as dense_tp1_run."""
    from kd.distill import spec_to_json

    spec = make_spec(dense_student, tiny_teacher, token_prefix, kd_runs / "recompute",
                     train_iters=8, save_interval=None, recompute="full")
    proc = run_python(["-m", "kd.distill", "--spec", str(spec_to_json(spec, kd_runs / "rc.json"))],
                      kd_runs / "recompute.log")
    plain, recomputed = losses_of(dense_tp1_run["out"]), losses_of(proc.stdout)
    assert sorted(recomputed) == list(range(1, 9))
    for it in plain:
        assert recomputed[it] == pytest.approx(plain[it], rel=1e-5, abs=1e-7), it
    assert "recompute full" in proc.stdout  # read back from the provider Megatron builds from
    assert tagged_json(proc.stdout, "KD_SUMMARY")["recompute"] == "full"


@pytest.mark.dist
def test_distributed_optimizer_shards_over_dp2_and_trains(kd_runs, dense_tp1_run, dense_student,
                                                           tiny_teacher, token_prefix):
    """DP=2 over 2 gloo ranks: train.distributed_optimizer=auto turns Megatron's
    DistributedOptimizer on, each rank's Adam states cover about half the student, and the
    losses are those of the same batches on one rank (dense_tp1_run)."""
    from kd.distill import spec_to_json

    spec = make_spec(dense_student, tiny_teacher, token_prefix, kd_runs / "distopt",
                     train_iters=8, save_interval=None)
    assert spec.train.distributed_optimizer == "auto"
    spec_file = spec_to_json(spec, kd_runs / "distopt.json")
    outputs = run_ranks([str(REPO / "tests/kd/_probe_optimizer.py"), "--spec", str(spec_file)], 2,
                        kd_runs / "distopt_logs")
    ranks = [tagged_json(out, "KD_OPTIM") for out in outputs]
    assert all(r["distributed_optimizer"] for r in ranks), ranks
    total = ranks[0]["student_params"]
    shards = [r["adam_state_elements"] for r in ranks]
    assert sum(shards) >= total  # every parameter has its moments on some rank (plus padding)
    for shard in shards:  # ... and each rank holds about half of them
        assert 0.4 * total < shard < 0.6 * total, (shard, total)
    one, two = losses_of(dense_tp1_run["out"]), losses_of("\n".join(outputs))
    assert sorted(two) == sorted(one) == list(range(1, 9))
    assert two[8] < two[1]
    for it in one:
        assert two[it] == pytest.approx(one[it], rel=1e-3, abs=1e-5), (it, one[it], two[it])
