"""The backend protocol and the job-state sets (stdlib only, below every backend).

Job states use SLURM's names on both backends, and the sets below are their only definition.
A backend answers every question whose answer depends on where jobs run: what its scripts are
(``check_scripts``, ``dry_run_text``, ``emit_scripts``), what it refuses before anything is
queued (``check_cluster``, ``check_live``), how it queues and watches jobs (``submit``,
``states``, ``cancel``, ``logs``, ``external_id``) and how a launch ends once its jobs are queued
(``finish``). Nothing outside ``launch/backends/`` asks which backend it has.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from kd import stages
from launch.graph import Job, JobGraph

COMPLETED = "COMPLETED"
FAILED = frozenset({"FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL",
                    "DEADLINE"})
# queued or running: a relaunch adopts such a job instead of submitting the stage again
# (PREEMPTED: requeued jobs pass through it; SUBMITTED: the manifest's state before SLURM knows)
ACTIVE = frozenset({"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
                    "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING", "SIGNALING",
                    "STAGE_OUT", "PREEMPTED", "SUBMITTED"})
REQUEUE_CAUSE = {"NODE_FAIL": "node failure", "PREEMPTED": "preemption",
                 "TIMEOUT": "time limit", "REQUEUED": "requeue"}


class SubmitError(RuntimeError):
    """The scheduler refused a job (sbatch's message); nothing of that job is queued."""


class Launched(Protocol):
    """A launch whose jobs are queued (``launch/submit.py``), as ``Backend.finish`` sees it."""

    def follow(self) -> int:
        """Record each submitted job's state in the manifest until every one ended; the exit
        code (1 when one failed or was not run)."""

    def wait(self) -> int:
        """Wait for the whole run to end (``launch/status.py``), print its status table; the
        exit code."""

    def hint(self) -> None:
        """Say where to look at the run while its jobs are queued (status, logs)."""


class Backend(Protocol):
    name: str

    def submit(self, job: Job, deps: list[str]) -> str:
        """Queue ``job`` to start after every job in ``deps`` completed; a failed dependency
        cancels it (SLURM ``afterok`` + ``kill-on-invalid-dep``). Raises SubmitError."""

    def states(self, ids: list[str]) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
        """({job id: {"state", ...}} for the ids the scheduler knows, {source: why it could
        not be asked}). Known keys besides state: elapsed, exit_code, restarts, error, reason,
        log, job_id (the id the job's logs are named by, when it differs)."""

    def cancel(self, ids: list[str]) -> list[str]:
        """Cancel ``ids``; returns the ids cancelled. Raises SubmitError when refused."""

    def logs(self, job: Job, job_id: str) -> Path:
        """The log to follow for ``job`` (Megatron prints progress on the last rank)."""

    def check_scripts(self, graph) -> None:
        """Render what each job will run, so launch.shell refuses a bad value (naming the
        field) before anything exists."""

    def dry_run_text(self, graph) -> str:
        """What ``--dry-run`` shows of the jobs (SLURM: every sbatch script)."""

    def emit_scripts(self, graph: JobGraph, out_dir: Path) -> Path:
        """Write the run as standalone scripts for hand submission (SLURM: one sbatch per stage
        + submit.sh); returns the script to run. ConfigError where the backend has none."""

    def cluster_info(self) -> Any:
        """Live queries of the cluster (the cost estimate's site facts), or None when there is
        nothing to ask (local)."""

    def check_cluster(self) -> None:
        """Refuse (ConfigError) a profile this backend cannot queue on, from the profile and
        this machine alone (SLURM: sbatch on PATH, a partition)."""

    def check_live(self, graph: JobGraph, echo: Callable[[str], None] = print) -> None:
        """Refuse (ConfigError) a stage the live cluster would refuse or leave pending (SLURM:
        partition, node, account and QOS limits); when the cluster cannot be asked, say so in
        one line through ``echo`` and return."""

    def external_id(self, stage: str, owner: Path, job_id: str | None) -> str:
        """The dependency id of ``stage``, run by another launch in ``owner`` and not done
        yet (sweeps share stages), given the job id that run recorded (None: none yet)."""

    def finish(self, launched: Launched, wait: bool) -> int:
        """How a launch ends once its jobs are queued; the exit code. Local: its jobs are
        children of this process, so it follows them to the end. SLURM: the jobs outlive the
        launch; it prints where to look and, with ``wait``, waits for the run."""


def log_path(run_dir: Path, job: Job, job_id: str) -> Path:
    """submitit's log of ``job``: the rank whose log matters (``kd.stages``: the last one for
    distill, where Megatron prints training progress), else rank 0."""
    from launch.executors import job_folder

    st = stages.get(job.stage)
    task = job.nodes * job.tasks_per_node - 1 if st and st.log_rank == "last" else 0
    return job_folder(run_dir, job.stage) / f"{job_id}_{task}_log.out"
