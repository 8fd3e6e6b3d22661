"""Sweep config -> members -> one JobGraph per member (plus checkpoint candidates): pure data.

A sweep (``configs/sweeps/X.yaml``) is a base experiment, overrides common to every member, a
``grid`` of named override sets (the members are its cross product, named by joining the value
names with ``-``) and/or an explicit ``members`` list. Each member is planned into
``<root>/<sweep>/<date>/<member>``. Members whose shareable stage (data prep, student-before
eval, teacher eval) has the same spec share one job: the first member in sweep order runs it,
the others read its output and wait on its job (``launch.plan.plan(shared=...)``).

With ``select.iterations`` each member also exports and evaluates those saved iterations in
``<member>/select/iter_NNNNNNN/`` (two jobs that wait on the member's distill job); the sweep
report uses the best one (``launch.history.select_best``).
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from kd.paths import RunPaths
from launch import config as cfg
from launch import layout
from launch import manifest as mf
from launch.config import Cluster, Experiment
from launch.plan import SHAREABLE, JobGraph, plan
from launch.schema import ConfigError, build, to_dict

REPO = cfg.REPO
SWEEPS_DIR = REPO / "configs" / "sweeps"
RUN_SPECIFIC = ("out_dir", "out_file", "done_marker")  # spec fields that differ between runs


@dataclass(frozen=True)
class Member:
    name: str
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class Select:
    iterations: tuple[int, ...] = ()  # saved iterations to export + evaluate besides the last
    task: str = "mmlu"  # group key the best iteration is chosen by (e.g. kd_synth)


@dataclass(frozen=True)
class Alarm:
    z: float = 2.0  # a drop larger than z combined stderrs (previous vs current night) alarms
    tasks: tuple[str, ...] = ("mmlu",)  # group keys that can raise the alarm
    min_drop_points: float = 1.0  # threshold (accuracy points) where stderrs are unknown


@dataclass(frozen=True)
class Sweep:
    name: str
    base: str  # experiment name (configs/experiments) or path
    cluster: str = "slurm"  # default cluster profile; --cluster overrides it
    root: str = "runs/sweeps"  # runs go to <root>/<name>/<date>/<member>; history in <root>/<name>
    overrides: tuple[str, ...] = ()  # for every member
    cluster_overrides: tuple[str, ...] = ()
    grid: dict[str, dict[str, tuple[str, ...]]] = field(default_factory=dict)
    members: tuple[Member, ...] = ()
    share: tuple[str, ...] = SHAREABLE
    select: Select = field(default_factory=Select)
    alarm: Alarm = field(default_factory=Alarm)


@dataclass(frozen=True)
class MemberPlan:
    name: str
    overrides: tuple[str, ...]
    experiment: Experiment
    config_hash: str
    run_dir: Path
    graph: JobGraph
    candidates: tuple[JobGraph, ...] = ()  # checkpoint selection sub-runs


# ---------------------------------------------------------------- loading
def load_sweep(ref: str) -> Sweep:
    data = cfg._read_yaml(cfg.named_yaml(ref, SWEEPS_DIR))
    sweep = build(Sweep, data, "")
    validate_sweep(sweep)
    return sweep


def _safe_name(name: str, where: str) -> None:
    if not name or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise ConfigError(f"{where}={name!r}: use letters, digits, '-', '_', '.' only "
                          f"(it names a run directory)")


def validate_sweep(sweep: Sweep) -> None:
    _safe_name(sweep.name, "name")
    for axis, values in sweep.grid.items():
        if not values:
            raise ConfigError(f"grid.{axis} is empty: give at least one named value, "
                              f"e.g. {axis}: {{a: [train.lr=1e-4]}}")
        for label in values:
            _safe_name(label, f"grid.{axis} value name")
    unknown = sorted(set(sweep.share) - set(SHAREABLE))
    if unknown:
        raise ConfigError(f"share: {', '.join(unknown)} cannot be shared; choose from "
                          f"{', '.join(SHAREABLE)}")
    for i, o in enumerate(_all_overrides(sweep)):
        if o.startswith("cluster."):
            raise ConfigError(f"override {o!r} (#{i}): cluster settings go to "
                              f"cluster_overrides (without the `cluster.` prefix)")
    if sweep.alarm.z <= 0 or sweep.alarm.min_drop_points < 0:
        raise ConfigError(f"alarm.z={sweep.alarm.z}, alarm.min_drop_points="
                          f"{sweep.alarm.min_drop_points}: need z > 0 and min_drop_points >= 0")
    if any(i <= 0 for i in sweep.select.iterations):
        raise ConfigError(f"select.iterations={list(sweep.select.iterations)}: iterations are > 0")
    names = [m.name for m in expand(sweep)]
    if not names:
        raise ConfigError("the sweep has no members: add a `grid:` or a `members:` list")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"member name(s) {', '.join(dupes)} occur twice: rename the grid "
                          f"values or members")
    for n in names:
        _safe_name(n, "member name")


def _all_overrides(sweep: Sweep) -> list[str]:
    out = list(sweep.overrides)
    for values in sweep.grid.values():
        for overrides in values.values():
            out += overrides
    for m in sweep.members:
        out += m.overrides
    return out


def expand(sweep: Sweep) -> list[Member]:
    """The members: the grid's cross product (axis order as written), then ``members``."""
    out: list[Member] = []
    if sweep.grid:
        axes = [list(values.items()) for values in sweep.grid.values()]
        for combo in itertools.product(*axes):
            name = "-".join(label for label, _ in combo)
            overrides = tuple(o for _, over in combo for o in over)
            out.append(Member(name, tuple(sweep.overrides) + overrides))
    out += [Member(m.name, tuple(sweep.overrides) + m.overrides) for m in sweep.members]
    return out


