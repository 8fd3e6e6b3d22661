"""Runtime faults on the real SLURM test cluster, one short distill run serving all four:

(a) the node of rank 0 is taken down while it saves (then resumed): SLURM requeues the job, it
    resumes from the last complete checkpoint, at most one save interval is redone;
(c) that kill lands mid-save: the half-written ``iter_*`` is never picked by any reader and is
    quarantined (kept) on the next start;
(d) the second allocation is preempted by an exclusive job on the ``high`` partition (SLURM
    requeues it after the grace time); the third allocation resumes from the last complete save;
(b) slurmctld is stopped for ~20 s in the third allocation and restarted: the run completes,
    and status says the controller cannot be asked while accounting still answers.
Every fault is restored in a ``finally`` (the cluster is shared). Requeue bookkeeping (one job
id, dependents wait for the last allocation) is tests/fakesched's.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kd import checkpoints as ck
from launch import status
from tests.conftest import START_SCRIPT

REPO = Path(__file__).resolve().parents[2]
CTLD_PID = Path("/run/slurm/slurmctld.pid")
pytestmark = [pytest.mark.slurm, pytest.mark.e2e]
EVIDENCE: dict = {}


def sacct_rows(job_id: str) -> list[list[str]]:
    out = subprocess.run(["sacct", "-X", "-D", "-n", "-P", "-o", "JobIDRaw,State,Start,End",
                          "-j", job_id], capture_output=True, text=True).stdout
    return [line.split("|") for line in out.splitlines() if line]


def wait_for(pred, timeout: float, step: float = 0.2):
    end = time.time() + timeout
    while time.time() < end:
        got = pred()
        if got:
            return got
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting for {pred.__name__}")


def stop_ctld() -> int:
    pid = int(CTLD_PID.read_text())
    subprocess.run(["kill", "-TERM", str(pid)], check=True)
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), 15)
    return pid


def start_ctld() -> None:
    """Bring the cluster back whole with its own start script (idempotent): it starts
    slurmctld and waits until every node has registered again (a restarted controller lists a
    node UNKNOWN until its slurmd does; the tests after this one share the cluster)."""
    proc = subprocess.run(["bash", str(START_SCRIPT)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def status_text(run_dir: Path) -> tuple[str, int]:
    r = subprocess.run([sys.executable, "launch/status.py", str(run_dir)], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    return r.stdout + r.stderr, r.returncode


@pytest.mark.timeout(500)
def test_node_down_preemption_and_controller_outage(slurm_cluster, demo_prefix, tmp_path):
    run_dir = tmp_path / "run"
    train_iters, save_interval = 60, 5
    cmd = [sys.executable, "launch/distill.py", "--cluster", "ci", "--config", "tiny_demo",
           "--run-dir", str(run_dir),
           f"student.path={demo_prefix['student']}", f"teacher.path={demo_prefix['teacher']}",
           f"export.hf_template={demo_prefix['teacher']}", "eval.enabled=false",
           "export.enabled=false",  # distill is what the faults hit; the export is e2e's
           f"data.sources=[{{name: synthetic, prefix: {demo_prefix['prefix']}}}]",
           "train.tp=2", f"train.train_iters={train_iters}", f"train.save_interval={save_interval}",
           "train.micro_batch_size=16", "train.global_batch_size=64", "train.eval_interval=1000",
           # USR2 45 s before the limit (preemption sends it too); 30 min: no time-limit requeue
           "cluster.signal_delay_s=45", "cluster.save_time_s=10", "cluster.max_requeues=5"]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    manifest = json.loads((run_dir / "manifest.json").read_text())
    job_id = manifest["stages"]["distill"]["job_id"]
    folder = run_dir / "jobs" / "distill"
    ckpt = run_dir / "distill" / "checkpoints"
    rank0 = folder / f"{job_id}_0_log.out"

    def log0() -> str:
        return rank0.read_text(errors="replace") if rank0.is_file() else ""

    # (a)+(c): take rank 0's node down the moment a save after the first one starts
    def saving_again():
        m = re.findall(r"saving checkpoint at iteration\s+(\d+)", log0())
        return [int(x) for x in m if int(x) > save_interval]

    node = None
    try:
        wait_for(saving_again, 200, 0.05)
        nodelist = subprocess.run(["squeue", "-h", "-o", "%N", "-j", job_id], capture_output=True,
                                  text=True, check=True).stdout.strip()
        node = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True,
                              text=True, check=True).stdout.split()[0]  # rank 0's node
        reached = max(saving_again())
        subprocess.run(["scontrol", "update", f"nodename={node}", "state=down", "reason=test"],
                       check=True)
        EVIDENCE["node_down"] = {"node": node, "save_started_at": reached,
                                 "tracker_at_kill": ck.tracker_iteration(ckpt)}
        wait_for(lambda: "REQUEUED" in status_text(run_dir)[0] or
                 len(sacct_rows(job_id)) > 1, 60, 0.5)
        EVIDENCE["status_during_node_fault"] = status_text(run_dir)[0]
    finally:
        if node:
            subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"], check=False)

    # (d) the requeued allocation trains: an exclusive `high` job on every node preempts it
    wait_for(lambda: log0().count("stage distill starting") >= 2 and
             "successfully loaded checkpoint" in log0(), 200, 0.5)
    time.sleep(3)  # a few iterations in
    preemptor = subprocess.run(["sbatch", "--parsable", "-p", "high", "-N", "4", "--exclusive",
                                "-t", "2", "-J", "kd-preemptor", "-o", "/dev/null",
                                "--wrap", "sleep 5"],
                               capture_output=True, text=True, check=True).stdout.strip()

    # the third allocation resumed: (b) stop the controller ~20 s while it trains
    wait_for(lambda: log0().count("stage distill starting") >= 3 and
             log0().count("successfully loaded checkpoint") >= 2, 200, 0.5)
    try:
        stop_ctld()
        time.sleep(3)
        text, code = status_text(run_dir)
        EVIDENCE["status_during_ctld_outage"] = (text, code)
        time.sleep(15)
    finally:
        start_ctld()
    assert "controller unreachable" in text and "table from accounting (sacct)" in text, text
    assert code == 0, text

    code = status.wait_for_run(run_dir, echo=lambda *_: None, poll_s=2, timeout_s=240)
    log = log0()
    EVIDENCE["status_after"] = status_text(run_dir)[0]
    EVIDENCE["sacct"] = sacct_rows(job_id)
    assert code == 0, log[-4000:]
    assert ck.tracker_iteration(ckpt) == train_iters

    # at most one save interval redone: resumed from a save at most save_interval before the
    # save that was cut
    loaded = [int(n) for n in re.findall(r"successfully loaded checkpoint from .* at iteration (\d+)", log)]
    EVIDENCE["resumed_from"] = loaded
    reached = EVIDENCE["node_down"]["save_started_at"]
    assert loaded and reached - loaded[0] <= save_interval, (reached, loaded)
    EVIDENCE["iterations_redone"] = reached - loaded[0]

    # (c) no reader picks a half-written checkpoint: every iter_* left is complete, and the cut
    # save (if SIGKILL caught it midway) was moved aside, not deleted
    assert all(ck.is_complete(ckpt, ck.iteration_of(p)) for p in ckpt.glob("iter_*"))
    quarantined = sorted(p.name for p in (ckpt / ck.QUARANTINE).glob("iter_*")) \
        if (ckpt / ck.QUARANTINE).is_dir() else []
    EVIDENCE["quarantined"] = quarantined
    def job_settled():  # the done marker comes before submitit's own epilogue
        rows = sacct_rows(job_id)
        return rows if rows and rows[-1][1] not in ("RUNNING", "COMPLETING") else None

    rows = wait_for(job_settled, 60, 0.5)
    assert rows[-1][1] == "COMPLETED" and any(r[1] in ("NODE_FAIL", "REQUEUED") for r in rows[:-1]), rows
    assert len(rows) >= 3, rows  # node failure, preemption, the final allocation

    # (d) the preemptor ran between two allocations of ours, on every node, overlapping none;
    # the allocation after it resumed from the save the preemption signal triggered
    _, p_state, p_start, p_end = sacct_rows(preemptor)[-1]
    EVIDENCE["preemptor"] = [p_state, p_start, p_end]
    assert p_state == "COMPLETED" and rows[0][2] < p_start < rows[-1][3], (p_start, rows)
    assert not any(r[2] < p_end and p_start < r[3] for r in rows), (p_start, p_end, rows)
    before_third = "stage distill starting".join(log.split("stage distill starting")[:3])
    saved = [int(n) for n in re.findall(r"successfully saved checkpoint from iteration\s+(\d+)",
                                        before_third)]
    EVIDENCE["saved_before_preemption"] = saved
    assert saved and loaded[-1] == max(saved), (saved, loaded)  # the last complete save
    Path(tmp_path / "evidence.json").write_text(json.dumps(EVIDENCE, indent=1, default=str))
    print(json.dumps(EVIDENCE, indent=1, default=str))
