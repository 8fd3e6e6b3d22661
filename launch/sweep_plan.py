"""Sweep config -> members -> one JobGraph per member: pure data.

A sweep (``configs/sweeps/X.yaml``) is a base experiment, overrides common to every member, a
``grid`` of named override sets (the members are its cross product, named by joining the value
names with ``-``) and/or an explicit ``members`` list. Each member is planned into
``<root>/<sweep>/<date>/<member>``. Members whose shareable stage (data prep, student-before
eval, teacher eval) has the same spec share one job: the first member in sweep order runs it,
the others read its output and wait on its job (``launch.plan.plan(shared=...)``).

A sweep's ``select:`` is the experiment's ``select:`` section (``kd.sections.Select``) for every
member: each key becomes a ``select.<key>=<value>`` override, so a member chooses its checkpoint
exactly as a single run does (``candidate_<N>`` + ``select`` jobs, ``kd/selection.py``) and the
history records its full eval of the chosen iteration.

``Sweep``, ``Member`` and ``Alarm`` are declared like the experiment's sections (``Section``,
``knob``, each check beside its field; ``build`` reads the YAML). A sweep is refused before
anything is queued for whatever a member's experiment would be refused for (``plan_sweep`` loads
and plans every member), and for what only the sweep can get wrong: two grid axes that set the
same key, two members with the same config, an alarm task no member evaluates.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kd.sections import (
    MMLU_GROUPS,
    FieldError,
    Section,
    Select,
    at_least,
    each,
    finite_positive,
    knob,
    matches,
)
from launch import config as cfg
from launch import layout
from launch import manifest as mf
from launch.config import Cluster, Experiment
from launch.graph import JobGraph
from launch.plan import SHAREABLE, plan
from launch.schema import ConfigError, build, parse_override, to_dict

REPO = cfg.REPO
SWEEPS_DIR = REPO / "configs" / "sweeps"
RUN_SPECIFIC = ("out_dir", "out_file", "done_marker")  # spec fields that differ between runs
_RUN_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_TASK = r"[A-Za-z0-9][A-Za-z0-9_.\-]*"


# ---------------------------------------------------------------- field checks
def _run_name(what: str):
    return matches(_RUN_NAME, f"use letters, digits, '-', '_', '.' only, starting with a letter "
                              f"or digit (it names {what})")


def _override(text: Any) -> str | None:
    """One ``key=value`` experiment override (as on the command line)."""
    try:
        keys, _ = parse_override(str(text))
    except ConfigError as e:
        return str(e)
    if keys[0] == "cluster":
        return ("cluster settings go to cluster_overrides (without the `cluster.` prefix): "
                "members share one cluster profile")
    return None


def _cluster_override(text: Any) -> str | None:
    try:
        parse_override(str(text))
    except ConfigError as e:
        return str(e)
    return None


def _shared(stage: Any) -> str | None:
    return None if stage in SHAREABLE else (f"{stage} cannot be shared; choose from "
                                            f"{', '.join(SHAREABLE)}")


def _grid(grid: dict) -> tuple[str, Any, str] | None:
    """Each axis: one or more named override sets; names that can name a run directory."""
    name_fix = _run_name("a run directory, joined with the other axes' names by '-'")
    for axis, values in grid.items():
        if not values:
            return (f".{axis}", values, f"is empty: give at least one named value, e.g. "
                                        f"{axis}: {{a: [train.lr=1e-4]}}")
        for label, overrides in values.items():
            fix = name_fix(label)
            if fix:
                return (f".{axis} value name", label, fix)
            for i, o in enumerate(overrides):
                fix = _override(o)
                if fix:
                    return (f".{axis}.{label}[{i}]", o, fix)
    return None


def select_overrides(select: dict) -> tuple[str, ...]:
    """``select.<key>=<value>`` for each key the sweep's ``select:`` sets (JSON values, which
    the override parser reads as YAML; plain strings stay plain where that reads the same)."""
    out = []
    for key, value in select.items():
        text = value if isinstance(value, str) else json.dumps(value)
        if parse_override(f"select.{key}={text}")[1] != value:
            text = json.dumps(value)
        out.append(f"select.{key}={text}")
    return tuple(out)


def _member_select(select: dict) -> None:
    """The sweep's ``select:`` is the experiment's ``select:`` section, key by key: checked by
    that section's own fields (``ConfigError`` naming ``select.<key>``)."""
    if "task" in select:
        raise ConfigError(
            f"select.task={select['task']!r}: a sweep's select: is the experiment's select: "
            f"section (set for every member), which names the deciding task `by`: write "
            f"`by: {select['task']}` (the last saved iteration is always a candidate; README, "
            f"'Checkpoint selection')")
    build(Select, select, "select")
    for o in select_overrides(select):  # every value survives the trip through an override
        keys, value = parse_override(o)
        if value != select[keys[1]]:
            raise ConfigError(f"select.{keys[1]}={select[keys[1]]!r}: cannot be passed to the "
                              f"members as an override; write it as a plain YAML value")


# ---------------------------------------------------------------- the sweep file
@dataclass(frozen=True)
class Member(Section):
    name: str = knob(check=_run_name("the member's run directory"))
    overrides: tuple[str, ...] = knob((), each(_override))


