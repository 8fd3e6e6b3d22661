"""Tensor parallelism across 2 gloo processes gives the TP=1 losses."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import losses_of, tagged_json

from kd.paths import latest_iteration


@pytest.mark.dist
def test_tp2_matches_tp1(dense_tp1_run, dense_tp2_run):
    tp1, tp2 = losses_of(dense_tp1_run["out"]), losses_of(dense_tp2_run["out"])
    assert sorted(tp2) == sorted(tp1) == list(range(1, 9))
    for it in tp1:
        assert tp2[it] == pytest.approx(tp1[it], rel=1e-4, abs=1e-6), (it, tp1[it], tp2[it])
    summary = tagged_json(dense_tp2_run["out"], "KD_SUMMARY")
    assert summary["world_size"] == 2 and summary["tp"] == 2
    assert latest_iteration(Path(dense_tp2_run["spec"].output_dir) / "checkpoints") == 8
