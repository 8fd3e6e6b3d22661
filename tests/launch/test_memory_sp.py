"""Sequence parallelism in the memory estimate, the auto layout and the pre-flight.

With SP each TP rank keeps the norm inputs, residuals and dropout masks of its slice of the
sequence: ``launch/memory.py`` divides its ``ACT_LAYER`` term (and, with full recompute, the
checkpointed layer inputs) by tp. That is Korthikanti et al.'s analysis, not a fit: every
layout the coefficients were fitted to, and every held-out one, ran without SP (checked below).
"""

from __future__ import annotations

import dataclasses

import pytest

from launch import config as cfg
from launch import layout, preflight
from launch.memory import ACT_LAYER, GIB, estimate
from launch.schema import ConfigError

from .test_layout import LLAMA_8B, shaped  # noqa: F401  (shaped: a fixture)
from .test_memory import bench_8b_points, held_out_points, measured_points


def test_sp_splits_the_norm_and_residual_term_over_tp():
    s, seq, mbs, layers, h = LLAMA_8B, 4096, 2, 32, 4096
    for tp in (1, 2, 4, 8):
        off = estimate(s, s, tp=tp, seq=seq, mbs=mbs)
        on = estimate(s, s, tp=tp, seq=seq, mbs=mbs, sequence_parallel=True)
        saved = layers * seq * mbs * ACT_LAYER * h * (1 - 1 / tp) / GIB
        assert off.activations - on.activations == pytest.approx(saved)
        assert (on.student_states, on.teacher_weights, on.logits) == (
            off.student_states, off.teacher_weights, off.logits)  # weights and KD logits: as before
    assert estimate(s, s, tp=1, seq=seq, mbs=mbs, sequence_parallel=True) == estimate(
        s, s, tp=1, seq=seq, mbs=mbs)  # nothing to split at tp 1


def test_sp_with_full_recompute_splits_the_checkpointed_inputs_too():
    s, seq, tp, layers, h = LLAMA_8B, 8192, 4, 32, 4096
    off = estimate(s, s, tp=tp, seq=seq, mbs=1, recompute=True)
    on = estimate(s, s, tp=tp, seq=seq, mbs=1, recompute=True, sequence_parallel=True)
    inputs = layers * 2 * seq * h * (1 - 1 / tp) / GIB  # bf16 layer inputs, each rank its slice
    one_layer = seq * ACT_LAYER * h * (1 - 1 / tp) / GIB  # the one layer rebuilt at a time
    assert off.activations - on.activations == pytest.approx(inputs + one_layer)


def test_the_fitted_and_held_out_layouts_ran_without_sp():
    """The coefficients say nothing about SP: no layout they were fitted or checked on had it
    (without TE it was off until kd/fused.py). A result recorded with SP must not join the fit
    without refitting; it is a held-out check of the analytic split instead."""
    points = measured_points() + held_out_points() + bench_8b_points()
    assert len(points) == 14 + 4 + 7
    for name, *_, run in points:
        assert not run.get("sequence_parallel"), name


def test_auto_layout_resolves_sequence_parallel_per_tp(shaped):  # noqa: F811
    cluster = cfg.load_cluster("pyxis_nemo", ["nodes=1"])
    common = ("train.micro_batch_size=auto", "train.global_batch_size=8")
    out, lay = layout.resolve(shaped(LLAMA_8B, LLAMA_8B, *common), cluster)
    assert lay.tp > 1 and lay.sequence_parallel and out.train.sequence_parallel is True
    assert "sequence_parallel=on" in lay.describe()
    sp_off, off = layout.resolve(
        shaped(LLAMA_8B, LLAMA_8B, *common, "train.sequence_parallel=false"), cluster)
    assert not off.sequence_parallel and sp_off.train.sequence_parallel is False
    assert "sequence_parallel=off" in off.describe()
    # the estimate the layout chose with is the SP one
    assert lay.estimate_gib == pytest.approx(estimate(
        LLAMA_8B, LLAMA_8B, tp=lay.tp, seq=4096, mbs=lay.micro_batch_size, dp=lay.dp,
        sharded_optimizer=lay.distributed_optimizer, sequence_parallel=True).total, abs=0.01)