@dataclass(frozen=True)
class Alarm(Section):
    # a drop larger than z combined stderrs (previous vs current night) alarms
    z: float = knob(2.0, finite_positive)
    # group keys that can raise the alarm; each must be evaluated by some member (plan_sweep)
    tasks: tuple[str, ...] = knob(("mmlu",), each(matches(
        _TASK, "not a task or group name (letters, digits, '_', '-', '.')")))
    min_drop_points: float = knob(1.0, at_least(0))  # threshold (points) where stderrs are unknown


@dataclass(frozen=True)
class Sweep(Section):
    name: str = knob(check=_run_name("the sweep's directory"))
    base: str = knob(check=lambda v: None if v else "name a base experiment "
                     "(configs/experiments/NAME.yaml or a path)")
    cluster: str = "slurm"  # default cluster profile; --cluster overrides it
    root: str = "runs/sweeps"  # runs go to <root>/<name>/<date>/<member>; history in <root>/<name>
    overrides: tuple[str, ...] = knob((), each(_override))  # for every member
    cluster_overrides: tuple[str, ...] = knob((), each(_cluster_override))
    grid: dict[str, dict[str, tuple[str, ...]]] = knob(factory=dict, check=_grid)
    members: tuple[Member, ...] = ()
    share: tuple[str, ...] = knob(SHAREABLE, each(_shared))
    # the experiment's select: section for every member (kd.sections.Select; README
    # "Checkpoint selection"): each key becomes a select.<key> override
    select: dict[str, Any] = knob(factory=dict, check=_member_select)
    alarm: Alarm = knob(factory=Alarm)

    def check(self) -> None:
        names = [m.name for m in expand(self)]
        if not names:
            raise FieldError("members", [], "", "the sweep has no members: add a `grid:` or a "
                             "`members:` list")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise FieldError("members", dupes, "", f"member name(s) {', '.join(dupes)} occur "
                             f"twice: rename the grid values or members")
        keys = {axis: {k for over in values.values() for k in map(_key, over)}
                for axis, values in self.grid.items()}
        for a, b in itertools.combinations(self.grid, 2):
            both = sorted({_overlap(x, y) for x in keys[a] for y in keys[b]} - {None})
            if both:
                raise FieldError("grid", None, "", f"grid.{a} and grid.{b} both set "
                                 f"{', '.join(both)}: the later axis wins, so members that "
                                 f"differ only in grid.{a} get the same config (the same "
                                 f"training twice); set {both[0]} on one axis only")


def _key(override: str) -> str:
    return override.split("=", 1)[0].strip()


def _overlap(a: str, b: str) -> str | None:
    """The key two overrides both set (equal, or one a section of the other), else None."""
    if a == b or b.startswith(a + "."):
        return a
    if a.startswith(b + "."):
        return b
    return None


@dataclass(frozen=True)
class MemberPlan:
    name: str
    overrides: tuple[str, ...]
    experiment: Experiment
    config_hash: str
    run_dir: Path
    graph: JobGraph


# ---------------------------------------------------------------- loading
def load_sweep(ref: str) -> Sweep:
    return build(Sweep, cfg._read_yaml(cfg.named_yaml(ref, SWEEPS_DIR)), "")


def expand(sweep: Sweep) -> list[Member]:
    """The members: the grid's cross product (axis order as written), then ``members``. Each
    member's overrides: the sweep's, its ``select:``, then the member's own (later wins)."""
    common = (*sweep.overrides, *select_overrides(sweep.select))
    out: list[Member] = []
    if sweep.grid:
        axes = [list(values.items()) for values in sweep.grid.values()]
        for combo in itertools.product(*axes):
            name = "-".join(label for label, _ in combo)
            out.append(Member(name, (*common, *(o for _, over in combo for o in over))))
    out += [Member(m.name, (*common, *m.overrides)) for m in sweep.members]
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
    """Every member planned into the night's directory, shareable stages run once; refused
    (``ConfigError``) when a member or the members together would be."""
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
        plans.append(MemberPlan(member.name, member.overrides, exp, chash, run_dir, graph))
    check_members(sweep, plans)
    return plans


def check_members(sweep: Sweep, plans: list[MemberPlan]) -> None:
    """What only the members together can get wrong: two with one config, an alarm task that no
    member evaluates."""
    first: dict[str, str] = {}
    for p in plans:
        other = first.setdefault(p.config_hash, p.name)
        if other != p.name:
            raise ConfigError(f"members {other} and {p.name} have the same config (hash "
                              f"{p.config_hash}): they would train the same model twice; make "
                              f"their overrides differ or drop one")
    evaluated = set(MMLU_GROUPS) | {t for p in plans if p.experiment.eval.enabled
                                    for t in p.experiment.eval.tasks}
    missing = [t for t in sweep.alarm.tasks if t not in evaluated]
    if missing:
        raise ConfigError(f"alarm.tasks={list(sweep.alarm.tasks)}: no member evaluates "
                          f"{', '.join(missing)} (their eval.tasks: "
                          f"{sorted(evaluated - set(MMLU_GROUPS))} besides the MMLU groups "
                          f"{', '.join(MMLU_GROUPS)}): add it to eval.tasks in the sweep's "
                          f"overrides or remove it from alarm.tasks")


def shared_summary(plans: list[MemberPlan]) -> list[str]:
    lines = []
    for p in plans:
        for stage, owner in p.graph.external.items():
            lines.append(f"  {p.name:<24} {stage:<20} shared from {Path(owner).name}")
    return lines
