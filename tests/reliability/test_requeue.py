"""Faults a week-long run must survive, injected on the real SLURM test cluster:
time limits (SIGUSR2 -> Megatron saves -> submitit requeues) and partition-priority preemption,
with the real KD loop resuming from its last checkpoint each time."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from launch import status

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slurm, pytest.mark.e2e]


@pytest.fixture(scope="session")
def demo_prefix(fixture_cache: Path) -> dict:
    """Demo models + the demo corpus tokenized once (a ready Megatron prefix: no data stage)."""
    from assets.demo import build
    from kd import data
    from kd.specs import DataSource, DataSpec

    assets = build(fixture_cache / "demo")
    out = fixture_cache / "demo_tokenized"
    result = data.run(DataSpec(sources=(DataSource(name="synthetic", jsonl=str(assets["corpus"])),),
                               tokenizer=str(assets["teacher"]), out_dir=str(out)))
    return {**assets, "prefix": result["blend"][0][1]}


def sacct_rows(job_id: str) -> list[list[str]]:
    out = subprocess.run(["sacct", "-X", "-D", "-n", "-P", "-o", "JobIDRaw,State,Start,End",
                          "-j", job_id], capture_output=True, text=True).stdout
    return [line.split("|") for line in out.splitlines() if line]


def preempt_once(log: Path, stop: threading.Event, done: list[str]) -> None:
    """Once training has started, take every node with a job on the `high` partition."""
    while not stop.is_set():
        if log.is_file() and "distill: starting from iteration" in log.read_text():
            time.sleep(5)  # a few iterations in
            res = subprocess.run(["sbatch", "--parsable", "-p", "high", "-N", "4", "--exclusive",
                                  "-t", "2", "-J", "kd-preemptor", "-o", "/dev/null",
                                  "--wrap", "sleep 5"],
                                 capture_output=True, text=True, check=True)
            done.append(res.stdout.strip())
            return
        time.sleep(1)


@pytest.mark.timeout(1200)
def test_timeouts_and_preemption_resume_from_last_checkpoint(slurm_cluster, demo_prefix, tmp_path):
    run_dir = tmp_path / "run"
    train_iters = 300
    cmd = [sys.executable, "launch/distill.py", "--cluster", "ci", "--config", "tiny_demo",
           "--run-dir", str(run_dir),
           f"student.path={demo_prefix['student']}", f"teacher.path={demo_prefix['teacher']}",
           f"export.hf_template={demo_prefix['teacher']}", "eval.enabled=false",
           f"data.sources=[{{name: synthetic, prefix: {demo_prefix['prefix']}}}]",
           "train.tp=2", f"train.train_iters={train_iters}", "train.save_interval=10",
           "train.micro_batch_size=16", "train.global_batch_size=128", "train.eval_interval=1000",
           # a 2-minute limit with USR2 45 s before it (it arrives up to ~30 s early: slurmctld
           # checks on a tick): 45-75 s per allocation, of which ~15 s go to start-up
           "cluster.time_min=2", "cluster.signal_delay_s=45", "cluster.save_time_s=10",
           "cluster.max_requeues=20"]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    manifest = json.loads((run_dir / "manifest.json").read_text())
    job_id = manifest["stages"]["distill"]["job_id"]

    stop, preemptor = threading.Event(), []
    log_path = run_dir / "jobs" / "distill" / f"{job_id}_0_log.out"
    watcher = threading.Thread(target=preempt_once, args=(log_path, stop, preemptor), daemon=True)
    watcher.start()
    try:
        code = status.wait_for_run(run_dir, echo=lambda *_: None, poll_s=5, timeout_s=1100)
    finally:
        stop.set()
    log = log_path.read_text()
    assert code == 0, log[-4000:]

    # finished at the configured iteration, through several allocations
    ckpt = run_dir / "distill" / "checkpoints"
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == str(train_iters)
    rows = sacct_rows(job_id)
    assert len(rows) >= 4, rows  # >= 2 timeouts + 1 preemption + the final allocation
    assert all(r[1] == "REQUEUED" for r in rows[:-1]) and rows[-1][1] == "COMPLETED", rows
    # preempted once: the exclusive `high` job got every node in the middle of the run, so an
    # allocation of ours ended for it (submitit requeues before SLURM does: the row says REQUEUED)
    assert preemptor, "the preemptor was never submitted"
    _, p_state, p_start, p_end = sacct_rows(preemptor[0])[-1]
    assert p_state == "COMPLETED" and rows[0][2] < p_start < rows[-1][3], (p_start, rows)
    assert not any(r[2] < p_end and p_start < r[3] for r in rows), (p_start, p_end, rows)

    # each allocation after the first resumed exactly where the previous one saved
    saved = [int(n) for n in re.findall(r"successfully saved checkpoint from iteration\s+(\d+)", log)]
    loaded = [int(n) for n in re.findall(r"successfully loaded checkpoint from .* at iteration (\d+)", log)]
    restarts = log.count("stage distill starting")
    assert restarts >= 4 and len(loaded) >= 3, (restarts, loaded)
    # submitit calls every SIGUSR2 of a job shorter than 10 min a timeout (the preemption too)
    signals = re.findall(r"^submitit INFO .* - Job has timed out", log, re.M)
    assert len(signals) >= 3, "expected two time-limit requeues and one preemption"
    for it in loaded:
        assert it in saved, (it, saved)
    # exit-signal saves (not only the periodic ones) happened: some saved iteration is not a
    # multiple of save_interval, i.e. at most one iteration was redone after that signal
    assert any(s % 10 for s in saved), saved

    # dependents waited for the final completion, not the first allocation
    export_id = manifest["stages"]["export_hf"]["job_id"]
    export_start = sacct_rows(export_id)[-1][2]
    assert export_start >= rows[-1][3], (export_start, rows)
