"""Act on a JobGraph through a backend (launch/backends: SLURM with afterok edges, or this
machine): one loop for both.

Finished stages (their ``stages/<stage>.done`` marker exists) are skipped and say so; stages
whose job is still queued or running from an earlier launch are adopted, not resubmitted.
The manifest is rewritten as soon as each job id is known. A submission refused midway cancels
what this launch had queued and records it. Stages a graph shares from another run
(``graph.external``, sweeps) are waited on through that run's manifest, or not at all once
their done marker exists. How a launch ends once its jobs are queued is the backend's
``finish``: a local backend follows its jobs to the end (``follow``), SLURM's returns (or waits
for the run, ``--wait``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shlex
import socket
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kd.paths import RunPaths
from launch import backends
from launch import manifest as mf
from launch.backends import ACTIVE, COMPLETED, FAILED, Backend, SubmitError
from launch.config import Cluster
from launch.executors import job_folder
from launch.graph import JobGraph


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


def launch(graph: JobGraph, cluster: Cluster, manifest: mf.Manifest, run_name: str,
           wait: bool = False, echo=print, backend: Backend | None = None,
           poll_s: float = 0.5) -> int:
    """Submit every unfinished stage through the cluster's backend, holding the run
    directory's lock; then the backend ends the launch (``Backend.finish``: a local backend
    follows its jobs to the end; SLURM returns, or waits for the run with ``wait``). Returns the
    process exit code."""
    backend = backend or backends.for_cluster(cluster, graph.run_dir, run_name)
    paths = RunPaths(graph.run_dir)
    paths.jobs.mkdir(parents=True, exist_ok=True)
    paths.stages.mkdir(parents=True, exist_ok=True)
    with run_lock(graph.run_dir):
        manifest.refresh()  # what a concurrent launch recorded meanwhile
        entry = manifest.begin_launch(cluster.name, sys.argv[1:])
        ids = _submit_graph(graph, backend, manifest, entry, echo)
        if ids is None:
            return 1
        return backend.finish(_Launched(graph, backend, manifest, ids, echo, poll_s), wait)


@dataclass
class _Launched:
    """A launch whose jobs are queued, as ``Backend.finish`` sees it (``backends.Launched``)."""

    graph: JobGraph
    backend: Backend
    manifest: mf.Manifest
    ids: dict[str, str]
    echo: Any
    poll_s: float

    def follow(self) -> int:
        return follow(self.graph, self.backend, self.manifest, self.ids, self.echo, self.poll_s)

    def wait(self) -> int:
        from launch.status import wait_for_run

        return wait_for_run(self.graph.run_dir, echo=self.echo)

    def hint(self) -> None:
        run = shlex.quote(str(self.graph.run_dir))
        self.echo(f"status:  python launch/status.py {run}")
        self.echo(f"logs:    python launch/status.py {run} --logs STAGE")


def _done(paths: RunPaths, stage: str) -> bool:
    return paths.stage_done(stage).exists()


def _submit_graph(graph: JobGraph, backend: Backend, manifest: mf.Manifest, entry: dict,
                  echo) -> dict[str, str] | None:
    """The one skip / adopt / submit / record loop. Returns {stage: job id} of the stages
    submitted now, or None when the backend refused one (what this launch queued is then
    cancelled: ``_abort``)."""
    paths = RunPaths(graph.run_dir)
    old_ids = [jid for s in manifest.stages if (jid := manifest.job_id(s))]
    old_states = backend.states(old_ids)[0] if old_ids else {}
    job_ids = external_job_ids(graph, backend)
    submitted: dict[str, str] = {}
    for job in graph.jobs:
        manifest.plan_stage(job.stage, module=job.module, deps=list(job.deps),
                            spec=asdict(job.spec), folder=str(job_folder(graph.run_dir, job.stage)))
        if _done(paths, job.stage):
            manifest.mark(job.stage, COMPLETED)
            entry["skipped"].append(job.stage)
            echo(f"  {job.stage:<20} complete, skipped")
            continue
        prev = manifest.job_id(job.stage) or ""
        if prev and old_states.get(prev, {}).get("state") in ACTIVE:
            job_ids[job.stage] = prev
            entry["adopted"].append(job.stage)
            echo(f"  {job.stage:<20} job {prev} still {old_states[prev]['state']}, kept")
            continue
        deps = [job_ids[d] for d in job.deps if d in job_ids]
        try:
            jid = backend.submit(job, deps)
        except SubmitError as e:  # refused midway: nothing of this launch stays queued
            _abort(graph, backend, manifest, entry, job.stage, e, echo)
            return None
        job_ids[job.stage] = submitted[job.stage] = jid
        manifest.record_job(job.stage, jid, str(backend.logs(job, jid)))
        entry["submitted"].append(job.stage)
        manifest.save()
        after = f"  (afterok {', '.join(deps)})" if deps else ""
        echo(f"  {job.stage:<20} submitted job {jid}{after}")
    manifest.save()
    return submitted


def follow(graph: JobGraph, backend: Backend, manifest: mf.Manifest, ids: dict[str, str], echo,
           poll_s: float = 0.5, sleep=time.sleep) -> int:
    """Record the jobs ``ids`` ({stage: job id}) in the manifest until each has ended (for a
    backend that runs them here); 1 when one failed or was not run."""
    external = {s for s, owner in graph.external.items() if not _done(RunPaths(owner), s)}
    seen: dict[str, str] = {}
    while True:
        rows, _ = backend.states(list(ids.values()))
        for job in graph.jobs:  # graph order: a parent is recorded before its dependents
            if job.stage not in ids:
                continue
            row = rows.get(ids[job.stage], {})
            state = row.get("state", "")
            if not state or state == seen.get(job.stage):
                continue
            seen[job.stage] = state
            manifest.mark(job.stage, state, finished=state == COMPLETED,
                          **{k: row[k] for k in ("job_id", "log") if k in row})
            rec = manifest.stage(job.stage)
            if state == "RUNNING":
                echo(f"  {job.stage:<20} running (job {rec['job_id']}); log: {rec['log']}")
            elif state == COMPLETED:
                echo(f"  {job.stage:<20} completed")
            elif state == "CANCELLED" and row.get("error", "").startswith("dependency failed"):
                bad = [d for d in job.deps if d in external or manifest.state(d) in FAILED]
                manifest.mark(job.stage, state, error="dependency failed: " + ", ".join(bad or ["?"]))
                echo(f"  {job.stage:<20} not run: {rec['error']}")
            elif state in FAILED:
                manifest.mark(job.stage, state, finished=True,
                              error=row.get("error") or _last_error(rec["log"]))
                echo(f"  {job.stage:<20} {state}: {rec['error']}\n    log: {rec.get('log')}")
            manifest.save()
        if all(seen.get(s) == COMPLETED or seen.get(s) in FAILED for s in ids):
            break
        sleep(poll_s)
    failed = [s for s in graph.stages if manifest.state(s) in FAILED]
    if failed:
        echo(f"failed or not run: {', '.join(failed)}")
        return 1
    return 0


def _abort(graph: JobGraph, backend: Backend, manifest: mf.Manifest, entry: dict, stage: str,
           error: Exception, echo) -> None:
    """Cancel the jobs this launch queued before ``stage`` failed to submit; record it all."""
    ids = [jid for s in entry["submitted"] if (jid := manifest.job_id(s))]
    message = " ".join(str(error).split())[:500]
    cancelled: list[str] = []
    if ids:
        try:
            cancelled = backend.cancel(ids)
        except SubmitError as e:
            echo(f"  could not cancel {', '.join(ids)}: {e}; cancel them by hand")
    for s in entry["submitted"]:
        if manifest.job_id(s) in cancelled:
            manifest.mark(s, "CANCELLED", error=f"cancelled: submitting {stage} failed")
    manifest.mark(stage, "NOT_SUBMITTED", error=message)
    entry.update(failed_stage=stage, error=message, cancelled=cancelled)
    manifest.save()
    echo(f"  {stage:<20} sbatch refused it: {message}")
    if cancelled:
        echo(f"  cancelled the jobs this launch had queued: {', '.join(cancelled)}")
    echo("nothing of this launch is left queued; fix the error and launch again")


def external_job_ids(graph: JobGraph, backend: Backend) -> dict[str, str]:
    """Dependency ids of the unfinished stages this graph shares from other runs (sweeps), from
    the job ids those runs recorded (``Backend.external_id``: SLURM refuses a stage its owner
    has not queued; a local backend cannot wait on another launch's job and cancels the
    dependents, as SLURM does for a dependency that failed)."""
    ids: dict[str, str] = {}
    for stage, owner in graph.external.items():
        owner_paths = RunPaths(owner)
        if _done(owner_paths, stage):
            continue
        rec = ((mf.read(owner_paths.manifest) or {}).get("stages") or {}).get(stage) or {}
        ids[stage] = backend.external_id(stage, Path(owner), rec.get("job_id"))
    return ids


def _last_error(log: str) -> str:
    from launch.status import error_lines

    lines = error_lines(log, n=1)
    return lines[-1].strip() if lines else f"see {log}"
