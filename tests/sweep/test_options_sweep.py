"""Sweeps and Model-Optimizer's distill.py options: members with one blend share Megatron's
index cache; a sweep's checkpoint candidates (its members' select:) are protected from
checkpoint.keep_last."""

from __future__ import annotations

from launch import config as cfg
from launch import sweep_plan as sp
from tests.sweep.conftest import MEMBERS


def test_sweep_members_share_the_index_cache_and_keep_candidates(sweep_yaml):
    sweep = sp.load_sweep(str(sweep_yaml(select={"iterations": [10]},
                                         overrides=["checkpoint.keep_last=1"])))
    plans = sp.plan_sweep(sweep, cfg.load_cluster("ci"), "2026-01-01")
    assert [p.name for p in plans] == list(MEMBERS)
    cache = {p.name: p.graph.job("distill").spec.index_cache for p in plans}
    # members with the same blend (one prepare_data owner) share one index cache
    assert cache["a-hi"] == cache["a-lo"] == str(plans[0].run_dir / "data" / "index_cache")
    assert cache["b-hi"] == cache["b-lo"] == str(plans[2].run_dir / "data" / "index_cache")
    for p in plans:  # the candidates' iterations are never pruned before their export
        assert p.graph.job("distill").spec.keep_iterations == (10, 20)
        assert [p.graph.job(f"candidate_{it}").spec.export.export.iteration
                for it in (10, 20)] == [10, 20]
