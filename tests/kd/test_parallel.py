"""Tensor parallelism across 2 gloo processes gives the TP=1 losses."""

from __future__ import annotations

from pathlib import Path

import pytest

from kd.paths import latest_iteration
from tests.kd.conftest import losses_of, make_spec, run_python, tagged_json


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