def parse_date(text: str | None) -> str:
    if text is None:
        return dt.date.today().isoformat()
    try:
        return dt.date.fromisoformat(text).isoformat()
    except ValueError as e:
        raise ConfigError(f"--date {text!r}: write YYYY-MM-DD") from e


def sweep_dir(sweep: Sweep) -> Path:
    return (Path(sweep.root).expanduser() / sweep.name).absolute()


def night_dir(sweep: Sweep, date: str) -> Path:
    return sweep_dir(sweep) / date


def load_member(sweep: Sweep, member: Member, cluster: Cluster) -> tuple[Experiment, str]:
    try:
        exp, _ = layout.load_experiment(sweep.base, list(member.overrides), cluster)
    except ConfigError as e:
        raise ConfigError(f"member {member.name}: {e}") from e
    return exp, mf.config_hash(to_dict(exp))


# ---------------------------------------------------------------- planning
def share_key(graph: JobGraph, stage: str) -> str | None:
    """What decides a shareable stage's output: its spec without run-specific paths."""
    if stage not in graph.stages:
        return None
    spec = asdict(graph.job(stage).spec)
    for k in RUN_SPECIFIC:
        spec.pop(k, None)
    return json.dumps(spec, sort_keys=True, default=str)


def plan_sweep(sweep: Sweep, cluster: Cluster, date: str) -> list[MemberPlan]:
    """Every member planned into the night's directory, shareable stages run once."""
    root = night_dir(sweep, date)
    owners: dict[tuple[str, str], Path] = {}  # (stage, share key) -> run dir that runs it
    plans = []
    for member in expand(sweep):
        exp, chash = load_member(sweep, member, cluster)
        run_dir = root / member.name
        alone = plan(exp, cluster, run_dir)
        shared = {}
        for stage in sweep.share:
            key = share_key(alone, stage)
            if key is None:
                continue
            owner = owners.setdefault((stage, key), run_dir)
            if owner != run_dir:
                shared[stage] = owner
        graph = plan(exp, cluster, run_dir, shared=shared) if shared else alone
        cands = candidates(exp, graph, sweep.select.iterations)
        graph = protect_from_retention(graph, sweep.select.iterations)
        plans.append(MemberPlan(member.name, member.overrides, exp, chash, run_dir, graph, cands))
    return plans


def final_iteration(exp: Experiment) -> int:
    return exp.export.iteration or exp.train.train_iters


def candidates(exp: Experiment, graph: JobGraph, iterations: tuple[int, ...]) -> tuple[JobGraph, ...]:
    """Export + eval sub-runs for the saved iterations other than the one the member exports."""
    if not iterations or "eval_student_after" not in graph.stages:
        return ()
    if exp.select.enabled:
        raise ConfigError(
            f"select.iterations of the sweep and select: of the experiment {exp.name!r} both "
            f"choose a checkpoint: keep one (the experiment's also picks the exported one)")
    t = exp.train
    for it in iterations:
        saved = it == t.train_iters or (t.save_interval and it % t.save_interval == 0)
        if it > t.train_iters or not saved:
            raise ConfigError(
                f"select.iterations: iteration {it} is not saved by member {exp.name!r} "
                f"(train.train_iters={t.train_iters}, train.save_interval={t.save_interval}): "
                f"choose multiples of train.save_interval up to train.train_iters")
    out = []
    for it in sorted(set(iterations) - {final_iteration(exp)}):
        out.append(candidate_graph(graph, it))
    return tuple(out)


def protect_from_retention(graph: JobGraph, iterations: tuple[int, ...]) -> JobGraph:
    """The candidates' iterations join the distill job's ``keep_iterations``: checkpoint.keep_last
    never deletes a checkpoint a candidate export still has to read."""
    if not iterations or "distill" not in graph.stages:
        return graph
    job = graph.job("distill")
    keep = tuple(sorted(set(job.spec.keep_iterations) | set(iterations)))
    jobs = tuple(replace(j, spec=replace(j.spec, keep_iterations=keep)) if j is job else j
                 for j in graph.jobs)
    return replace(graph, jobs=jobs)


def candidate_dir(run_dir: Path, iteration: int) -> Path:
    return RunPaths(Path(run_dir)).candidate_dir(iteration)


def candidate_graph(graph: JobGraph, iteration: int) -> JobGraph:
    paths = RunPaths(candidate_dir(graph.run_dir, iteration))
    export, ev = graph.job("export_hf"), graph.job("eval_student_after")
    export = replace(export, spec=replace(
        export.spec, out_dir=str(paths.hf_export),
        export=replace(export.spec.export, iteration=iteration),
        done_marker=str(paths.stage_done("export_hf"))))
    ev = replace(ev, spec=replace(
        ev.spec, model=str(paths.hf_export), out_file=str(paths.eval_result("student_after")),
        done_marker=str(paths.stage_done("eval_student_after"))))
    return JobGraph(run_dir=paths.root, jobs=(export, ev), external={"distill": graph.run_dir})


def shared_summary(plans: list[MemberPlan]) -> list[str]:
    lines = []
    for p in plans:
        for stage, owner in p.graph.external.items():
            lines.append(f"  {p.name:<24} {stage:<20} shared from {Path(owner).name}")
    return lines
