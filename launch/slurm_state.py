"""Job states from SLURM: accounting (sacct, the source submitit also uses) and the controller
(squeue, the live queue: requeues in progress, pending reasons).

Either can be unreachable (slurmdbd or slurmctld down, a hung RPC): each query has a short
timeout and returns its error text instead of pretending the job is unknown.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess

FIELDS = ("JobIDRaw", "State", "ExitCode", "Elapsed", "Start", "End", "NodeList")
TIMEOUT_S = 8.0  # one query; status must answer even when a daemon hangs


def available() -> bool:
    return shutil.which("sacct") is not None


def _run(cmd: list[str], timeout: float | None) -> tuple[str | None, str | None]:
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


def accounting(job_ids: list[str], timeout: float | None = None) -> tuple[dict[str, dict], str | None]:
    """({job_id: {state, exit_code, elapsed, start, end, nodes, restarts}}, error).

    A job that was requeued has one row per allocation; the last row is the current one, and
    ``history`` keeps every allocation's state. Unknown ids are absent from the result.
    """
    if not job_ids:
        return {}, None
    cmd = ["sacct", "-a", "-X", "-D", "--parsable2", "--noheader", "-o", ",".join(FIELDS),
           "-j", ",".join(job_ids)]
    out, err = _run(cmd, timeout)
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


def controller(job_ids: list[str], timeout: float | None = None) -> tuple[dict[str, dict], str | None]:
    """({job_id: {state, reason, restarts}} for jobs still in the queue, error)."""
    if not job_ids:
        return {}, None
    cmd = ["squeue", "-h", "-o", "%i|%T|%r", "-j", ",".join(job_ids)]
    out, err = _run(cmd, timeout)
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


def query(job_ids: list[str]) -> dict[str, dict]:
    """Accounting rows only ({} when sacct cannot be asked): kept for callers that only want
    finished states (submit's adoption check)."""
    return accounting(job_ids)[0]


def cancel(job_ids: list[str]) -> None:
    if job_ids:
        subprocess.run(["scancel", *job_ids], check=False, timeout=30)
