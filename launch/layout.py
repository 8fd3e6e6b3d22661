"""Choose the distill stage's parallel layout from the memory estimate (login node: pure Python).

``train.tp``, ``train.pp``, ``train.micro_batch_size`` and ``train.recompute`` may be ``auto``
(the default). ``resolve(exp, cluster)`` returns the experiment with every ``auto`` replaced by
a number (or ``none``/``full``) and a ``Layout`` that says what was chosen and why; values the
experiment pins are kept and only checked later by the pre-flight.

The rule (measured with benchmarks/kd_throughput.py,
benchmarks/results/h100x4_2026-11-28_issue8.json: on 4 x H100 at seq 4096, TP=4 -> TP=1 x DP=4
was 6.5x the tokens/s/GPU, micro-batch 1 -> 4 another 1.46x):
1. model parallelism as small as fits: the smallest ``tp x pp`` (TP first, within one node,
   dividing every attention and KV head count; PP dividing both models' layer counts) whose
   estimated peak at micro-batch 1 fits ``AUTO_FILL`` of ``cluster.gpu_memory_gib``. Lower TP
   means less communication and larger matmuls per GPU; the GPUs it frees become data-parallel
   replicas;
2. the largest micro-batch (a divisor of global_batch_size / DP, at most ``MAX_AUTO_MBS``) that
   still fits: fewer, larger kernels per step;
3. activation recomputation (``full``) only when nothing fits without it: it costs about a
   third more student compute.
Without GPUs (CPU clusters) there is no memory to fill: tp = pp = 1, no recomputation, and the
largest micro-batch up to ``MAX_AUTO_MBS``.

``train.sequence_parallel`` (``auto`` = on whenever tp > 1: ``kd.sections.sequence_parallel``) is
resolved here too, for each candidate tp while choosing (sequence parallelism splits the norm /
residual activations over TP, so it lets a smaller layout fit) and into the stage spec as
true/false. ``true`` with a tp that resolves to 1 is refused (Megatron refuses it).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

from kd.checkpoints import SavedLayout, saved_layout
from kd.paths import RunPaths
from kd.sections import data_parallel_size
from kd.sections import sequence_parallel as sequence_parallel_rule
from launch.config import Cluster, Experiment, tasks_per_node
from launch.memory import distributed_optimizer, estimate, head_counts
from launch.schema import ConfigError

AUTO = "auto"
AUTO_FILL = 0.80  # of cluster.gpu_memory_gib: the estimate is within 7 % of 18 measured peaks
# a cap, not a measured optimum: 8 x 2048 tokens per micro-batch already reached 39 % MFU
# (4.7 x micro-batch 1, benchmarks/results/h200x4_2026-11-28_issue8_val.json)
MAX_AUTO_MBS = 8
FIELDS = ("tp", "pp", "micro_batch_size", "recompute", "distributed_optimizer")


@dataclass(frozen=True)
class Layout:
    tp: int
    pp: int
    dp: int
    micro_batch_size: int
    recompute: str
    estimate_gib: float | None  # estimated peak per GPU, None without GPUs
    budget_gib: float | None
    auto: tuple[str, ...]  # the fields that were chosen here
    distributed_optimizer: bool = False
    resumes: SavedLayout | None = None  # the checkpoint this launch resumes, when there is one
    sequence_parallel: bool = False

    def describe(self) -> str:
        chosen = ", ".join(f"train.{f}" for f in self.auto) or "nothing (all pinned)"
        mem = ""
        if self.estimate_gib is not None:
            mem = f"; estimated peak {self.estimate_gib:.1f} GiB of {self.budget_gib:.1f} GiB"
        resume = ""
        if self.resumes is not None:
            resume = (f"; resumes the checkpoint at iteration {self.resumes.iteration}, saved at "
                      f"{self.resumes.describe()}")
        return (f"layout: tp={self.tp} pp={self.pp} dp={self.dp} "
                f"micro_batch_size={self.micro_batch_size} recompute={self.recompute} "
                f"distributed_optimizer={'on' if self.distributed_optimizer else 'off'} "
                f"sequence_parallel={'on' if self.sequence_parallel else 'off'} "
                f"(auto: {chosen}{mem}{resume})")


def is_auto(value: object) -> bool:
    return value == AUTO


def data_parallel(cluster: Cluster, tp: int, pp: int, cp: int) -> int:
    """DP ranks of tp x pp x cp on ``cluster`` (kd.sections' one formula), or the refusal that
    names the fields."""
    world = cluster.nodes * tasks_per_node(cluster)
    try:
        return data_parallel_size(world, tp, pp, cp)
    except ValueError:
        raise ConfigError(
            f"train.tp x train.pp x train.cp = {tp} x {pp} x {cp} = {tp * pp * cp} does not "
            f"divide the world size {world} (cluster.nodes={cluster.nodes} x "
            f"{tasks_per_node(cluster)} tasks per node): change tp/pp or the number of "
            f"nodes/GPUs") from None


def estimate_layout(student: dict, teacher: dict, *, world: int, tp: int, pp: int, cp: int,
                    seq: int, mbs: int, recompute: str, sharded: object,
                    sequence_parallel: object, kd_loss: str = "full"):
    """The peak estimate of one layout (launch/memory.py), with the distributed optimizer and
    sequence parallelism resolved by their rules: what ``choose`` compares against the budget
    and what the pre-flight refuses on (one estimate for both)."""
    dp = data_parallel_size(world, tp, pp, cp)
    return estimate(student, teacher, tp=tp, pp=pp, seq=seq, mbs=mbs,
                    recompute=recompute == "full", dp=dp,
                    sharded_optimizer=distributed_optimizer(sharded, dp), kd_loss=kd_loss,
                    sequence_parallel=sequence_parallel_rule(sequence_parallel, tp))


def load_experiment(ref: str, overrides: list[str], cluster: Cluster,
                    run_dir: str | Path | None = None) -> tuple[Experiment, Layout]:
    """``config.load_experiment`` + ``resolve``: what planning and the pre-flight take.
    ``run_dir``: the run this launch continues, if any (its checkpoints fix the layout)."""
    from launch import config as cfg

    saved = saved_layout(RunPaths(Path(run_dir)).checkpoints) if run_dir else None
    return resolve(cfg.load_experiment(ref, overrides), cluster, saved)


def require_resolved(exp: Experiment) -> None:
    """Planning and the pre-flight work on numbers: refuse an experiment with ``auto`` left."""
    # (an ``auto`` distributed optimizer has a definite value for a given dp: sections.py's rule)
    left = [f"train.{f}" for f in FIELDS[:4] if is_auto(getattr(exp.train, f))]
    if left:
        raise ValueError(f"{', '.join(left)} still 'auto': resolve the experiment first "
                         f"(launch.layout.resolve or launch.layout.load_experiment)")


MODEL_COUNTS = ("num_attention_heads", "num_hidden_layers", "vocab_size")


def require_model_counts(cfg: object, f: Path, field: str) -> dict:
    """A model config dict with positive integer head/layer/vocab counts (never taken as 0)."""
    if not isinstance(cfg, dict):
        raise ConfigError(f"{field}: {f} is not a JSON object; restore it from the checkpoint")
    for key in MODEL_COUNTS:
        value = cfg.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{field}: {f} has {key}={value!r}; it needs a positive integer "
                              f"{key} (never taken as 0): fix the checkpoint's config.json")
    return cfg


def _config(path: str, field: str) -> dict:
    f = Path(os.path.expanduser(path)) / "config.json"
    try:
        cfg = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"train.tp/pp/micro_batch_size=auto reads the models' configs, but {field}={path!r} "
            f"has no readable config.json ({f}: {e.__class__.__name__}): point {field} at an HF "
            f"checkpoint directory, or pin train.tp, train.pp and train.micro_batch_size"
        ) from None
    return require_model_counts(cfg, f, field)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def resolve(exp: Experiment, cluster: Cluster,
            saved: SavedLayout | None = None) -> tuple[Experiment, Layout]:
    """Every ``auto`` of ``exp.train`` resolved. ``saved``: the layout of the checkpoint the run
    resumes from: ``auto`` tp, pp and distributed optimizer follow it (a checkpoint loads only
    into the tp/pp and the optimizer kind it was saved with; dp may change), and a pinned value
    that differs is refused here, before anything is queued."""
    auto = tuple(f for f in FIELDS if is_auto(getattr(exp.train, f)))
    if saved is not None:
        exp = _follow_checkpoint(exp, saved)
    t = exp.train
    world = cluster.nodes * tasks_per_node(cluster)
    needs_estimate = bool(set(auto) & {"tp", "micro_batch_size"})
    readable = all((Path(os.path.expanduser(m.path)) / "config.json").is_file()
                   for m in (exp.student, exp.teacher))
    if cluster.gpus_per_node and needs_estimate and not cluster.gpu_memory_gib:
        raise ConfigError(
            f"train.{'tp' if is_auto(t.tp) else 'micro_batch_size'}=auto chooses the layout from "
            f"GPU memory, but cluster.gpu_memory_gib is not set: set it (e.g. "
            f"cluster.gpu_memory_gib=79 for H100 80GB), or pin train.tp, train.pp, "
            f"train.micro_batch_size and train.recompute")
    if not cluster.gpus_per_node or not (needs_estimate or (cluster.gpu_memory_gib and readable)):
        # no GPU memory to fill (CPU clusters), or nothing to estimate with while tp and mbs are
        # pinned: no model parallelism, no recomputation, the largest micro-batch up to the cap
        # (the pre-flight's memory and path checks say what is missing)
        tp = 1 if is_auto(t.tp) else t.tp
        pp = 1 if is_auto(t.pp) else t.pp
        # a world the layout does not divide is the pre-flight's refusal (check_layout); a dry
        # run still shows the plan
        dp = data_parallel(cluster, tp, pp, t.cp) if world % (tp * pp * t.cp) == 0 else 1
        mbs = t.micro_batch_size
        if is_auto(mbs):
            mbs = max(d for d in _divisors(max(1, t.global_batch_size // dp))
                      if d <= MAX_AUTO_MBS)
        rc = "none" if is_auto(t.recompute) else t.recompute
        layout = Layout(tp, pp, dp, mbs, rc, None, None, auto,
                        distributed_optimizer(t.distributed_optimizer, dp), saved,
                        _sequence_parallel(t, tp))
        return _apply(exp, layout), layout
    student = _config(exp.student.path, "student.path")
    teacher = _config(exp.teacher.path, "teacher.path")
    layout = choose(student, teacher, world=world, gpus_per_node=tasks_per_node(cluster),
                    gpu_memory_gib=cluster.gpu_memory_gib, global_batch_size=t.global_batch_size,
                    seq_length=t.seq_length, cp=t.cp, tp=t.tp, pp=t.pp,
                    micro_batch_size=t.micro_batch_size, recompute=t.recompute,
                    sharded=t.distributed_optimizer, sequence_parallel=t.sequence_parallel)
    layout = dataclasses.replace(
        layout, auto=auto, resumes=saved,
        distributed_optimizer=distributed_optimizer(t.distributed_optimizer, layout.dp),
        sequence_parallel=_sequence_parallel(t, layout.tp))
    return _apply(exp, layout), layout


def _sequence_parallel(t, tp: int) -> bool:
    """``train.sequence_parallel`` for the resolved ``tp``; ``true`` needs tp > 1."""
    if t.sequence_parallel is True and tp == 1:
        raise ConfigError(
            "train.sequence_parallel=true needs tensor parallelism, but this layout has tp=1"
            + (" (chosen by train.tp=auto: the models fit without TP)" if is_auto(t.tp) else "")
            + ": set train.sequence_parallel=auto (on whenever tp > 1) or pin train.tp > 1")
    return sequence_parallel_rule(t.sequence_parallel, tp)


def _follow_checkpoint(exp: Experiment, saved: SavedLayout) -> Experiment:
    """``exp`` with its ``auto`` tp, pp and distributed optimizer set as ``saved``; a pinned
    value that differs is refused, naming both layouts."""
    t = exp.train
    want = {"tp": saved.tp, "pp": saved.pp, "distributed_optimizer": saved.distributed_optimizer}
    pinned_now = {k: getattr(t, k) for k in want if not is_auto(getattr(t, k))}
    if "distributed_optimizer" in pinned_now:
        pinned_now["distributed_optimizer"] = distributed_optimizer(
            pinned_now["distributed_optimizer"], 1)
    clash = [f"train.{k}={str(v).lower()}" for k, v in pinned_now.items() if v != want[k]]
    if clash:
        raise ConfigError(
            f"{', '.join(clash)}: this run directory's checkpoint at iteration "
            f"{saved.iteration} was saved at {saved.describe()}, and a Megatron checkpoint "
            f"loads only at its own tp, pp and optimizer kind (dp may change); set "
            f"train.tp={saved.tp} train.pp={saved.pp} train.distributed_optimizer="
            f"{str(saved.distributed_optimizer).lower()} (or leave them auto) to resume it, or "
            f"use another --run-dir for a new run")
    pinned = {k: v for k, v in want.items() if is_auto(getattr(t, k))}
    return dataclasses.replace(exp, train=dataclasses.replace(t, **pinned)) if pinned else exp


def choose(student: dict, teacher: dict, *, world: int, gpus_per_node: int,
           gpu_memory_gib: float, global_batch_size: int, seq_length: int, cp: int = 1,
           tp: int | str = AUTO, pp: int | str = AUTO, micro_batch_size: int | str = AUTO,
           recompute: str = AUTO, sharded: object = AUTO, kd_loss: str = "full",
           sequence_parallel: object = AUTO) -> Layout:
    """The rule of the module docstring on HF config dicts (benchmarks call this directly).
    ``sequence_parallel``: ``train.sequence_parallel`` (resolved per candidate tp)."""
    auto = tuple(f for f, v in (("tp", tp), ("pp", pp), ("micro_batch_size", micro_batch_size),
                                ("recompute", recompute)) if is_auto(v))
    budget = AUTO_FILL * gpu_memory_gib
    heads: list[int] = []
    for cfg in (student, teacher):
        h, kv = head_counts(cfg)
        heads += [h, *kv]
    layers = (int(student["num_hidden_layers"]), int(teacher["num_hidden_layers"]))
    tps = [tp] if not is_auto(tp) else [d for d in _divisors(gpus_per_node)
                                         if all(h % d == 0 for h in heads)]
    pps = [pp] if not is_auto(pp) else [d for d in _divisors(world)
                                         if all(n % d == 0 for n in layers)]
    shapes = sorted(((a, b) for a in tps for b in pps
                     if world % (a * b * cp) == 0
                     and global_batch_size % (world // (a * b * cp)) == 0),
                    key=lambda s: (s[0] * s[1], s[1]))
    recomputes = ["none", "full"] if is_auto(recompute) else [recompute]

    def peak(a: int, b: int, mbs: int, rc: str) -> float:
        # the distributed optimizer (default when dp > 1) shards Adam states over dp: smaller tp
        # and larger micro-batches fit than without it
        return estimate_layout(student, teacher, world=world, tp=a, pp=b, cp=cp,
                               seq=seq_length, mbs=mbs, recompute=rc, sharded=sharded,
                               sequence_parallel=sequence_parallel, kd_loss=kd_loss).total

    for rc in recomputes:
        for a, b in shapes:
            dp = data_parallel_size(world, a, b, cp)
            per_rank = global_batch_size // dp
            if is_auto(micro_batch_size):
                options = sorted((d for d in _divisors(per_rank) if d <= MAX_AUTO_MBS),
                                 reverse=True)
            else:
                options = [micro_batch_size]
            for mbs in options:
                est = peak(a, b, mbs, rc)
                if est <= budget:
                    return Layout(a, b, dp, mbs, rc, round(est, 2), round(budget, 2), auto,
                                  sequence_parallel=sequence_parallel_rule(sequence_parallel, a))
    pinned = ", ".join(f"train.{f}={v}" for f, v in (
        ("tp", tp), ("pp", pp), ("micro_batch_size", micro_batch_size), ("recompute", recompute))
        if f not in auto)
    smallest = min((peak(a, b, 1, recomputes[-1]) for a, b in shapes), default=None)
    raise ConfigError(
        f"no layout fits: with train.seq_length={seq_length} on {world} GPUs"
        f"{' and ' + pinned if pinned else ''}, the smallest estimated peak is "
        + (f"{smallest:.1f} GiB" if smallest is not None else "undefined (no tp/pp divides the "
           "heads, layers and global batch)")
        + f", above {budget:.1f} GiB ({AUTO_FILL:.0%} of cluster.gpu_memory_gib="
        f"{gpu_memory_gib:g}): add nodes (cluster.nodes), lower train.seq_length, or "
        f"unpin the fields above")


def _apply(exp: Experiment, layout: Layout) -> Experiment:
    train = dataclasses.replace(exp.train, tp=layout.tp, pp=layout.pp,
                                micro_batch_size=layout.micro_batch_size,
                                recompute=layout.recompute,
                                distributed_optimizer=layout.distributed_optimizer,
                                sequence_parallel=layout.sequence_parallel)
    return dataclasses.replace(exp, train=train)
