#!/usr/bin/env python3
"""Nightly sweeps: plan and submit every member of a sweep, then collect, report and alarm.

    python launch/sweep.py configs/sweeps/nightly_tiny.yaml --cluster ci [--date 2026-01-31]
    python launch/sweep.py configs/sweeps/nightly_tiny.yaml --dry-run     # graphs + pre-flight
    python launch/sweep.py configs/sweeps/nightly_tiny.yaml --retry-failed  # resubmit failures
    python launch/sweep.py check configs/sweeps/nightly_tiny.yaml [--date 2026-01-31]

Runs go to <root>/<sweep>/<date>/<member> (one per night: rerunning the same date submits
nothing already submitted or finished; failed members are resubmitted only with
--retry-failed). The dry run submits nothing but runs every member's pre-flight, as the launch
does: it exits 2 when any member would be refused. `check` appends each finished member's scores
to <root>/<sweep>/history.csv, writes <root>/<sweep>/<date>/trend/trend.{md,png} (partial, with
each missing member's state, while members have no results) and exits 1 when a member regressed
(drop larger than the sweep's stderr threshold), 3 when a member has no results for the night
(failed, still running or not launched), 2 on a config error or a damaged file (history.csv,
a member's results, selection.json or manifest: the message names the file), 0 otherwise.
A sweep's `select:` is every member's `select:` (the experiment's checkpoint selection).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kd.paths import RunPaths  # noqa: E402
from launch import (
    cli,  # noqa: E402
    history,  # noqa: E402
)
from launch import config as cfg  # noqa: E402
from launch import manifest as mf  # noqa: E402
from launch import sweep_plan as sp  # noqa: E402
from launch.backends import FAILED  # noqa: E402
from launch.graph import JobGraph  # noqa: E402
from launch.schema import ConfigError, to_dict  # noqa: E402
from launch.start import Launch  # noqa: E402

REGRESSED, MISSING = 1, 3
NIGHT_MANIFEST = "sweep.json"


def parse_args(argv: list[str]) -> argparse.Namespace:
    """``run`` (the default: ``sweep.py SWEEP ...`` is ``sweep.py run SWEEP ...``) or
    ``check``."""
    if not argv or argv[0] not in ("run", "check", "-h", "--help"):
        argv = ["run", *argv]
    p = cli.parser(__doc__)
    sub = p.add_subparsers(dest="command", required=True, metavar="{run,check}")
    run = sub.add_parser("run", help="launch tonight's members (the default)",
                         description="Plan and submit every member of a sweep; idempotent "
                                     "per night.")
    check = sub.add_parser("check", help="collect results, write the trend report, alarm",
                           description="Record finished members in history.csv, write the "
                                       "trend report; exit 1 on a regression, 3 when a "
                                       "member has no results.")
    for q in (run, check):
        q.add_argument("sweep", help="sweep YAML (path or name in configs/sweeps)")
        q.add_argument("--date", help="the night, YYYY-MM-DD (default: today)")
    cli.add_cluster(run, None, help="cluster profile (default: the sweep's `cluster`)")
    cli.add_dry_run(run, "print every member's graph and pre-flight; queue nothing")
    run.add_argument("--retry-failed", action="store_true",
                     help="resubmit members whose stages failed or were cancelled")
    run.add_argument("--wait", action="store_true", help="wait for every run, then `check`")
    cli.add_overrides(run, "cluster_overrides", "cluster overrides (partition=batch)")
    return cli.parse(p, argv, "cluster_overrides" if argv[0] == "run" else None)


# ---------------------------------------------------------------- run
def graph_state(graph: JobGraph, config_hash: str) -> str:
    """new | done | active (every stage submitted) | partial | failed; ConfigError on conflict."""
    from launch import status

    paths = RunPaths(graph.run_dir)
    manifest = mf.read(paths.manifest)
    if manifest is None:
        return "new"
    if manifest.get("config_hash") != config_hash:
        raise ConfigError(f"{graph.run_dir} holds a run of another config (hash "
                          f"{manifest.get('config_hash')}, now {config_hash}): the sweep changed "
                          f"since it was launched tonight; launch it with another --date")
    if all(paths.stage_done(s).exists() for s in graph.stages):
        return "done"
    _, rows = status.stage_states(graph.run_dir)
    rows = {s: r for s, r in rows.items() if s in graph.stages}
    if any(r["state"] in FAILED for r in rows.values()):
        return "failed"
    return "active" if set(rows) == set(graph.stages) and all(
        r["job_id"] for r in rows.values()) else "partial"


def prepare(plans: list[sp.MemberPlan], cluster: cfg.Cluster) -> dict[str, Launch]:
    """{member: its launch} (``launch.start.prepare``: the layout and every value that reaches
    a script are refused, naming the member, before any member is queued)."""
    from launch import start

    out = {}
    for p in plans:
        try:
            out[p.name] = start.prepare(p.experiment, cluster, p.graph,
                                        f"{p.experiment.name}-{p.name}")
        except ConfigError as e:
            raise ConfigError(f"member {p.name}: {e}") from e
    return out


def launch_graph(run: Launch, plan: sp.MemberPlan, retry: bool,
                 echo: Callable[[str], None]) -> list[str]:
    """Launch one member (``Launch.start``, as ``launch/distill.py`` does) unless tonight already
    did; returns the stages submitted now."""
    graph = run.graph
    state = graph_state(graph, plan.config_hash)
    label = plan.name
    if state in ("done", "active") or (state == "failed" and not retry):
        hint = "; pass --retry-failed to resubmit" if state == "failed" else ""
        echo(f"{label}: {state}, nothing submitted{hint}")
        return []
    echo(f"{label}: {state}, launching")
    run.start(echo=lambda line: echo("  " + line))
    manifest = mf.read(RunPaths(graph.run_dir).manifest) or {}
    return list((manifest.get("launches") or [{}])[-1].get("submitted", []))


def run_sweep(sweep: sp.Sweep, cluster: cfg.Cluster, date: str, plans: list[sp.MemberPlan], *,
              retry: bool = False, echo: Callable[[str], None] = print,
              launches: dict[str, Launch] | None = None) -> dict[str, list[str]]:
    """Launch every member (owners of shared stages come first: sweep order); returns
    {run dir: stages submitted now} and records the launch in the night's sweep.json.
    ``launches``: the members' prepared launches (``prepare``; made here when None)."""
    launches = prepare(plans, cluster) if launches is None else launches
    night = sp.night_dir(sweep, date)
    night.mkdir(parents=True, exist_ok=True)
    submitted: dict[str, list[str]] = {}
    for p in plans:
        stages = launch_graph(launches[p.name], p, retry, echo)
        if stages:
            submitted[str(p.graph.run_dir)] = stages
    write_night_manifest(sweep, cluster, date, plans, submitted)
    total = sum(len(v) for v in submitted.values())
    echo(f"sweep {sweep.name} {date}: {total} job(s) submitted; runs in {night}")
    return submitted


