"""The SLURM backend: the only module that runs SLURM commands (sbatch through submitit,
sacct, squeue, scancel, sinfo; ``cluster_info`` hands the cost estimate ``launch.slurm_info``,
and ``check_live`` asks it through ``slurm_checks.py``). It writes the standalone form of a run
(``emit_scripts``: one sbatch per stage + submit.sh), and a launch returns once its jobs are
queued (``finish``; with ``--wait`` it waits for the run).

States come from accounting (sacct, the source submitit also uses) merged with the
controller (squeue, the live queue: requeues in progress, pending reasons, and jobs queued a
second ago that accounting does not show yet). Either daemon can be unreachable (slurmdbd or
slurmctld down, a hung RPC): each query has a short timeout, is killed with its process group
after it, and reports its error text instead of pretending the job is unknown.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

from launch import shell
from launch.backends import slurm_checks
from launch.backends.base import ACTIVE, REQUEUE_CAUSE, Launched, SubmitError, log_path
from launch.graph import Job, JobGraph

FIELDS = ("JobIDRaw", "State", "ExitCode", "Elapsed", "Start", "End", "NodeList")
TIMEOUT_S = 8.0  # one query; status must answer even when a daemon hangs


def _run(cmd: list[str], timeout: float | None = None) -> tuple[str | None, str | None]:
    """(stdout, None) or (None, why it could not be asked)."""
    timeout = TIMEOUT_S if timeout is None else timeout
    try:  # own session: a hung command and anything it started are killed together
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
    except FileNotFoundError:
        return None, f"{cmd[0]} is not installed"
    except OSError as e:
        return None, f"{cmd[0]}: {e}"
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return None, f"{cmd[0]} did not answer within {timeout:g} s"
    if proc.returncode != 0:
        msg = (stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        return None, f"{cmd[0]} failed: {msg}"
    return stdout, None


def accounting(job_ids: list[str]) -> tuple[dict[str, dict], str | None]:
    """({job_id: {state, exit_code, elapsed, start, end, nodes, restarts, history}}, error).

    A job that was requeued has one row per allocation (``-D``; slurm 22.05's sacct has no
    Restarts field); the last row is the current one, ``history`` keeps every allocation's
    state. Unknown ids are absent from the result.
    """
    if not job_ids:
        return {}, None
    out, err = _run(["sacct", "-a", "-X", "-D", "--parsable2", "--noheader", "-o",
                     ",".join(FIELDS), "-j", ",".join(job_ids)])
    if out is None:
        return {}, err
    rows: dict[str, dict] = {}
    for line in out.splitlines():
        parts = line.split("|")
        if len(parts) != len(FIELDS):
            continue
        jid, state, exit_code, elapsed, start, end, nodes = parts
        history = rows[jid]["history"] if jid in rows else []
        short = state.split()[0] if state else "UNKNOWN"
        rows[jid] = {"state": short, "state_text": state, "exit_code": exit_code,
                     "elapsed": elapsed, "start": start, "end": end, "nodes": nodes,
                     "restarts": len(history), "history": [*history, short]}
    return rows, None


def controller(job_ids: list[str]) -> tuple[dict[str, dict], str | None]:
    """({job_id: {state, reason}} for jobs still in the queue, error)."""
    if not job_ids:
        return {}, None
    out, err = _run(["squeue", "-h", "-o", "%i|%T|%r", "-j", ",".join(job_ids)])
    if out is None:
        # squeue exits 1 with "Invalid job id specified" when every id has left the queue
        if err and "Invalid job id" in err:
            return {}, None
        return {}, err
    rows = {}
    for line in out.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            rows[parts[0]] = {"state": parts[1], "reason": parts[2]}
    return rows, None


def merge(info: dict | None, live: dict | None) -> dict[str, Any]:
    """One job's state from its accounting row and its queue row (either may be None).

    The controller knows best about a job still in the queue: a NODE_FAIL/PREEMPTED
    accounting row of a job that is queued again is a requeue in progress, not a failure."""
    row: dict[str, Any] = {}
    if info:
        row.update(state=info["state"], elapsed=info["elapsed"], exit_code=info["exit_code"],
                   restarts=info["restarts"])
    if not live:
        return row
    history = info["history"] if info else []
    restarts = info["restarts"] if info else 0
    causes = [h for h in history if h in REQUEUE_CAUSE]
    requeue_now = history and history[-1] in REQUEUE_CAUSE  # sacct has no new row yet
    if requeue_now or live["state"] in ("REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED") or (
            causes and live["state"] == "PENDING"):
        restarts = restarts + 1 if requeue_now else max(restarts, 1)
        cause = REQUEUE_CAUSE.get(causes[-1] if causes else "REQUEUED", "requeue")
        row.update(state="REQUEUED", error=f"requeued after {cause}, restart {restarts}",
                   restarts=restarts)
        return row
    row["reason"] = live.get("reason", "")
    if live["state"] in ACTIVE or "state" not in row:
        row["state"] = live["state"]
    if "Dependency" in row["reason"] and "NeverSatisfied" in row["reason"]:
        row["error"] = "dependency can never be satisfied"
    return row


class SlurmBackend:
    name = "slurm"

    def __init__(self, cluster=None, run_dir: Path | None = None, run_name: str = ""):
        self.cluster, self.run_dir, self.run_name = cluster, run_dir, run_name

    def submit(self, job: Job, deps: list[str]) -> str:
        from kd.job import StageJob
        from launch.executors import slurm_executor

        assert self.cluster is not None and self.run_dir is not None, "bind a launch first"
        try:
            ex = slurm_executor(job, self.cluster, self.run_dir, self.run_name, deps)
            return str(ex.submit(StageJob(job.stage, job.module, job.spec)).job_id)
        except Exception as e:  # submitit raises its own FailedJobError / CalledProcessError
            raise SubmitError(" ".join(str(e).split())[:500]) from e

    def states(self, ids: list[str]) -> tuple[dict[str, dict], dict[str, str]]:
        ids = [str(i) for i in ids if i]
        acct, acct_err = accounting(ids)
        queue, queue_err = controller(ids)
        rows = {j: merge(acct.get(j), queue.get(j)) for j in ids if j in acct or j in queue}
        errors = {k: v for k, v in (("accounting", acct_err), ("controller", queue_err)) if v}
        return rows, errors

    def cancel(self, ids: list[str]) -> list[str]:
        ids = [str(i) for i in ids if i]
        if not ids:
            return []
        _, err = _run(["scancel", *ids], timeout=60)
        if err:
            raise SubmitError(err)
        return ids

    def logs(self, job: Job, job_id: str) -> Path:
        assert self.run_dir is not None
        return log_path(self.run_dir, job, job_id)

    def check_scripts(self, graph) -> None:
        from launch.executors import sbatch_text

        for j in graph.jobs:
            sbatch_text(j, self.cluster, graph.run_dir, self.run_name, ["0" for _ in j.deps])

    def dry_run_text(self, graph) -> str:
        from launch.executors import sbatch_text

        out = []
        for j in graph.jobs:
            deps = [f"<{d}>" for d in j.deps]
            out += [f"===== sbatch: {j.stage} =====",
                    sbatch_text(j, self.cluster, graph.run_dir, self.run_name, deps)]
        return "\n".join(out)

    def emit_scripts(self, graph: JobGraph, out_dir: Path) -> Path:
        """Write the standalone form of the run (one sbatch per stage + submit.sh) to
        ``out_dir``; returns submit.sh."""
        import json
        from dataclasses import asdict
        from string import Template

        from launch.executors import TEMPLATES, job_folder, standalone_sbatch_text

        out_dir = Path(out_dir).absolute()
        shell.sbatch_value("--emit-sbatch directory", out_dir)
        self.check_scripts(graph)  # refuse before anything is written
        (out_dir / "specs").mkdir(parents=True, exist_ok=True)
        for job in graph.jobs:
            spec_file = out_dir / "specs" / f"{job.stage}.json"
            spec_file.write_text(json.dumps(asdict(job.spec), indent=2) + "\n")
            text = standalone_sbatch_text(job, self.cluster, graph.run_dir, self.run_name,
                                          spec_file)
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

    def cluster_info(self):
        """The live queries of the cluster (``launch.slurm_info``: scontrol, sacctmgr)."""
        from launch import slurm_info

        return slurm_info

    def check_cluster(self) -> None:
        slurm_checks.check_cluster(self.cluster, self.default_partition)

    def check_live(self, graph: JobGraph, echo=print) -> None:
        slurm_checks.check_live(graph, self.cluster, self.default_partition, echo)

    def external_id(self, stage: str, owner: Path, job_id: str | None) -> str:
        if not job_id:  # afterok needs a job id: the owner must have queued it
            from launch.schema import ConfigError

            raise ConfigError(f"stage {stage} is shared from {owner}, which has not submitted "
                              f"it: launch that run first")
        return str(job_id)

    def finish(self, launched: Launched, wait: bool) -> int:
        launched.hint()
        return launched.wait() if wait else 0

    @staticmethod
    def default_partition() -> str | None:
        """The partition sbatch would pick: $SBATCH_PARTITION, else sinfo's default ('*')."""
        env = os.environ.get("SBATCH_PARTITION") or os.environ.get("SLURM_PARTITION")
        if env:
            return env
        if not shutil.which("sinfo"):
            return None
        out, _ = _run(["sinfo", "-h", "-o", "%P"], timeout=15)
        for name in (out or "").split():
            if name.endswith("*"):
                return name[:-1]
        return None
