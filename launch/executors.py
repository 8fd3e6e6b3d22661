"""The only place SLURM flags exist: Job + Cluster -> submitit executor / sbatch text.

Every value that reaches the sbatch script goes through submitit's ``shlex.quote`` (``#SBATCH``
flags, srun arguments) or ours (``export`` lines). The cluster's ``setup`` lines and ``python``
command are shell by design: they come from the cluster profile the user owns, not from
experiment values.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

from launch.config import REPO, Cluster
from launch.plan import Job

SUBMITIT_COMMAND = "{python} -u -m submitit.core._submit {folder}"
TEMPLATES = REPO / "slurm_templates"


def job_folder(run_dir: Path, stage: str) -> Path:
    """submitit folder of one stage: sbatch file, pickles and logs (``%j`` = job id)."""
    return Path(run_dir) / "jobs" / stage


def python_command(cluster: Cluster) -> str:
    return cluster.python or shlex.quote(sys.executable)


def container_srun_args(cluster: Cluster, run_dir: Path) -> list[str]:
    """pyxis/enroot flags for srun; the run directory is always mounted at the same path."""
    c = cluster.container
    if not c.image:
        return []
    mounts = [f"{run_dir}:{run_dir}", *c.mounts]
    args = [f"--container-image={c.image}", f"--container-mounts={','.join(mounts)}"]
    if c.workdir:
        args.append(f"--container-workdir={c.workdir}")
    return args


def fragment(name: str) -> list[str]:
    """Shell lines of a slurm_templates/ fragment, comments dropped."""
    text = (TEMPLATES / name).read_text()
    return [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def setup_lines(cluster: Cluster, job: Job) -> list[str]:
    lines = [f"export {k}={shlex.quote(str(v))}" for k, v in sorted(cluster.env.items())]
    if job.stage == "distill" and job.gpus_per_node:
        lines += fragment("distill_env.sh")
    lines += list(cluster.setup)
    return lines


def slurm_parameters(job: Job, cluster: Cluster, run_dir: Path, run_name: str,
                     dependency_ids: list[str]) -> dict[str, Any]:
    """Parameters of submitit's ``SlurmExecutor.update_parameters`` (sbatch names)."""
    params: dict[str, Any] = {
        "job_name": f"kd-{run_name}-{job.stage}",
        "time": job.time_min,
        "nodes": job.nodes,
        "ntasks_per_node": job.tasks_per_node,
        "cpus_per_task": job.cpus_per_task,
        "signal_delay_s": cluster.signal_delay_s if job.requeue else min(cluster.signal_delay_s, 60),
        # every stage may be requeued (preemption, or a timeout of a long eval): each one resumes
        # from what it wrote, and afterok waits for the final completion
        "setup": setup_lines(cluster, job),
        "srun_args": container_srun_args(cluster, run_dir) + list(cluster.srun_args),
        "stderr_to_stdout": True,
    }
    if job.gpus_per_node:
        params["gpus_per_node"] = job.gpus_per_node
    if job.mem_gb is not None:
        params["mem"] = f"{job.mem_gb}GB"
    for key in ("partition", "account", "qos"):
        value = getattr(cluster, key)
        if value:
            params[key] = value
    extra: dict[str, Any] = dict(cluster.additional_parameters)
    if dependency_ids:
        params["dependency"] = "afterok:" + ":".join(dependency_ids)
        extra["kill-on-invalid-dep"] = "yes"  # a failed parent cancels its dependents
    extra["requeue"] = True
    if extra:
        params["additional_parameters"] = extra
    return params


def sbatch_text(job: Job, cluster: Cluster, run_dir: Path, run_name: str,
                dependency_ids: list[str]) -> str:
    """The exact sbatch script submitit writes for this job (used by --dry-run)."""
    from submitit.slurm.slurm import _make_sbatch_string

    folder = job_folder(run_dir, job.stage)
    command = SUBMITIT_COMMAND.format(python=python_command(cluster),
                                      folder=shlex.quote(str(folder)))
    params = slurm_parameters(job, cluster, run_dir, run_name, dependency_ids)
    return _make_sbatch_string(command=command, folder=folder, **params)


def standalone_sbatch_text(job: Job, cluster: Cluster, run_dir: Path, run_name: str,
                           spec_file: Path) -> str:
    """sbatch script of one stage for hand submission: same flags, runs ``python -m kd.job``."""
    from submitit.slurm.slurm import _make_sbatch_string

    command = (f"{python_command(cluster)} -u -m kd.job {job.stage} "
               f"--spec {shlex.quote(str(spec_file))}")
    params = slurm_parameters(job, cluster, run_dir, run_name, [])
    return _make_sbatch_string(command=command, folder=job_folder(run_dir, job.stage), **params)


def slurm_executor(job: Job, cluster: Cluster, run_dir: Path, run_name: str,
                   dependency_ids: list[str]):
    from submitit import SlurmExecutor

    ex = SlurmExecutor(folder=job_folder(run_dir, job.stage),
                       max_num_timeout=cluster.max_requeues, python=python_command(cluster))
    ex.update_parameters(**slurm_parameters(job, cluster, run_dir, run_name, dependency_ids))
    return ex


def local_executor(job: Job, cluster: Cluster, run_dir: Path):
    from submitit import LocalExecutor

    ex = LocalExecutor(folder=job_folder(run_dir, job.stage),
                       max_num_timeout=cluster.max_requeues, python=cluster.python)
    ex.update_parameters(timeout_min=job.time_min, tasks_per_node=job.tasks_per_node,
                         gpus_per_node=job.gpus_per_node * job.nodes,
                         signal_delay_s=min(cluster.signal_delay_s, job.time_min * 30),
                         setup=setup_lines(cluster, job), stderr_to_stdout=True)
    return ex
