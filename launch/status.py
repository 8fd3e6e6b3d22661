#!/usr/bin/env python3
"""Run control from any shell, using only the run directory.

    python launch/status.py RUN_DIR                 # table of stages: state, job, elapsed, log
    python launch/status.py RUN_DIR --logs distill  # tail of one stage's log
    python launch/status.py RUN_DIR --cancel        # cancel every queued/running job of the run
    python launch/status.py RUN_DIR --wait          # block until the run ends

Exit code: 0 when every stage completed (or, without --wait, nothing failed yet), 1 when a
stage failed or was cancelled, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kd.paths import RunPaths  # noqa: E402
from launch import manifest as mf  # noqa: E402
from launch import slurm_state  # noqa: E402
from launch.schema import ConfigError  # noqa: E402

FAILED = {"FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE"}
ERROR_WORDS = ("Error", "error:", "Traceback", "Killed", "CANCELLED", "DUE TO TIME LIMIT",
               "Exception", "FAILED")


def stage_states(run_dir: Path) -> tuple[dict, dict[str, dict]]:
    """Manifest + per-stage state merged from done markers, the manifest and sacct."""
    paths = RunPaths(run_dir)
    manifest = mf.read(paths.manifest)
    if manifest is None:
        raise mf.ManifestError(f"{run_dir} has no manifest.json: not a kdlaunch run directory; "
                               f"pass the directory the launcher printed")
    stages = manifest.get("stages", {})
    ids = [s["job_id"] for s in stages.values() if s.get("job_id")]
    is_slurm = manifest.get("cluster", {}).get("executor") == "slurm"
    acct = slurm_state.query(ids) if is_slurm else {}
    out: dict[str, dict] = {}
    for stage, rec in stages.items():
        row = {"job_id": rec.get("job_id", ""), "state": rec.get("state", "NOT SUBMITTED"),
               "elapsed": "", "exit_code": "", "log": rec.get("log", ""),
               "error": rec.get("error", ""), "restarts": ""}
        info = acct.get(str(rec.get("job_id")))
        if info:
            row.update(state=info["state"], elapsed=info["elapsed"],
                       exit_code=info["exit_code"], restarts=info["restarts"])
            if info["state"] == "CANCELLED" and "Dependency" in _reason(rec.get("job_id")):
                row["error"] = "dependency failed"
        if paths.stage_done(stage).exists():
            row["state"] = "COMPLETED"
        out[stage] = row
    return manifest, out


def _reason(job_id: str | None) -> str:
    if not job_id:
        return ""
    import subprocess

    try:
        return subprocess.run(["squeue", "-h", "-o", "%r", "-j", str(job_id)], capture_output=True,
                              text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def error_lines(log: str, n: int = 8) -> list[str]:
    """The lines of a log that matter when a stage failed: errors and the traceback's tail."""
    try:
        lines = Path(log).read_text(errors="replace").splitlines()
    except OSError:
        return []
    hits = [ln for ln in lines if any(w in ln for w in ERROR_WORDS)]
    return (hits or lines)[-n:]


def render(run_dir: Path) -> tuple[str, int]:
    manifest, rows = stage_states(run_dir)
    header = f"run {run_dir}  (config {manifest.get('config_hash')}, {manifest.get('cluster', {}).get('name')})"
    lines = [header, f"{'stage':<20} {'state':<12} {'job':<10} {'elapsed':<10} {'restarts':<8} log"]
    code = 0
    for stage, r in rows.items():
        lines.append(f"{stage:<20} {r['state']:<12} {r['job_id'] or '-':<10} "
                     f"{r['elapsed'] or '-':<10} {r['restarts'] if r['restarts'] != '' else '-':<8} "
                     f"{r['log'] or '-'}")
        if r["state"] in FAILED:
            code = 1
            detail = r["error"] or (f"exit code {r['exit_code']}" if r["exit_code"] else "")
            if detail:
                lines.append(f"    -> {detail}")
            if r["state"] != "CANCELLED" or not r["error"]:
                lines += [f"    | {ln}" for ln in error_lines(r["log"])]
    return "\n".join(lines), code


def is_finished(rows: dict[str, dict]) -> bool:
    return all(r["state"] == "COMPLETED" or r["state"] in FAILED for r in rows.values())


def wait_for_run(run_dir: Path, echo=print, poll_s: float = 5.0, timeout_s: float | None = None) -> int:
    start = time.time()
    last = None
    while True:
        _, rows = stage_states(run_dir)
        summary = ", ".join(f"{s}={r['state']}" for s, r in rows.items())
        if summary != last:
            echo(f"[{time.strftime('%H:%M:%S')}] {summary}")
            last = summary
        if is_finished(rows):
            text, code = render(run_dir)
            echo(text)
            return code
        if timeout_s is not None and time.time() - start > timeout_s:
            echo("timed out waiting for the run")
            return 1
        time.sleep(poll_s)


def tail(run_dir: Path, stage: str, n: int) -> str:
    _, rows = stage_states(run_dir)
    if stage not in rows:
        raise ConfigError(f"--logs {stage!r}: no such stage; stages: {', '.join(rows)}")
    log = rows[stage]["log"]
    if not log or not Path(log).exists():
        return f"{stage}: no log yet ({rows[stage]['state']})"
    lines = Path(log).read_text(errors="replace").splitlines()
    return "\n".join([f"==> {log} <=="] + lines[-n:])


def cancel(run_dir: Path) -> str:
    manifest, rows = stage_states(run_dir)
    ids = [r["job_id"] for r in rows.values()
           if r["job_id"] and r["state"] not in FAILED and r["state"] != "COMPLETED"]
    if manifest.get("cluster", {}).get("executor") == "slurm":
        slurm_state.cancel(ids)
    return f"cancelled {len(ids)} job(s): {' '.join(ids) or '-'}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=str)
    p.add_argument("--logs", metavar="STAGE", help="print the tail of STAGE's log")
    p.add_argument("-n", type=int, default=40, help="lines for --logs (default 40)")
    p.add_argument("--cancel", action="store_true", help="cancel the run's unfinished jobs")
    p.add_argument("--wait", action="store_true", help="wait until every stage has ended")
    args = p.parse_args(argv)
    if not args.run_dir.strip():
        print("error: RUN_DIR is empty; pass the run directory the launcher printed",
              file=sys.stderr)
        return 2
    run_dir = Path(args.run_dir).absolute()
    if run_dir.exists() and not run_dir.is_dir():
        print(f"error: {run_dir} is a file, not a run directory; pass the directory that holds "
              f"manifest.json", file=sys.stderr)
        return 2
    try:
        if args.logs:
            print(tail(run_dir, args.logs, args.n))
            return 0
        if args.cancel:
            print(cancel(run_dir))
            return 0
        if args.wait:
            return wait_for_run(run_dir)
        text, code = render(run_dir)
    except ConfigError as e:  # a bad manifest (mf.ManifestError) or a bad argument
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(text)
    return code


if __name__ == "__main__":
    sys.exit(main())
