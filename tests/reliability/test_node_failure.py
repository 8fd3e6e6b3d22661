"""Fault (a) of issue 17 on the real SLURM test cluster: a node taken down in the middle of a
TP=2 distill over 2 nodes. SLURM ends the allocation (NODE_FAIL) and requeues the job onto
healthy nodes; it resumes from the last complete checkpoint, so at most one save interval is
redone, and no checkpoint a reader would pick is ever incomplete. The node is always resumed."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kd import checkpoints as ckpts
from launch import status

from . import test_requeue
from .test_requeue import sacct_rows

demo_prefix = test_requeue.demo_prefix  # the shared fixture

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slurm, pytest.mark.e2e]
SAVE_INTERVAL = 10
TRAIN_ITERS = 60


def _status(run_dir: Path) -> str:
    res = subprocess.run([sys.executable, "launch/status.py", str(run_dir)], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    return f"[exit {res.returncode}]\n{res.stdout}{res.stderr}"


def _nodes_of(job_id: str) -> list[str]:
    try:  # the shared controller can be slow for a moment (other tests): just ask again
        out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%N"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
    except subprocess.TimeoutExpired:
        return []
    if not out:
        return []
    return subprocess.run(["scontrol", "show", "hostnames", out], capture_output=True, text=True,
                          timeout=10).stdout.split()


def take_node_down(log: Path, job_id: str, ckpt: Path, stop: threading.Event, record: dict,
                   run_dir: Path) -> None:
    """After the first complete save, mark one of the job's nodes DOWN, let SLURM act, resume it."""
    while not stop.is_set():
        if ckpts.latest_complete(ckpt) and log.is_file():
            nodes = _nodes_of(job_id)
            if not nodes:
                time.sleep(0.5)
                continue
            node = nodes[-1]
            time.sleep(4)  # some iterations past the save: the ones a requeue redoes
            record["node"] = node
            record["before"] = ckpts.latest_complete(ckpt)
            subprocess.run(["scontrol", "update", f"nodename={node}", "state=down",
                            "reason=kdtest"], check=True, timeout=20)
            try:
                time.sleep(3)
                record["status_during"] = _status(run_dir)
            finally:
                subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"],
                               timeout=20)
            return
        time.sleep(0.5)


@pytest.mark.timeout(600)
def test_node_down_mid_distill_requeues_and_resumes(slurm_cluster, demo_prefix, tmp_path):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "launch/distill.py", "--cluster", "ci", "--config", "tiny_demo",
           "--run-dir", str(run_dir),
           f"student.path={demo_prefix['student']}", f"teacher.path={demo_prefix['teacher']}",
           f"export.hf_template={demo_prefix['teacher']}", "eval.enabled=false",
           f"data.sources=[{{name: synthetic, prefix: {demo_prefix['prefix']}}}]",
           "train.tp=2", f"train.train_iters={TRAIN_ITERS}",
           f"train.save_interval={SAVE_INTERVAL}", "train.micro_batch_size=16",
           "train.global_batch_size=128", "train.eval_interval=1000", "cluster.time_min=10",
           "cluster.max_requeues=3"]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    manifest = json.loads((run_dir / "manifest.json").read_text())
    job_id = manifest["stages"]["distill"]["job_id"]
    ckpt = run_dir / "distill" / "checkpoints"
    log_path = run_dir / "jobs" / "distill" / f"{job_id}_0_log.out"

    stop, record = threading.Event(), {}
    fault = threading.Thread(target=take_node_down,
                             args=(log_path, job_id, ckpt, stop, record, run_dir), daemon=True)
    fault.start()
    try:
        code = status.wait_for_run(run_dir, echo=lambda *_: None, poll_s=5, timeout_s=500)
    finally:
        stop.set()
        fault.join(timeout=60)
        if "node" in record:  # restore even if the thread died between down and resume
            subprocess.run(["scontrol", "update", f"nodename={record['node']}", "state=resume"],
                           capture_output=True, timeout=20)  # "invalid state" if already resumed
    rows = sacct_rows(job_id)
    log = log_path.read_text()
    after = _status(run_dir)
    print(f"sacct rows: {rows}\nstatus during the fault:\n{record.get('status_during')}\n"
          f"status after:\n{after}")
    assert "node" in record, "the node was never taken down"
    assert code == 0, log[-4000:]
    assert (ckpt / ckpts.TRACKER).read_text().strip() == str(TRAIN_ITERS)
    assert ckpts.incomplete_dirs(ckpt) == []
    assert len(rows) >= 2 and rows[-1][1] == "COMPLETED", rows
    assert any(r[1] in ("NODE_FAIL", "REQUEUED") for r in rows[:-1]), rows

    # iterations redone: from the checkpoint it resumed at to the furthest it had trained
    resumed = re.search(r"successfully loaded checkpoint from .* at iteration (\d+)", log)
    assert resumed, log[-4000:]
    loaded = [int(resumed.group(1))]
    # Megatron logs iterations on the last rank: the first allocation of every rank's log
    first_run = []
    for rank_log in sorted(log_path.parent.glob(f"{job_id}_*_log.out")):
        segments = rank_log.read_text().split("stage distill starting")
        if len(segments) > 1:
            first_run += [int(n) for n in re.findall(r"iteration\s+(\d+)/\s*\d+", segments[1])]
    assert first_run, log[:4000]
    redone = max(first_run) - loaded[0]
    print(f"resumed at {loaded[0]}, had reached {max(first_run)}: {redone} iterations redone")
    assert loaded[0] >= record["before"]
    # it resumed from the last save of the failed allocation (Megatron logs iterations only every
    # log_interval, so this, not the count above, is what bounds the redone work by one interval)
    saved = [int(n) for n in re.findall(r"successfully saved checkpoint from iteration\s+(\d+)",
                                        log[:resumed.start()])]
    assert saved and loaded[0] == max(saved), (saved, loaded)
    assert redone <= SAVE_INTERVAL, (loaded, first_run)
    assert "COMPLETED" in after or "completed" in after.lower(), after