def write_night_manifest(sweep: sp.Sweep, cluster: cfg.Cluster, date: str,
                         plans: list[sp.MemberPlan], submitted: dict[str, list[str]]) -> Path:
    path = sp.night_dir(sweep, date) / NIGHT_MANIFEST
    night = mf.read(path) or {"kdlaunch_sweep": 1, "sweep": sweep.name, "date": date,
                              "created": mf.now(), "launches": []}
    night.update(config=to_dict(sweep), cluster=cluster.name, members={
        p.name: {"run_dir": str(p.run_dir), "config_hash": p.config_hash,
                 "overrides": list(p.overrides),
                 "shared": {s: str(o) for s, o in p.graph.external.items()}} for p in plans})
    night["launches"].append({"time": mf.now(), "argv": sys.argv[1:], "submitted": submitted})
    mf.write(path, night)
    return path


def wait_all(plans: list[sp.MemberPlan], echo: Callable[[str], None]) -> int:
    from launch import status

    code = 0
    for p in plans:
        code |= status.wait_for_run(p.graph.run_dir, echo=lambda *_: None, poll_s=3)
    echo(f"all runs ended{' (some failed)' if code else ''}")
    return code


def dry_run(sweep: sp.Sweep, cluster: cfg.Cluster, date: str, plans: list[sp.MemberPlan],
            errors: dict[str, str]) -> str:
    """Every member's graph and what its pre-flight says (``errors``: ``preflight_errors``)."""
    from launch.submit import describe

    lines = [f"sweep {sweep.name} {date} on {cluster.name}: {len(plans)} member(s)"]
    for p in plans:
        lines += ["", f"== member {p.name} (config {p.config_hash}): {' '.join(p.overrides)}",
                  describe(p.graph)]
        lines.append(f"pre-flight: {'a real launch would stop here: ' + errors[p.name]}"
                     if p.name in errors else "pre-flight: ok")
    lines += ["", "shared stages:", *(sp.shared_summary(plans) or ["  (none)"])]
    from launch import cost  # tonight's estimate: per member, the total, the longest member

    lines += ["", *cost.night_lines(plans, cluster)]
    if errors:
        lines += ["", f"pre-flight: {len(errors)} of {len(plans)} member(s) would be refused "
                      f"({', '.join(errors)}); nothing was queued"]
    return "\n".join(lines)


