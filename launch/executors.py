"""The only place SLURM flags exist: Job + Cluster -> submitit executor / sbatch text.

Every value that reaches an sbatch script passes through launch.shell first: control characters
and secrets are refused there, naming the field. ``#SBATCH`` values and srun arguments are then
quoted by submitit (``shlex.quote``), ``export`` lines and the command by launch.shell.quote. The
cluster's ``setup`` lines and ``python`` command are shell by design (the cluster profile the user
owns): checked, not quoted.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from kd import stages
from launch import shell
from launch.config import REPO, Cluster
from launch.graph import Job

SUBMITIT_COMMAND = "{python} -u -m submitit.core._submit {folder}"
TEMPLATES = REPO / "slurm_templates"


def job_folder(run_dir: Path, stage: str) -> Path:
    """submitit folder of one stage: sbatch file, pickles and logs (``%j`` = job id)."""
    return Path(run_dir) / "jobs" / stage


def sealed_folder(run_dir: Path, stage: str) -> Path:
    """:func:`job_folder`, checked for its ``#SBATCH --output`` line."""
    folder = job_folder(run_dir, stage)
    shell.sbatch_value("run directory", folder)
    return folder


def python_command(cluster: Cluster) -> str:
    if cluster.python:
        return shell.shell_line("cluster.python", cluster.python)
    return shell.quote("python (sys.executable)", sys.executable)


def container_srun_args(cluster: Cluster, run_dir: Path) -> list[str]:
    """pyxis/enroot flags for srun; the run directory is always mounted at the same path."""
    c = cluster.container
    if not c.image:
        return []
    run = shell.container_mount_path(
        "--run-dir", run_dir, "cluster.container.image is set, so the run directory is mounted "
        "into the container as RUN:RUN", "choose a --run-dir (for a sweep: a root, where its "
        "runs go) whose path has no ',', ':' or whitespace")
    mounts = [f"{run}:{run}", *c.mounts]
    args = [f"--container-image={c.image}", f"--container-mounts={','.join(mounts)}"]
    if c.workdir:
        args.append(f"--container-workdir={c.workdir}")
    return args


def fragment(name: str) -> list[str]:
    """Shell lines of a slurm_templates/ fragment, comments dropped."""
    text = (TEMPLATES / name).read_text()
    return [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def setup_lines(cluster: Cluster, job: Job) -> list[str]:
    lines = []
    for k, v in sorted(cluster.env.items()):
        if not shell.re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(k)):
            raise shell.UnsafeValue(f"cluster.env.{k!r}: not a valid environment variable name")
        if shell.secret_name(str(k)):
            raise shell.UnsafeValue(f"cluster.env.{k}: its name says it holds a secret; "
                                    f"{shell.ENV_HINT}")
        lines.append(f"export {k}={shell.quote(f'cluster.env.{k}', v)}")
    st = stages.get(job.stage)
    if st and st.env_fragment and job.gpus_per_node:
        lines += fragment(st.env_fragment)
    lines += [shell.shell_line(f"cluster.setup[{i}]", ln) for i, ln in enumerate(cluster.setup)]
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
        "srun_args": ([shell.check("cluster.container", a)
                       for a in container_srun_args(cluster, run_dir)]
                      + [shell.check(f"cluster.srun_args[{i}]", a)
                         for i, a in enumerate(cluster.srun_args)]),
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
    return sealed_parameters(params)


# where each sbatch parameter comes from, for the error message
_FIELDS = {"job_name": "experiment name", "partition": "cluster.partition",
           "account": "cluster.account", "qos": "cluster.qos", "mem": "mem_gb",
           "time": "time_min", "dependency": "dependency"}


def sealed_parameters(params: dict[str, Any]) -> dict[str, Any]:
    """Every ``#SBATCH`` key and value through launch.shell (submitit renders the lines)."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        if key in ("setup", "srun_args"):  # already checked line by line
            out[key] = value
        elif key == "additional_parameters":
            out[key] = {shell.sbatch_key(f"cluster.additional_parameters.{k}", k):
                        shell.sbatch_value(f"cluster.additional_parameters.{k}", v)
                        for k, v in value.items()}
        else:
            out[key] = shell.sbatch_value(_FIELDS.get(key, key), value)
    return out


def sbatch_text(job: Job, cluster: Cluster, run_dir: Path, run_name: str,
                dependency_ids: list[str]) -> str:
    """The exact sbatch script submitit writes for this job (used by --dry-run)."""
    from submitit.slurm.slurm import _make_sbatch_string

    folder = sealed_folder(run_dir, job.stage)
    command = SUBMITIT_COMMAND.format(python=python_command(cluster),
                                      folder=shell.quote("run directory", folder))
    params = slurm_parameters(job, cluster, run_dir, run_name, dependency_ids)
    return _make_sbatch_string(command=command, folder=folder, **params)


def standalone_sbatch_text(job: Job, cluster: Cluster, run_dir: Path, run_name: str,
                           spec_file: Path) -> str:
    """sbatch script of one stage for hand submission: same flags, runs ``python -m kd.job``."""
    from submitit.slurm.slurm import _make_sbatch_string

    command = (f"{python_command(cluster)} -u -m kd.job {job.stage} "
               f"--spec {shell.quote('--emit-sbatch directory', spec_file)}")
    params = slurm_parameters(job, cluster, run_dir, run_name, [])
    return _make_sbatch_string(command=command, folder=sealed_folder(run_dir, job.stage), **params)


def slurm_executor(job: Job, cluster: Cluster, run_dir: Path, run_name: str,
                   dependency_ids: list[str]):
    from submitit import SlurmExecutor

    ex = SlurmExecutor(folder=sealed_folder(run_dir, job.stage),
                       max_num_timeout=cluster.max_requeues, python=python_command(cluster))
    ex.update_parameters(**slurm_parameters(job, cluster, run_dir, run_name, dependency_ids))
    return ex


def local_executor(job: Job, cluster: Cluster, run_dir: Path,
                   visible_gpus: tuple[int, ...] = ()):
    """submitit's LocalExecutor for one stage; ``visible_gpus``: the GPUs the local backend
    gave it (jobs running side by side never share one)."""
    from submitit import LocalExecutor

    ex = LocalExecutor(folder=job_folder(run_dir, job.stage),
                       max_num_timeout=cluster.max_requeues, python=cluster.python)
    shell.check("run directory", job_folder(run_dir, job.stage))
    ex.update_parameters(timeout_min=job.time_min, tasks_per_node=job.tasks_per_node,
                         gpus_per_node=job.gpus_per_node * job.nodes,
                         visible_gpus=tuple(visible_gpus),
                         signal_delay_s=min(cluster.signal_delay_s, job.time_min * 30),
                         setup=setup_lines(cluster, job), stderr_to_stdout=True)
    return ex
