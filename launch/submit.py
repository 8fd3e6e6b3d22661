"""Act on a JobGraph: submit it to SLURM (afterok edges) or run it locally in dependency order.

Finished stages (their ``stages/<stage>.done`` marker exists) are skipped and say so; stages
whose job is still queued or running from an earlier launch are adopted, not resubmitted.
The manifest is rewritten as soon as each job id is known. Stages a graph shares from another
run (``graph.external``, sweeps) are waited on through that run's manifest, or not at all once
their done marker exists.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shlex
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from kd.job import StageJob
from kd.paths import RunPaths
from launch import manifest as mf
from launch import shell, slurm_state
from launch.config import Cluster
from launch.executors import (
    job_folder,
    local_executor,
    python_command,
    sbatch_text,
    setup_lines,
    slurm_executor,
)
from launch.plan import Job, JobGraph

ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED",
          "REQUEUE_HOLD", "REQUEUE_FED", "PREEMPTED"}


def describe(graph: JobGraph) -> str:
    lines = [f"run directory: {graph.run_dir}", "job graph:"]
    for j in graph.jobs:
        deps = f"  afterok: {', '.join(j.deps)}" if j.deps else "  (no dependency)"
        shape = f"{j.nodes} node(s) x {j.tasks_per_node} task(s)"
        if j.gpus_per_node:
            shape += f", {j.gpus_per_node} GPU(s)/node"
        lines.append(f"  {j.stage:<20} {j.module:<12} {shape}, {j.time_min} min{deps}")
    for stage, owner in graph.external.items():
        lines.append(f"  {stage:<20} shared: runs in {owner}")
    return "\n".join(lines)


def dry_run_text(graph: JobGraph, cluster: Cluster, run_name: str) -> str:
    out = [describe(graph), ""]
    if cluster.executor != "slurm":
        out.append(f"cluster {cluster.name!r} runs locally (submitit LocalExecutor), "
                   f"one stage after another; no sbatch scripts.")
        return "\n".join(out)
    for j in graph.jobs:
        deps = [f"<{d}>" for d in j.deps]
        out += [f"===== sbatch: {j.stage} =====",
                sbatch_text(j, cluster, graph.run_dir, run_name, deps)]
    return "\n".join(out)


def check_scripts(graph: JobGraph, cluster: Cluster, run_name: str) -> None:
    """Render every stage's sbatch script once, so launch.shell refuses a bad value (naming
    the field) before the run directory, the manifest or any job exists."""
    if cluster.executor != "slurm":
        python_command(cluster)
        for j in graph.jobs:
            setup_lines(cluster, j)
            shell.check("run directory", job_folder(graph.run_dir, j.stage))
        return
    for j in graph.jobs:
        sbatch_text(j, cluster, graph.run_dir, run_name, ["0" for _ in j.deps])


def emit_sbatch(graph: JobGraph, cluster: Cluster, run_name: str, out_dir: Path) -> Path:
    """Write the standalone form of the run (one sbatch per stage + submit.sh) to ``out_dir``."""
    import json
    from string import Template

    from launch.executors import TEMPLATES, standalone_sbatch_text

    out_dir = Path(out_dir).absolute()
    shell.sbatch_value("--emit-sbatch directory", out_dir)
    check_scripts(graph, cluster, run_name)  # refuse before anything is written
    (out_dir / "specs").mkdir(parents=True, exist_ok=True)
    for job in graph.jobs:
        spec_file = out_dir / "specs" / f"{job.stage}.json"
        spec_file.write_text(json.dumps(asdict(job.spec), indent=2) + "\n")
        text = standalone_sbatch_text(job, cluster, graph.run_dir, run_name, spec_file)
        (out_dir / f"{job.stage}.sbatch").write_text(text)
    folders = " ".join(shell.quote("run directory", job_folder(graph.run_dir, j.stage))
                       for j in graph.jobs)
    lines = [f"mkdir -p {folders}  # sbatch needs its --output folders"]
    lines += [" ".join(shell.quote("stage name", w) for w in ["submit", j.stage, *j.deps])
              for j in graph.jobs]
    script = Template((TEMPLATES / "submit_run.sh.tmpl").read_text()).substitute(
        submit_script=shell.quote("--emit-sbatch directory", out_dir / "submit.sh"),
        submit_lines="\n".join(lines))
    path = out_dir / "submit.sh"
    path.write_text(script)
    path.chmod(0o755)
    return path


LOCK_WAIT_S = float(os.environ.get("KD_LOCK_WAIT_S", "120"))


_HELD: set[str] = set()  # run dirs whose lock this process holds (the lock is re-entrant)


@contextlib.contextmanager
def run_lock(run_dir: Path, wait_s: float | None = None):
    """Exclusive ``RUN/.launch.lock`` (fcntl.flock) for the whole launch.

    A concurrent launch into the same run directory waits up to ``wait_s`` (default
    ``$KD_LOCK_WAIT_S`` or 120 s), then either gets the lock (and adopts what the first one
    recorded) or refuses with a ConfigError. Re-entrant within a process; the lock dies with
    its process."""
    from launch.schema import ConfigError

    path = Path(run_dir) / ".launch.lock"
    key = str(Path(run_dir).resolve())
    if key in _HELD:
        yield path
        return
    wait_s = LOCK_WAIT_S if wait_s is None else wait_s
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = path.read_text().strip() or "another process"
                    raise ConfigError(
                        f"--run-dir {run_dir}: another launch ({holder}) has held {path} for "
                        f"more than {wait_s:.0f} s; wait for it to finish, then launch again "
                        f"(it adopts what is queued)") from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {mf.now()}\n".encode())
        _HELD.add(key)
        yield path
    finally:
        _HELD.discard(key)
        os.close(fd)  # releases the flock


def _refresh(manifest: dict, path: Path) -> None:
    """Under the lock: take the job ids and launches a concurrent launch recorded meanwhile."""
    disk = mf.read(path)
    if disk and disk.get("config_hash") == manifest.get("config_hash"):
        manifest["stages"], manifest["launches"] = disk["stages"], disk["launches"]


def _stage_record(job: Job, graph: JobGraph) -> dict[str, Any]:
    return {"module": job.module, "deps": list(job.deps), "spec": asdict(job.spec),
            "folder": str(job_folder(graph.run_dir, job.stage))}


def launch(graph: JobGraph, cluster: Cluster, manifest: dict, run_name: str,
           wait: bool = False, echo=print) -> int:
    """Submit (or run) every unfinished stage, holding the run directory's lock. Returns the
    process exit code."""
    paths = RunPaths(graph.run_dir)
    paths.jobs.mkdir(parents=True, exist_ok=True)
    paths.stages.mkdir(parents=True, exist_ok=True)
    with run_lock(graph.run_dir):
        _refresh(manifest, paths.manifest)
        launch_entry = {"time": mf.now(), "cluster": cluster.name, "argv": sys.argv[1:],
                        "submitted": [], "skipped": [], "adopted": []}
        manifest["launches"].append(launch_entry)
        if cluster.executor == "local":
            return _run_local(graph, cluster, manifest, launch_entry, echo)
        return _submit_slurm(graph, cluster, manifest, launch_entry, run_name, wait, echo)


def _done(paths: RunPaths, stage: str) -> bool:
    return paths.stage_done(stage).exists()


def _submit_slurm(graph: JobGraph, cluster: Cluster, manifest: dict, entry: dict,
                  run_name: str, wait: bool, echo) -> int:
    paths = RunPaths(graph.run_dir)
    stages = manifest["stages"]
    old_ids = [s["job_id"] for s in stages.values() if s.get("job_id")]
    old_states = _live_states(old_ids)
    job_ids = external_job_ids(graph)
    for job in graph.jobs:
        rec = stages.setdefault(job.stage, {})
        rec.update(_stage_record(job, graph))
        if _done(paths, job.stage):
            rec["state"] = "COMPLETED"
            entry["skipped"].append(job.stage)
            echo(f"  {job.stage:<20} complete, skipped")
            continue
        prev = rec.get("job_id")
        if prev and old_states.get(prev, {}).get("state") in ACTIVE:
            job_ids[job.stage] = prev
            entry["adopted"].append(job.stage)
            echo(f"  {job.stage:<20} job {prev} still {old_states[prev]['state']}, kept")
            continue
        deps = [job_ids[d] for d in job.deps if d in job_ids]
        try:
            ex = slurm_executor(job, cluster, graph.run_dir, run_name, deps)
            sjob = ex.submit(StageJob(job.stage, job.module, job.spec))
        except Exception as e:  # sbatch refused midway: nothing of this launch stays queued
            return _abort(graph, manifest, entry, job.stage, e, echo)
        job_ids[job.stage] = sjob.job_id
        rec.update(job_id=sjob.job_id, state="SUBMITTED", submitted=mf.now(),
                   log=str(_log_path(graph, job, sjob.job_id)))
        rec.pop("error", None)
        entry["submitted"].append(job.stage)
        mf.write(paths.manifest, manifest)
        after = f"  (afterok {', '.join(deps)})" if deps else ""
        echo(f"  {job.stage:<20} submitted job {sjob.job_id}{after}")
    mf.write(paths.manifest, manifest)
    echo(f"status:  python launch/status.py {shlex.quote(str(graph.run_dir))}")
    echo(f"logs:    python launch/status.py {shlex.quote(str(graph.run_dir))} --logs STAGE")
    if not wait:
        return 0
    from launch.status import wait_for_run

    return wait_for_run(graph.run_dir, echo=echo)


def _abort(graph: JobGraph, manifest: dict, entry: dict, stage: str, error: Exception,
           echo) -> int:
    """Cancel the jobs this launch queued before ``stage`` failed to submit; record it all."""
    stages = manifest["stages"]
    ids = [str(stages[s]["job_id"]) for s in entry["submitted"] if stages[s].get("job_id")]
    message = " ".join(str(error).split())[:500]
    cancelled: list[str] = []
    if ids:
        try:
            subprocess.run(["scancel", *ids], capture_output=True, text=True, timeout=60,
                           check=True)
            cancelled = ids
        except (OSError, subprocess.SubprocessError) as e:
            echo(f"  could not cancel {', '.join(ids)}: {e}; cancel them by hand (scancel)")
    for s in entry["submitted"]:
        if str(stages[s].get("job_id")) in cancelled:
            stages[s].update(state="CANCELLED", error=f"cancelled: submitting {stage} failed")
    stages[stage].update(state="NOT_SUBMITTED", error=message)
    entry.update(failed_stage=stage, error=message, cancelled=cancelled)
    mf.write(RunPaths(graph.run_dir).manifest, manifest)
    echo(f"  {stage:<20} sbatch refused it: {message}")
    if cancelled:
        echo(f"  cancelled the jobs this launch had queued: {', '.join(cancelled)}")
    echo("nothing of this launch is left queued; fix the error and launch again")
    return 1


def _live_states(job_ids: list[str]) -> dict[str, dict]:
    """sacct's view of ``job_ids``, completed by squeue for the ones accounting does not show
    yet: a job queued a second ago by a concurrent launch (that held the run-dir lock before
    this one) is adopted, not submitted a second time."""
    states = slurm_state.query(job_ids) if job_ids else {}
    missing = [j for j in job_ids if j not in states]
    if not missing:
        return states
    try:
        out = subprocess.run(["squeue", "-h", "-o", "%i|%T", "-j", ",".join(missing)],
                             capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return states
    for line in out.splitlines():
        jid, _, state = line.strip().partition("|")
        if jid in missing and state:
            states[jid] = {"state": state}
    return states


def external_job_ids(graph: JobGraph) -> dict[str, str]:
    """Job ids of the unfinished stages this graph shares from other runs (sweeps)."""
    ids: dict[str, str] = {}
    for stage, owner in graph.external.items():
        owner_paths = RunPaths(owner)
        if _done(owner_paths, stage):
            continue
        rec = ((mf.read(owner_paths.manifest) or {}).get("stages") or {}).get(stage) or {}
        if not rec.get("job_id"):
            raise ValueError(f"stage {stage} of {graph.run_dir} is shared from {owner}, which has "
                             f"not submitted it: launch that run first")
        ids[stage] = str(rec["job_id"])
    return ids


def _run_local(graph: JobGraph, cluster: Cluster, manifest: dict, entry: dict, echo) -> int:
    paths = RunPaths(graph.run_dir)
    stages = manifest["stages"]
    # a shared stage that its own run did not finish blocks this run's dependents
    failed = {s for s, owner in graph.external.items() if not _done(RunPaths(owner), s)}
    for job in graph.jobs:
        rec = stages.setdefault(job.stage, {})
        rec.update(_stage_record(job, graph))
        if _done(paths, job.stage):
            rec["state"] = "COMPLETED"
            entry["skipped"].append(job.stage)
            echo(f"  {job.stage:<20} complete, skipped")
            continue
        blocked = [d for d in job.deps if d in failed]
        if blocked:
            failed.add(job.stage)
            rec.update(state="CANCELLED", error=f"dependency failed: {', '.join(blocked)}")
            mf.write(paths.manifest, manifest)
            echo(f"  {job.stage:<20} not run: {rec['error']}")
            continue
        ex = local_executor(job, cluster, graph.run_dir)
        ljob = ex.submit(StageJob(job.stage, job.module, job.spec))
        log = _log_path(graph, job, ljob.job_id)
        rec.update(job_id=str(ljob.job_id), state="RUNNING", submitted=mf.now(), log=str(log))
        rec.pop("error", None)
        entry["submitted"].append(job.stage)
        mf.write(paths.manifest, manifest)
        echo(f"  {job.stage:<20} running (local job {ljob.job_id}); log: {log}")
        try:
            ljob.results()
        except Exception:  # the stage failed: record it, keep going with independent stages
            failed.add(job.stage)
            rec.update(state="FAILED", finished=mf.now(), error=_last_error(log))
            echo(f"  {job.stage:<20} FAILED: {rec['error']}\n    log: {log}")
        else:
            rec.update(state="COMPLETED", finished=mf.now())
            echo(f"  {job.stage:<20} completed")
        mf.write(paths.manifest, manifest)
    mf.write(paths.manifest, manifest)
    if failed:
        echo(f"failed or not run: {', '.join(s for s in graph.stages if s in failed)}")
        return 1
    return 0


def _log_path(graph: JobGraph, job: Job, job_id: str) -> Path:
    """The log to follow: Megatron prints training progress (loss, iteration) on the last rank."""
    task = job.nodes * job.tasks_per_node - 1 if job.stage == "distill" else 0
    return job_folder(graph.run_dir, job.stage) / f"{job_id}_{task}_log.out"


def _last_error(log: Path) -> str:
    from launch.status import error_lines

    lines = error_lines(str(log), n=1)
    return lines[-1].strip() if lines else f"see {log}"
