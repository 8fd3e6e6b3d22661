"""Where jobs run: one small protocol, a SLURM implementation and a local one.

``launch.submit`` (the one skip / adopt / record loop), ``launch.status``, ``launch.sweep`` and
``launch.preflight`` reach a scheduler only through a :class:`Backend`; only
``launch/backends/slurm.py`` runs SLURM commands. Job states use SLURM's names on both
backends, and the sets below are their only definition.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from launch.plan import Job

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


class Backend(Protocol):
    name: str
    # True when the jobs are children of the launching process (local): the launch then
    # follows them to the end, and a job of another launch can never be waited on.
    runs_here: bool

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

    def cluster_info(self) -> Any:
        """Live queries of the cluster for the pre-flight, or None when there is nothing to
        ask (local)."""


def get(executor: str, **kw: Any) -> Backend:
    """The backend of a cluster profile's ``executor`` (``slurm`` or ``local``). ``kw``
    (cluster, run_dir, run_name) binds it to one launch; status and cancel need none."""
    if executor == "slurm":
        from launch.backends.slurm import SlurmBackend

        return SlurmBackend(**kw)
    if executor == "local":
        from launch.backends.local import LocalBackend

        return LocalBackend(**kw)
    raise ValueError(f"cluster.executor={executor!r}: not a backend; use slurm or local")


def for_cluster(cluster, run_dir: Path | None = None, run_name: str = "") -> Backend:
    return get(cluster.executor, cluster=cluster, run_dir=run_dir, run_name=run_name)


def log_path(run_dir: Path, job: Job, job_id: str) -> Path:
    """submitit's log of ``job``: the last rank for distill (training progress), else rank 0."""
    from launch.executors import job_folder

    task = job.nodes * job.tasks_per_node - 1 if job.stage == "distill" else 0
    return job_folder(run_dir, job.stage) / f"{job_id}_{task}_log.out"