# ---------------------------------------------------------------- check
def night_members(sweep: sp.Sweep, date: str) -> dict[str, dict]:
    """{member: {run_dir, config_hash}} from the night's sweep.json (checked by
    ``manifest.read``), else planned from the sweep file."""
    night = mf.read(sp.night_dir(sweep, date) / NIGHT_MANIFEST)
    if night:
        return night.get("members", {})
    out = {}
    cluster = cfg.load_cluster(sweep.cluster, list(sweep.cluster_overrides))
    for m in sp.expand(sweep):
        _, chash = sp.load_member(sweep, m, cluster)
        out[m.name] = {"run_dir": str(sp.night_dir(sweep, date) / m.name), "config_hash": chash}
    return out


def run_state(run_dir: Path) -> str:
    """Where a run without results stands, for the report: 'not launched', 'failed: <stage>
    <STATE>, ...' or 'waiting: <stage> <STATE>, ...' (stages not completed yet)."""
    from launch import status

    if mf.read(RunPaths(run_dir).manifest) is None:
        return "not launched"
    _, rows = status.stage_states(run_dir)
    failed = [f"{s} {r['state']}" for s, r in rows.items() if r["state"] in FAILED]
    if failed:
        return "failed: " + ", ".join(failed)
    pending = [f"{s} {r['state']}" for s, r in rows.items() if r["state"] != "COMPLETED"]
    return "waiting: " + (", ".join(pending) or "its results file")


def collect(sweep: sp.Sweep, date: str, echo: Callable[[str], None]) -> dict[str, str]:
    """Append every finished member's scores to the history (a member that selects its
    checkpoint: its full eval of the chosen iteration); returns the members without results
    tonight and where each stands (``run_state``)."""
    rows, missing = [], {}
    for name, m in night_members(sweep, date).items():
        run_dir = Path(m["run_dir"])
        manifest = mf.read(RunPaths(run_dir).manifest)
        result = history.member_result(run_dir, manifest) if manifest else None
        if result is None:
            missing[name] = run_state(run_dir)
            continue
        if result.candidates:
            echo(f"{name}: iteration {result.iteration} selected "
                 f"({RunPaths(run_dir).select / 'selection.md'})")
        rows += history.rows_from_record(
            result.record, date=date, sweep=sweep.name, member=name,
            config_hash=m["config_hash"], iteration=result.iteration,
            results_file=str(result.results_file), candidates=result.candidates,
            recorded=mf.now())
    if rows:
        history.upsert(history.history_file(sp.sweep_dir(sweep)), rows)
    return missing


