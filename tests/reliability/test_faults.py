"""Runtime faults on the real SLURM test cluster, one short run serving all five. It runs the
layout the launcher picks for ``tiny_demo`` on ``ci`` as shipped (2 nodes x 1 task: tp 1, pp 1,
DP 2, the distributed optimizer on) and the whole pipeline (export, the three evals, the report):

(e) right after the first complete save, ``scontrol requeue`` ends the first allocation: the
    next one logs ``distill: resuming from iteration N`` (DP 2, distributed optimizer True), N
    being the last complete save at the requeue;
(a) the node of rank 0 is taken down while it saves (then resumed): SLURM requeues the job, it
    resumes from the last complete checkpoint, at most one save interval is redone;
(c) that kill lands mid-save: the half-written ``iter_*`` is never picked by any reader and is
    quarantined (kept) on the next start;
(d) the third allocation is preempted by an exclusive job on the ``high`` partition (SLURM
    requeues it after the grace time); the fourth resumes from the last complete save;
(b) slurmctld is stopped as the fourth allocation starts, until status has said that the
    controller cannot be asked while accounting still answers and the run has loaded, trained
    and saved a checkpoint without it (~10-40 s); restarted, the run completes: every stage
    COMPLETED, the export of the last iteration, the evals and the report (kd_synth improved:
    the distillation survived the faults).
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
STAGES = ("distill", "export_hf", "eval_student_before", "eval_teacher", "eval_student_after",
          "report")  # no prepare_data: the test gives a tokenized prefix
START = "stage distill starting"  # kd/job.py, once per allocation
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


def loads(text: str) -> list[int]:
    return [int(n) for n in re.findall(
        r"successfully loaded checkpoint from .* at iteration (\d+)", text)]


def saves(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"successfully saved checkpoint from iteration\s+(\d+)",
                                       text)]


@pytest.mark.timeout(900)
def test_requeue_node_down_preemption_and_controller_outage(slurm_cluster, demo_prefix, tmp_path):
    run_dir = tmp_path / "run"
    train_iters, save_interval = 60, 5
    cmd = [sys.executable, "launch/distill.py", "--cluster", "ci", "--config", "tiny_demo",
           "--run-dir", str(run_dir),
           f"student.path={demo_prefix['student']}", f"teacher.path={demo_prefix['teacher']}",
           f"export.hf_template={demo_prefix['teacher']}",
           f"eval.include_path={demo_prefix['tasks']}",
           f"data.sources=[{{name: synthetic, prefix: {demo_prefix['prefix']}}}]",
           # tp, pp, micro-batch and the distributed optimizer stay `auto` (ci: DP 2, sharded)
           f"train.train_iters={train_iters}", f"train.save_interval={save_interval}",
           "train.global_batch_size=64", "train.eval_interval=1000",
           # USR2 45 s before the limit (preemption sends it too); ci's auto limit (>= 15 min): no
           # time-limit requeue
           "cluster.signal_delay_s=45", "cluster.save_time_s=10", "cluster.max_requeues=5"]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "layout: tp=1 pp=1 dp=2" in res.stdout and "distributed_optimizer=on" in res.stdout, \
        res.stdout
    manifest = json.loads((run_dir / "manifest.json").read_text())
    job_id = manifest["stages"]["distill"]["job_id"]
    folder = run_dir / "jobs" / "distill"
    ckpt = run_dir / "distill" / "checkpoints"
    rank0 = folder / f"{job_id}_0_log.out"

    def log0() -> str:
        return rank0.read_text(errors="replace") if rank0.is_file() else ""

    def allocation(i: int) -> str:  # rank 0's log of the i-th allocation (0-based)
        parts = log0().split(START)
        return parts[i + 1] if len(parts) > i + 1 else ""

    # (e) scontrol requeue the moment the first save is complete (the next one is 5 steps off)
    def first_save_complete():
        return ck.latest_complete(ckpt)

    requeued_at = wait_for(first_save_complete, 200, 0.05)
    subprocess.run(["scontrol", "requeue", job_id], check=True)
    # what the requeued allocation left on disk (a save under way at SIGTERM may still finish):
    # read it once the next allocation starts, long before that one can save anything
    wait_for(lambda: allocation(1), 200, 0.2)
    EVIDENCE["requeue"] = {"latest_complete_at_requeue": requeued_at,
                           "latest_complete_at_next_start": ck.latest_complete(ckpt),
                           "rows": sacct_rows(job_id)}

    # (a)+(c): take rank 0's node down the moment the next allocation starts a save of its own
    def saving_again():
        m = re.findall(r"saving checkpoint at iteration\s+(\d+)", allocation(1))
        return [int(x) for x in m if int(x) > EVIDENCE["requeue"]["latest_complete_at_next_start"]]

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
        wait_for(lambda: len(sacct_rows(job_id)) > 2, 60, 0.5)
        EVIDENCE["status_during_node_fault"] = status_text(run_dir)[0]
    finally:
        if node:
            subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"],
                           capture_output=True, check=False)  # may have come back by itself

    # (d) the third allocation trains: an exclusive `high` job on every node preempts it
    wait_for(lambda: "successfully saved checkpoint" in allocation(2), 200, 0.2)  # trained a bit
    preemptor = subprocess.run(["sbatch", "--parsable", "-p", "high", "-N", "4", "--exclusive",
                                "-t", "2", "-J", "kd-preemptor", "-o", "/dev/null",
                                "--wrap", "sleep 5"],
                               capture_output=True, text=True, check=True).stdout.strip()

    # (b) stop the controller as the fourth allocation starts; start it again once status was
    # asked and the run saved a checkpoint without it (so its step ends after the restart: a
    # step that ends during the outage holds its job COMPLETING, and the export behind it,
    # until slurmstepd retries, ~60 s later)
    wait_for(lambda: allocation(3), 200, 0.2)
    down = time.time()
    try:
        stop_ctld()
        stopped_at = ck.tracker_iteration(ckpt)
        text, code = status_text(run_dir)
        EVIDENCE["status_during_ctld_outage"] = (text, code)

        def saved_without_controller():
            return (ck.tracker_iteration(ckpt) or 0) > (stopped_at or 0)

        wait_for(saved_without_controller, 200, 0.2)  # it loaded, trained and saved
        EVIDENCE["ctld_outage"] = {"tracker_at_stop": stopped_at,
                                   "tracker_at_start": ck.tracker_iteration(ckpt)}
    finally:
        start_ctld()
        EVIDENCE.setdefault("ctld_outage", {})["seconds"] = round(time.time() - down, 1)
    assert "controller unreachable" in text and "table from accounting (sacct)" in text, text
    assert code == 0, text

    code = status.wait_for_run(run_dir, echo=lambda *_: None, poll_s=2, timeout_s=400)
    log = log0()
    EVIDENCE["status_after"] = status_text(run_dir)[0]
    EVIDENCE["sacct"] = sacct_rows(job_id)
    assert code == 0, log[-4000:] + EVIDENCE["status_after"]
    assert ck.tracker_iteration(ckpt) == train_iters
    allocs = log.split(START)[1:]
    assert len(allocs) == 4, len(allocs)  # requeue, node failure, preemption, the last one
    resumed = [re.search(r"distill: (starting|resuming) from iteration (\d+) .*"
                         r"distributed optimizer (\w+)", a) for a in allocs]
    EVIDENCE["distill_lines"] = [m.group(0) if m else None for m in resumed]
    assert all(resumed), EVIDENCE["distill_lines"]
    assert resumed[0].group(1, 2) == ("starting", "0")
    # every start ran the shipped layout (world 2 = DP 2 at tp 1 pp 1, sharded optimizer)
    assert all("(world 2, tp 1, pp 1," in m.group(0) and m.group(3) == "True" for m in resumed)
    assert json.loads((ckpt / ck.LAYOUTS).read_text()) == [
        {"from_iteration": 0, "tp": 1, "pp": 1, "dp": 2, "distributed_optimizer": True}]

    # (e) the allocation after `scontrol requeue` resumed from the last complete save at the
    # requeue: the one complete when it was asked, or the next if it was already under way
    at_requeue = EVIDENCE["requeue"]["latest_complete_at_next_start"]
    assert requeued_at <= at_requeue <= requeued_at + save_interval, EVIDENCE["requeue"]
    assert resumed[1].group(1, 2) == ("resuming", str(at_requeue)), EVIDENCE["distill_lines"]
    assert loads(allocs[1])[:1] == [at_requeue], loads(allocs[1])

    # (a) at most one save interval redone: the allocation after the node failure resumed from
    # a save at most save_interval before the save that was cut
    loaded = [loads(a)[0] if loads(a) else None for a in allocs]
    EVIDENCE["resumed_from"] = loaded
    reached = EVIDENCE["node_down"]["save_started_at"]
    assert loaded[0] is None and loaded[2] is not None and reached - loaded[2] <= save_interval, \
        (reached, loaded)
    assert resumed[2].group(1, 2) == ("resuming", str(loaded[2]))
    EVIDENCE["iterations_redone"] = reached - loaded[2]

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
    EVIDENCE["sacct"] = rows
    # requeue, node failure, preemption: three ended allocations, then the one that completed
    assert [r[1] for r in rows[:1]] == ["REQUEUED"] and rows[-1][1] == "COMPLETED", rows
    assert len(rows) == 4 and any(r[1] in ("NODE_FAIL", "REQUEUED") for r in rows[1:3]), rows

    # (d) the preemptor ran between two allocations of ours, on every node, overlapping none;
    # the allocation after it resumed from the save the preemption signal triggered
    _, p_state, p_start, p_end = sacct_rows(preemptor)[-1]
    EVIDENCE["preemptor"] = [p_state, p_start, p_end]
    assert p_state == "COMPLETED" and rows[0][2] < p_start < rows[-1][3], (p_start, rows)
    assert not any(r[2] < p_end and p_start < r[3] for r in rows), (p_start, p_end, rows)
    saved = saves("".join(allocs[:3]))
    EVIDENCE["saved_before_preemption"] = saved
    assert saved and loaded[3] == max(saved), (saved, loaded)  # the last complete save
    assert resumed[3].group(1, 2) == ("resuming", str(loaded[3]))

    # the whole pipeline finished after the faults: export (of the final iteration), the three
    # evals, the report; and the distillation cut three times still did its job
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert set(manifest["stages"]) == set(STAGES), manifest["stages"]
    assert all((run_dir / "stages" / f"{s}.done").is_file() for s in STAGES)
    text = EVIDENCE["status_after"]
    assert all(re.search(rf"^{s}\s+COMPLETED\b", text, re.M) for s in STAGES), text
    exported = json.loads((run_dir / "stages" / "export_hf.done").read_text())
    assert exported["iteration"] == train_iters and (run_dir / "export" / "hf" / "config.json"
                                                     ).is_file(), exported
    synth = {r: json.loads((run_dir / "eval" / f"{r}.json").read_text())["groups"]["kd_synth"]
             ["acc"] for r in ("student_before", "teacher", "student_after")}
    EVIDENCE["kd_synth"] = synth
    assert synth["student_after"] > synth["student_before"] + 0.1, synth
    report = (run_dir / "report" / "report.md").read_text()
    assert "| After distillation |" in report and "Verdict on kd_synth: improved" in report

    def all_settled():  # every stage's last allocation, once none runs any more
        out = subprocess.run(["sacct", "-X", "-D", "-n", "-P", "-o", "JobIDRaw,State", "-j",
                              ",".join(ids.values())], capture_output=True, text=True).stdout
        last = dict(line.split("|")[:2] for line in out.splitlines() if line)
        return last if set(last) == set(ids.values()) and not set(last.values()) & {
            "PENDING", "RUNNING", "COMPLETING", "REQUEUED"} else None

    ids = {s: str(r["job_id"]) for s, r in manifest["stages"].items()}
    last = wait_for(all_settled, 90, 1)
    assert all(last[i] == "COMPLETED" for i in ids.values()), (ids, last)
    Path(tmp_path / "evidence.json").write_text(json.dumps(EVIDENCE, indent=1, default=str))
    print(json.dumps(EVIDENCE, indent=1, default=str))
