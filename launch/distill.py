#!/usr/bin/env python3
"""Queue the whole KD pipeline: data prep -> distill -> HF export -> MMLU evals -> report.

    python launch/distill.py --cluster slurm --config configs/experiments/guide_llama31_8b.yaml
    python launch/distill.py --cluster local --config tiny_demo train.train_iters=20
    python launch/distill.py --cluster my_cluster --config X.yaml --dry-run

Overrides are dotted key=value pairs; keys starting with ``cluster.`` go to the cluster
profile (``cluster.partition=batch``), all others to the experiment (``train.lr=3e-4``).
With no arguments it runs the embedded default: the tiny demo on this machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from launch import cli, shell  # noqa: E402
from launch import config as cfg  # noqa: E402
from launch import manifest as mf  # noqa: E402
from launch.schema import ConfigError, to_dict  # noqa: E402

DEFAULT_CLUSTER = "local"
DEFAULT_CONFIG = "tiny_demo"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = cli.parser(__doc__)
    cli.add_cluster(p, DEFAULT_CLUSTER, help="cluster profile name (configs/clusters/NAME.yaml) "
                                              "or path; default local")
    cli.add_config(p, DEFAULT_CONFIG)
    cli.add_run_dir(p, "run directory (default runs/<name>-<timestamp>)")
    cli.add_dry_run(p, "print the job graph and every sbatch script; submit nothing")
    p.add_argument("--emit-sbatch", type=str, metavar="DIR",
                   help="write the run as standalone sbatch scripts + submit.sh to DIR (for "
                        "hand submission; needs a SLURM cluster profile); submit nothing")
    p.add_argument("--new-run", action="store_true",
                   help="if --run-dir holds a run with a different config, start a new run in "
                        "RUN_DIR-2 (-3, ...) instead of refusing")
    p.add_argument("--wait", action="store_true",
                   help="(SLURM) wait for the run to end and print its status and report")
    cli.add_overrides(p, "overrides", "experiment overrides; cluster.KEY=VALUE for the cluster")
    return cli.parse(p, argv, "overrides")


def split_overrides(overrides: list[str]) -> tuple[list[str], list[str]]:
    exp, cl = [], []
    for o in overrides:
        (cl if o.startswith("cluster.") else exp).append(o.removeprefix("cluster."))
    return exp, cl


def choose_run_dir(args: argparse.Namespace, exp_name: str, exp_hash: str) -> Path:
    """The run directory: refuse one that belongs to a different config (unless --new-run)."""
    validate_name(exp_name)
    if args.run_dir is None:
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        return (Path("runs") / f"{exp_name}-{stamp}").absolute()
    run_dir = validate_dir("--run-dir", args.run_dir)
    candidate, n = run_dir, 1
    while True:
        old = mf.read(candidate / "manifest.json")
        if old is None or old.get("config_hash") == exp_hash:
            return candidate
        if not args.new_run:
            raise ConfigError(
                f"--run-dir {run_dir} belongs to a different config (hash "
                f"{old.get('config_hash')} there, {exp_hash} now); its results are kept. Use "
                f"another --run-dir, or pass --new-run to start a new run beside it")
        n += 1
        candidate = run_dir.with_name(f"{run_dir.name}-{n}")


NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*\Z")


def validate_name(name: str) -> None:
    """The experiment name becomes a directory name and a SLURM job name."""
    if not isinstance(name, str) or not NAME.match(name) or ".." in name or len(name) > 100:
        raise ConfigError(f"name: {name!r} is not a valid experiment name; use letters, digits, "
                          f"'.', '_', '+' and '-' (no '/', no '..', no spaces, at most 100)")


def validate_dir(flag: str, text: str) -> Path:
    """A directory the launcher will create or write into: not empty, not a file, writable."""
    if not text.strip():
        raise ConfigError(f"{flag}: empty; give a directory path (e.g. runs/my-run)")
    path = Path(text).absolute()
    shell.check(flag, str(path))
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path}: is a file, not a directory; choose another path")
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{flag} {path}: {probe} is a file, so the directory cannot be "
                          f"created; choose another path")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path}: {probe} is not writable by you; choose another path")
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    exp_over, cl_over = split_overrides(args.overrides)
    try:
        for override in args.overrides:
            # YAML would fold a newline in an override into a space: refuse it, naming the key
            key = override.split("=", 1)[0]
            if shell.has_control(override):
                shell.check(key, override)
        cluster = cfg.load_cluster(args.cluster, cl_over)
        from launch import cost, layout

        cluster = cost.with_site_facts(cluster)  # GPU kind, partition/QOS limit, from SLURM

        resumed = validate_dir("--run-dir", args.run_dir) if args.run_dir else None
        experiment, chosen = layout.load_experiment(args.config, exp_over, cluster, resumed)
        if chosen.auto:
            print(chosen.describe())
        exp_resolved = to_dict(experiment)
        cluster_resolved = to_dict(cluster)
        shell.refuse_secrets(exp_resolved, "")
        shell.refuse_secrets(cluster_resolved, "cluster")
        exp_hash = mf.config_hash(exp_resolved)
        run_dir = choose_run_dir(args, experiment.name, exp_hash)
        from launch import plan as planner
        from launch import start

        graph = planner.plan(experiment, cluster, run_dir)
        run = start.prepare(experiment, cluster, graph, experiment.name)
        if args.emit_sbatch is not None:
            out_dir = validate_dir("--emit-sbatch", args.emit_sbatch)
            print(f"wrote {run.backend.emit_scripts(graph, out_dir)}")
            return 0
        if args.dry_run:
            print(run.dry_run_text())
            print("\n" + run.estimate())
            try:
                run.preflight()
            except ConfigError as e:
                # exit 2 so that `--dry-run` can serve as a check in scripts
                print(f"\npre-flight: a real launch would stop here: {e}")
                return cli.input_error(str(e), queued_note=True)
            return 0
        run.preflight()
    except ConfigError as e:
        return cli.input_error(str(e), queued_note=True)
    except UnicodeDecodeError as e:  # a config read as text before the schema could say which
        return cli.input_error(f"--config {args.config} or --cluster {args.cluster}: not UTF-8 "
                               f"text ({e.reason} at byte {e.start}); save it as UTF-8",
                               queued_note=True)
    print(run.describe())
    print(run.estimate())
    try:
        code = run.start(wait=args.wait)
    except ConfigError as e:
        # "nothing was queued" is sure only when the run directory could not even be created
        return cli.input_error(str(e), queued_note=not run_dir.exists())
    _print_report(run_dir)  # when the run has ended (local, or --wait): its report
    print(f"run directory: {run_dir}")
    return code


def _print_report(run_dir: Path) -> None:
    """The run's report, once its report stage is done."""
    from kd.paths import RunPaths

    paths = RunPaths(run_dir)
    if paths.stage_done("report").exists() and (paths.report / "report.md").is_file():
        print("\n" + (paths.report / "report.md").read_text())


if __name__ == "__main__":
    sys.exit(main())
