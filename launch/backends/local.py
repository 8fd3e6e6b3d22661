"""The local backend: stages run on this machine through submitit's LocalExecutor, in
dependency order, independent stages side by side while the machine has room.

Room is one rule: a job needs ``tasks_per_node * cpus_per_task`` CPUs and
``nodes * gpus_per_node`` GPUs; a ready job starts when both fit beside the running jobs (or
when nothing runs, so an oversized job still runs alone). Ready jobs start in submission
order (the graph's order), so a run is deterministic for a given capacity. Each GPU job gets
its own GPUs (``CUDA_VISIBLE_DEVICES``). A job whose dependency failed, was cancelled or is
unknown here (another process's job) is cancelled without running: SLURM's ``afterok`` with
``kill-on-invalid-dep``.

The jobs are children of this process: ``states`` advances the schedule (starts what became
ready, notices what ended), so whoever waits on the jobs polls ``states``, and a launch follows
its jobs to the end (``finish``). A job of another launch can never be waited on: a stage shared
from another run that is not done yet cancels its dependents (``external_id``). There are no
scripts to emit and no cluster to ask before queueing.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launch.backends.base import COMPLETED, FAILED, Launched, log_path
from launch.graph import Job, JobGraph

_IDS = itertools.count(1)


def machine_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass
class _Entry:
    job: Job
    deps: list[str]
    state: str = "PENDING"
    handle: Any = None  # submitit LocalJob once started
    gpus: tuple[int, ...] = ()
    row: dict[str, Any] = field(default_factory=dict)


class LocalBackend:
    name = "local"

    def __init__(self, cluster=None, run_dir: Path | None = None, run_name: str = "",
                 cpus: int | None = None, gpus: int | None = None, start=None):
        self.cluster, self.run_dir, self.run_name = cluster, run_dir, run_name
        self.cpus = cpus if cpus is not None else machine_cpus()
        if gpus is None:
            gpus = cluster.gpus_per_node * cluster.nodes if cluster is not None else 0
        self.gpus = gpus
        self._start_job = start or self._start_submitit  # tests pass a fake process starter
        self._jobs: dict[str, _Entry] = {}
        self.started: list[str] = []  # ids in the order they started (tests, logs)

    # ------------------------------------------------------------ protocol
    def submit(self, job: Job, deps: list[str]) -> str:
        jid = f"local-{next(_IDS)}"
        self._jobs[jid] = _Entry(job, [str(d) for d in deps])
        self._advance()
        return jid

    def states(self, ids: list[str]) -> tuple[dict[str, dict], dict[str, str]]:
        self._advance()
        out = {}
        for jid in ids:
            e = self._jobs.get(str(jid))
            if e is not None:
                out[str(jid)] = {"state": e.state, **e.row}
        return out, {}

    def cancel(self, ids: list[str]) -> list[str]:
        done = []
        for jid in ids:
            e = self._jobs.get(str(jid))
            if e is None or e.state == COMPLETED or e.state in FAILED:
                continue
            if e.handle is not None:
                e.handle.cancel(check=False)
            e.state = "CANCELLED"
            e.row["error"] = "cancelled"
            done.append(str(jid))
        self._advance()
        return done

    def logs(self, job: Job, job_id: str) -> Path:
        e = self._jobs.get(str(job_id))
        native = e.row.get("job_id", job_id) if e else job_id
        assert self.run_dir is not None
        return log_path(self.run_dir, job, native)

    def check_scripts(self, graph) -> None:
        from launch import shell
        from launch.executors import job_folder, python_command, setup_lines

        python_command(self.cluster)
        for j in graph.jobs:
            setup_lines(self.cluster, j)
            shell.check("run directory", job_folder(graph.run_dir, j.stage))

    def dry_run_text(self, graph) -> str:
        return (f"cluster {self.cluster.name!r} runs locally (submitit LocalExecutor): stages "
                f"in dependency order, independent ones side by side while this machine has "
                f"room ({self.cpus} CPUs, {self.gpus} GPUs); no sbatch scripts.")

    def emit_scripts(self, graph: JobGraph, out_dir: Path) -> Path:
        from launch.schema import ConfigError

        raise ConfigError(f"--emit-sbatch writes sbatch scripts, and cluster "
                          f"{self.cluster.name!r} runs locally (executor: local); pass a SLURM "
                          f"cluster profile (--cluster slurm or your site's)")

    def cluster_info(self):
        return None

    def check_cluster(self) -> None:
        return None  # this machine: nothing to ask

    def check_live(self, graph: JobGraph, echo=print) -> None:
        return None

    def external_id(self, stage: str, owner: Path, job_id: str | None) -> str:
        # another process's job (or none yet): unknown here, so its dependents are cancelled,
        # as SLURM does for a dependency that failed
        return str(job_id) if job_id else f"unknown:{stage}"

    def finish(self, launched: Launched, wait: bool) -> int:
        return launched.follow()  # the jobs are children of this process

    # ------------------------------------------------------------ schedule
    def _need(self, e: _Entry) -> tuple[int, int]:
        return e.job.tasks_per_node * e.job.cpus_per_task, e.job.nodes * e.job.gpus_per_node

    def _advance(self) -> None:
        """Notice ended jobs, cancel the ones whose dependency failed, start what fits."""
        for e in self._jobs.values():
            if e.state == "RUNNING" and e.handle.done():
                self._finish(e)
        changed = True
        while changed:  # a cancellation can cancel further dependents
            changed = False
            for e in self._jobs.values():
                if e.state != "PENDING":
                    continue
                bad = [d for d in e.deps if d not in self._jobs or self._jobs[d].state in FAILED]
                if bad:
                    e.state, changed = "CANCELLED", True
                    e.row["error"] = "dependency failed: " + ", ".join(
                        self._jobs[d].job.stage if d in self._jobs else d for d in bad)
        running = [e for e in self._jobs.values() if e.state == "RUNNING"]
        used_cpu = sum(self._need(e)[0] for e in running)
        busy_gpus = {g for e in running for g in e.gpus}
        for jid, e in self._jobs.items():
            if e.state != "PENDING" or any(self._jobs[d].state != COMPLETED for d in e.deps):
                continue
            cpu, gpu = self._need(e)
            free_gpus = [g for g in range(self.gpus) if g not in busy_gpus]
            alone = not running
            if not alone and (used_cpu + cpu > self.cpus or gpu > len(free_gpus)):
                continue
            e.gpus = tuple(free_gpus[:gpu])
            e.handle = self._start_job(e.job, e.gpus)
            native = str(e.handle.job_id)
            e.state = "RUNNING"
            e.row.update(job_id=native, log=str(log_path(self.run_dir, e.job, native)))
            self.started.append(jid)
            running.append(e)
            used_cpu += cpu
            busy_gpus |= set(e.gpus)

    def _finish(self, e: _Entry) -> None:
        try:
            e.handle.results()
        except Exception:  # the stage failed: its log says why
            e.state = "FAILED"
        else:
            e.state = COMPLETED

    def _start_submitit(self, job: Job, gpus: tuple[int, ...]):
        from kd.job import StageJob
        from launch.executors import local_executor

        ex = local_executor(job, self.cluster, self.run_dir, visible_gpus=gpus)
        return ex.submit(StageJob(job.stage, job.module, job.spec))