def check(sweep: sp.Sweep, date: str, echo: Callable[[str], None] = print) -> int:
    """Collect, write the trend report (partial while members have no results) and return the
    exit code: 1 regression, 3 a member without results (failed or still running), else 0."""
    from kd import trend

    missing = collect(sweep, date, echo)
    hist = history.read(history.history_file(sp.sweep_dir(sweep)))
    a = sweep.alarm
    costs = trend.record_costs(sp.sweep_dir(sweep), date, sweep.name, {  # measured / predicted
        name: Path(m["run_dir"]) for name, m in night_members(sweep, date).items()})
    md, comparison = trend.write(hist, date, sp.night_dir(sweep, date) / "trend",
                                 sweep=sweep.name, z=a.z, tasks=a.tasks,
                                 min_drop_points=a.min_drop_points, missing=missing, costs=costs)
    echo(md.read_text())
    echo(f"trend report: {md}")
    regs = trend.regressions(comparison)
    if len(regs):
        echo(f"ALARM: {len(regs)} regression(s) in sweep {sweep.name} on {date}")
        return REGRESSED
    if missing:
        echo(f"{len(missing)} member(s) without results for {date}: {', '.join(missing)}")
        return MISSING
    return 0


# ---------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        sweep = sp.load_sweep(args.sweep)
        date = sp.parse_date(args.date)
        if args.command == "check":
            return check(sweep, date)
        cluster = cfg.load_cluster(args.cluster or sweep.cluster,
                                   [*sweep.cluster_overrides, *args.cluster_overrides])
        from launch import cost

        cluster = cost.with_site_facts(cluster)  # GPU kind, partition/QOS limit, from SLURM
        plans = sp.plan_sweep(sweep, cluster, date)
        launches = prepare(plans, cluster)  # launch.shell refuses a bad value, naming the member
        if args.dry_run:
            errors = preflight_errors(plans, launches)
            print(dry_run(sweep, cluster, date, plans, errors))
            for name, e in errors.items():
                print(f"error: member {name}: {e}", file=sys.stderr)
            return cli.EXIT_INPUT if errors else cli.EXIT_OK
        preflight_all(plans, launches)
        print("\n".join(cost.night_lines(plans, cluster)))
        run_sweep(sweep, cluster, date, plans, retry=args.retry_failed, launches=launches)
    except ConfigError as e:  # launch.shell's refusals, damaged manifests, history, results
        return cli.input_error(str(e))
    except OSError as e:  # an unreadable sweep file or an unwritable sweep directory
        return cli.input_error(f"{e.filename or ''}: {e.strerror}; check the path and its "
                               f"permissions")
    if not args.wait:
        return 0
    wait_all(plans, print)
    try:
        return check(sweep, date)
    except ConfigError as e:  # a damaged history or results file
        return cli.input_error(str(e))


def preflight_errors(plans: list[sp.MemberPlan],
                     launches: dict[str, Launch]) -> dict[str, str]:
    """{member: pre-flight error} for every member a launch would refuse (``Launch.preflight``,
    the checks of ``launch/distill.py``, the live cluster included; members with the same
    config are checked once)."""
    errors: dict[str, str] = {}
    by_hash: dict[str, str | None] = {}
    for p in plans:
        if p.config_hash not in by_hash:
            try:
                launches[p.name].preflight()
                by_hash[p.config_hash] = None
            except ConfigError as e:
                by_hash[p.config_hash] = str(e)
        if by_hash[p.config_hash]:
            errors[p.name] = by_hash[p.config_hash]
    return errors


def preflight_all(plans: list[sp.MemberPlan], launches: dict[str, Launch]) -> None:
    """Refuse the whole launch, naming every member's error, when any member would fail."""
    errors = preflight_errors(plans, launches)
    if errors:
        raise ConfigError("; ".join(f"member {name}: {e}" for name, e in errors.items()))


if __name__ == "__main__":
    sys.exit(main())
