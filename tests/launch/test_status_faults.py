"""Status under faults, with fake ``sacct``/``squeue`` executables on PATH (the subprocess
boundary): unreachable daemons, hanging daemons, requeues in progress, cancelled dependents,
and the first real error over every rank's log."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest

from launch import status
from launch.backends import slurm as slurm_backend


def fake_tool(bindir: Path, name: str, stdout: str = "", rc: int = 0, sleep: float = 0,
              stderr: str = "") -> None:
    script = bindir / name
    script.write_text("#!/bin/sh\n"
                      + (f"sleep {sleep}\n" if sleep else "")
                      + f"cat <<'EOF'\n{stdout}\nEOF\n"
                      + (f"echo '{stderr}' >&2\n" if stderr else "")
                      + f"exit {rc}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


@pytest.fixture
def bindir(tmp_path, monkeypatch):
    d = tmp_path / "bin"
    d.mkdir()
    monkeypatch.setenv("PATH", f"{d}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(slurm_backend, "TIMEOUT_S", 1.0)
    return d


def make_run(tmp_path: Path, logs: dict[str, str] | None = None) -> Path:
    run = tmp_path / "run"
    folder = run / "jobs" / "distill"
    folder.mkdir(parents=True)
    for name, text in (logs or {}).items():
        (folder / name).write_text(text)
    stages = {
        "prepare_data": {"job_id": "10", "deps": [], "state": "SUBMITTED", "log": ""},
        "distill": {"job_id": "11", "deps": ["prepare_data"], "state": "SUBMITTED",
                    "log": str(folder / "11_1_log.out"), "folder": str(folder)},
        "export_hf": {"job_id": "12", "deps": ["distill"], "state": "SUBMITTED", "log": ""},
        "eval_student_after": {"job_id": "13", "deps": ["export_hf"], "state": "SUBMITTED",
                               "log": ""},
    }
    (run / "manifest.json").write_text(json.dumps(
        {"kdlaunch_manifest": 1, "config_hash": "abc", "launches": [], "experiment": {},
         "cluster": {"executor": "slurm", "name": "test"}, "stages": stages}))
    return run


def test_first_error_is_rank0_cause_not_gloo_echo(tmp_path, bindir):
    rank0 = ("2026-01-01 10:00:00,000 [distill] INFO kdlaunch: stage distill starting "
             "(module kd.distill, host n1, restart 0)\n"
             "Traceback (most recent call last):\n  File \"x.py\", line 1\n"
             "2026-01-01 10:00:05,000 [distill] ERROR x\n"
             "PermissionError: [Errno 13] Permission denied: '/ckpt/iter_0000020'\n")
    rank1 = ("2026-01-01 10:00:00,000 [distill] INFO kdlaunch: stage distill starting "
             "(module kd.distill, host n2, restart 0)\n"
             "2026-01-01 10:00:06,000 x\n"
             "RuntimeError: [gloo] Connection closed by peer [10.0.0.1]:1234\n")
    run = make_run(tmp_path, {"11_0_log.err": rank0, "11_1_log.out": rank1,
                              "11_0_log.out": "", "11_1_log.err": ""})
    fake_tool(bindir, "sacct", "10|COMPLETED|0:0|00:00:05|a|b|n1\n11|FAILED|1:0|00:01:00|a|b|n[1-2]\n"
              "12|CANCELLED|0:0|00:00:00|a|b|None\n13|CANCELLED|0:0|00:00:00|a|b|None")
    fake_tool(bindir, "squeue", rc=1, stderr="slurm_load_jobs error: Invalid job id specified")
    text, code = status.render(run)
    assert code == 1
    assert "first error: rank 0 on n1: PermissionError" in text
    assert "gloo" not in text
    assert "export_hf" in text and "-> dependency failed: distill" in text
    # transitively: eval waits on export, which was cancelled because distill failed
    assert text.count("dependency failed: distill") == 2
    assert "unreachable" not in text


def test_requeue_after_node_failure_is_not_a_failure(tmp_path, bindir):
    run = make_run(tmp_path)
    fake_tool(bindir, "sacct", "10|COMPLETED|0:0|00:00:05|a|b|n1\n11|NODE_FAIL|1:0|00:00:40|a|b|n[1-2]")
    fake_tool(bindir, "squeue", "11|PENDING|BeginTime\n12|PENDING|Dependency\n13|PENDING|Dependency")
    text, code = status.render(run)
    assert code == 0, text
    assert "REQUEUED" in text and "requeued after node failure, restart 1" in text
    # once sacct has the new allocation's row, the job is pending again: still a requeue
    fake_tool(bindir, "sacct", "10|COMPLETED|0:0|00:00:05|a|b|n1\n"
              "11|NODE_FAIL|1:0|00:00:40|a|b|n[1-2]\n11|PENDING|0:0|00:00:00|a|b|None")
    text, code = status.render(run)
    assert code == 0 and "requeued after node failure, restart 1" in text


def test_controller_down_says_so_and_uses_accounting(tmp_path, bindir):
    run = make_run(tmp_path)
    fake_tool(bindir, "sacct", "10|COMPLETED|0:0|00:00:05|a|b|n1\n11|RUNNING|0:0|00:00:40|a|b|n1")
    fake_tool(bindir, "squeue", rc=1, stderr="slurm_load_jobs error: Unable to contact slurm controller")
    text, code = status.render(run)
    assert code == 0
    notes = [ln for ln in text.splitlines() if "unreachable" in ln]
    assert len(notes) == 1 and "controller unreachable" in notes[0]
    assert "table from accounting (sacct)" in notes[0]
    assert "distill              RUNNING" in text


def test_hanging_daemons_time_out_and_exit_3(tmp_path, bindir):
    run = make_run(tmp_path)
    fake_tool(bindir, "sacct", sleep=30)
    fake_tool(bindir, "squeue", sleep=30)
    t0 = time.time()
    text, code = status.render(run)
    assert time.time() - t0 < 25  # killed after TIMEOUT_S (1 s), not after the fake's 30 s
    assert code == status.EXIT_SLURM_UNREACHABLE == 3
    assert "SLURM unreachable" in text and "did not answer" in text
    assert "manifest and done markers only" in text


def test_accounting_down(tmp_path, bindir):
    run = make_run(tmp_path)
    fake_tool(bindir, "sacct", rc=1, stderr="sacct: error: Problem talking to the database")
    fake_tool(bindir, "squeue", "11|RUNNING|None")
    text, code = status.render(run)
    assert code == 0
    assert "accounting unreachable (sacct: sacct failed: sacct: error: Problem talking" in text
    assert "distill              RUNNING" in text


def test_wait_does_not_decide_while_blind(tmp_path, bindir):
    """With neither daemon answering, --wait keeps polling (backing off) instead of reading the
    manifest's stale states as final; it returns once SLURM answers again."""
    run = make_run(tmp_path)
    fake_tool(bindir, "sacct", rc=1, stderr="down")
    fake_tool(bindir, "squeue", rc=1, stderr="down")
    seen, sleeps = [], []

    def fake_sleep(s):
        sleeps.append(s)
        if len(sleeps) == 3:  # SLURM is back: everything finished meanwhile
            fake_tool(bindir, "sacct", "\n".join(f"{j}|COMPLETED|0:0|1|a|b|n1" for j in "10 11 12 13".split()))
            fake_tool(bindir, "squeue", rc=1, stderr="Invalid job id specified")

    code = status.wait_for_run(run, echo=seen.append, poll_s=1, max_poll_s=4, sleep=fake_sleep)
    assert code == 0
    assert sleeps == [2, 4, 4]
    assert any("SLURM unreachable" in s for s in seen)
