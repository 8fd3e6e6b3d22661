"""Real submitit jobs on the local SLURM cluster: the behaviours kdlaunch relies on.

Multi-node gloo start-up through kd.dist_env, afterok chains, a failed parent cancelling its
dependents, cancel, and job state read back through sacct (submitit's only source of state).
"""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import cloudpickle
import pytest
import submitit

pytestmark = pytest.mark.slurm

# The job's python need not be able to import this test module (pytest puts the rootdir on
# sys.path, the job does not; job cwd is wherever pytest ran): ship the job functions below by
# value instead of by module reference.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

FINAL_STATES = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL")


# ---- helpers (run on the test side) ---------------------------------------------------


def sacct_record(job_id: str, timeout_s: float = 30) -> dict[str, str]:
    """The allocation's sacct row once it is final.

    Records reach slurmdbd 1-3 s after a job ends, and a partial row may show first (a job
    that ran for about a second showed State and End before its Partition): poll until complete.
    """
    fields = ["JobID", "State", "Start", "End", "ExitCode", "NodeList", "Partition"]
    deadline = time.monotonic() + timeout_s
    row: dict[str, str] = {}
    while time.monotonic() < deadline:
        out = subprocess.run(
            ["sacct", "-X", "-n", "-P", "-j", job_id, "-o", ",".join(fields)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        lines = [line for line in out.splitlines() if line.split("|")[0] == job_id]
        if lines:
            row = dict(zip(fields, lines[0].split("|"), strict=True))
            final = row["State"].startswith(FINAL_STATES) and row["End"] != "Unknown"
            if final and all(row.values()):
                return row
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} not final in sacct after {timeout_s} s: {row}")


def squeue_field(job_id: str, fmt: str) -> str:
    """One squeue column (e.g. %T state, %r reason) for a job; '' once it left the queue."""
    return subprocess.run(
        ["squeue", "-h", "-j", job_id, "-o", fmt], capture_output=True, text=True
    ).stdout.strip()


def wait_until(predicate, timeout_s: float, what: str, interval_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def sacct_time(value: str) -> datetime:
    return datetime.fromisoformat(value)


# ---- job functions (run on the virtual nodes) -----------------------------------------


def dist_all_reduce() -> dict:
    import datetime as dt
    import os

    import torch
    import torch.distributed as dist

    from kd.dist_env import export_env

    env = export_env()
    dist.init_process_group("gloo", timeout=dt.timedelta(seconds=60))
    try:
        value = torch.tensor([float(env.rank + 1)])
        dist.all_reduce(value)
        return {
            "rank": env.rank,
            "world_size": env.world_size,
            "local_rank": env.local_rank,
            "master_addr": env.master_addr,
            "node": os.environ["SLURMD_NODENAME"],
            "dist_world_size": dist.get_world_size(),
            "sum": value.item(),
            "omp_threads": os.environ.get("OMP_NUM_THREADS"),
        }
    finally:
        dist.destroy_process_group()


def timed_sleep(seconds: float) -> tuple[float, float]:
    start = time.time()
    time.sleep(seconds)
    return start, time.time()


def fail_after(seconds: float) -> None:
    time.sleep(seconds)
    raise RuntimeError("parent fails on purpose")


def touch(path: str) -> None:
    Path(path).touch()


# ---- tests ------------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_two_nodes_two_tasks_form_one_gloo_group(slurm_executor):
    slurm_executor.update_parameters(nodes=2, tasks_per_node=2)
    job = slurm_executor.submit(dist_all_reduce)
    results = job.results()  # one per task, in SLURM_PROCID order

    assert [r["rank"] for r in results] == [0, 1, 2, 3]
    assert [r["local_rank"] for r in results] == [0, 1, 0, 1]
    assert {r["world_size"] for r in results} == {4}
    assert {r["dist_world_size"] for r in results} == {4}
    assert {r["sum"] for r in results} == {1.0 + 2.0 + 3.0 + 4.0}
    assert {r["omp_threads"] for r in results} == {"1"}
    first, second = results[0]["node"], results[2]["node"]
    assert results[1]["node"] == first and results[3]["node"] == second and first != second
    # rank 0 runs on the first node of the allocation, which is also the rendezvous address
    assert {r["master_addr"] for r in results} == {first}


@pytest.mark.timeout(60)
def test_afterok_dependent_starts_after_parent_completes(slurm_executor):
    parent = slurm_executor.submit(timed_sleep, 4)
    slurm_executor.update_parameters(
        slurm_additional_parameters={"dependency": f"afterok:{parent.job_id}"}
    )
    child = slurm_executor.submit(timed_sleep, 0)

    wait_until(
        lambda: squeue_field(child.job_id, "%T %r") == "PENDING Dependency",
        timeout_s=3,
        what="the dependent to wait on its dependency",
    )
    (_, parent_end), (child_start, _) = parent.result(), child.result()
    assert child_start >= parent_end

    parent_row, child_row = sacct_record(parent.job_id), sacct_record(child.job_id)
    assert parent_row["State"] == child_row["State"] == "COMPLETED"
    assert sacct_time(child_row["Start"]) >= sacct_time(parent_row["End"])


@pytest.mark.timeout(60)
def test_failed_parent_cancels_dependent(slurm_executor, tmp_path):
    # The parent is still running when the dependent is submitted, so the dependent really
    # waits (a parent that has already failed gets its dependent cancelled at submission).
    parent = slurm_executor.submit(fail_after, 2)
    slurm_executor.update_parameters(
        slurm_additional_parameters={
            "dependency": f"afterok:{parent.job_id}",
            "kill-on-invalid-dep": "yes",
        }
    )
    marker = tmp_path / "dependent-ran"
    child = slurm_executor.submit(touch, str(marker))

    assert isinstance(parent.exception(), submitit.core.utils.FailedJobError)
    assert sacct_record(parent.job_id)["State"] == "FAILED"
    child_row = sacct_record(child.job_id)
    assert child_row["State"].startswith("CANCELLED")
    # never ran: no node, and its function never touched the marker
    # (sacct's Start is no witness: it equals End for a job cancelled at submission)
    assert child_row["NodeList"] == "None assigned", child_row
    assert not marker.exists()


@pytest.mark.timeout(60)
def test_cancel_running_job(slurm_executor):
    job = slurm_executor.submit(timed_sleep, 120)
    wait_until(lambda: squeue_field(job.job_id, "%T") == "RUNNING", 30, "the job to run")

    job.cancel()

    assert sacct_record(job.job_id)["State"].startswith("CANCELLED")
    # submitit reads the same state through sacct (without accounting it stays UNKNOWN and
    # job.result() never returns)
    assert job.watcher.get_state(job.job_id, mode="force").startswith("CANCELLED")
    assert job.done(force_check=True)


@pytest.mark.timeout(60)
def test_sacct_reports_final_states(slurm_executor):
    ok = slurm_executor.submit(timed_sleep, 0)
    bad = slurm_executor.submit(fail_after, 0)
    ok.result()
    assert isinstance(bad.exception(), submitit.core.utils.FailedJobError)

    ok_row, bad_row = sacct_record(ok.job_id), sacct_record(bad.job_id)
    assert (ok_row["State"], ok_row["ExitCode"]) == ("COMPLETED", "0:0")
    assert bad_row["State"] == "FAILED" and bad_row["ExitCode"] != "0:0"
    assert ok_row["Partition"] == bad_row["Partition"] == "debug"
    assert ok_row["NodeList"].startswith("n")
    assert sacct_time(ok_row["Start"]) <= sacct_time(ok_row["End"])
    assert ok.watcher.get_state(ok.job_id, mode="force") == "COMPLETED"
    assert bad.watcher.get_state(bad.job_id, mode="force") == "FAILED"