def test_sp_lets_a_larger_micro_batch_fit(shaped):  # noqa: F811
    """At a pinned tp=4 on 8 GPUs (dp 2, sharded Adam), a budget between the SP and the non-SP
    estimate of micro-batch 4: SP gets micro-batch 4, without it 2."""
    def est(mbs, sp):
        return estimate(LLAMA_8B, LLAMA_8B, tp=4, seq=4096, mbs=mbs, dp=2,
                        sharded_optimizer=True, sequence_parallel=sp).total

    assert est(4, True) < est(4, False)
    budget = (est(4, True) + est(4, False)) / 2
    assert est(8, True) > budget and est(2, False) <= budget
    cluster = cfg.load_cluster("pyxis_nemo", ["nodes=1", f"gpu_memory_gib={budget / layout.AUTO_FILL}"])
    common = ("train.tp=4", "train.pp=1", "train.micro_batch_size=auto",
              "train.global_batch_size=16", "train.recompute=none")
    _, on = layout.resolve(shaped(LLAMA_8B, LLAMA_8B, *common), cluster)
    _, off = layout.resolve(
        shaped(LLAMA_8B, LLAMA_8B, *common, "train.sequence_parallel=false"), cluster)
    assert (on.micro_batch_size, off.micro_batch_size) == (4, 2)


def test_sp_true_needs_a_tp_above_one(shaped, make_experiment):  # noqa: F811
    # tp=auto chooses 1 on a CPU cluster: refused before queueing, naming the field and the fix
    exp = cfg.load_experiment(str(make_experiment()), ["train.tp=auto",
                                                       "train.sequence_parallel=true"])
    with pytest.raises(ConfigError, match=r"train.sequence_parallel=true needs tensor "
                                          r"parallelism, but this layout has tp=1 \(chosen by "
                                          r"train.tp=auto.*set train.sequence_parallel=auto"):
        layout.resolve(exp, cfg.load_cluster("local"))
    with pytest.raises(ConfigError, match=r"train.sequence_parallel=true needs tensor parallelism"):
        cfg.load_experiment(str(make_experiment()), ["train.tp=1", "train.sequence_parallel=true"])
    # auto on a CPU cluster: tp 1, no SP; a pinned tp 2 there: SP on
    auto = cfg.load_experiment(str(make_experiment()), ["train.tp=auto"])
    out, lay = layout.resolve(auto, cfg.load_cluster("local"))
    assert (out.train.tp, out.train.sequence_parallel, lay.sequence_parallel) == (1, False, False)
    pinned = cfg.load_experiment(str(make_experiment()), ["train.tp=2"])
    out, lay = layout.resolve(pinned, cfg.load_cluster("ci"))
    assert (out.train.tp, out.train.sequence_parallel) == (2, True)


def test_preflight_counts_what_sp_saves(shaped):  # noqa: F811
    """A pinned layout that fits only with SP passes the pre-flight with SP (the default at
    tp > 1) and is refused without it."""
    pinned = ("train.tp=4", "train.pp=1", "train.micro_batch_size=2", "train.recompute=none",
              "train.global_batch_size=8", "train.distributed_optimizer=true")

    def est(sp):
        return estimate(LLAMA_8B, LLAMA_8B, tp=4, seq=4096, mbs=2, dp=2, sharded_optimizer=True,
                        sequence_parallel=sp).total

    memory = (est(True) + est(False)) / 2 / preflight.MEMORY_HEADROOM
    cluster = cfg.load_cluster("pyxis_nemo", ["nodes=1", f"gpu_memory_gib={memory}"])
    on = shaped(LLAMA_8B, LLAMA_8B, *pinned)  # all pinned; sequence_parallel: auto (on at tp 4)
    preflight.check_memory(on, cluster)
    off = dataclasses.replace(on, train=dataclasses.replace(on.train, sequence_parallel=False))
    with pytest.raises(ConfigError, match=r"estimated peak .* GiB per GPU"):
        preflight.check_memory(off, cluster)
