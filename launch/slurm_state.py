"""Job states from SLURM accounting (sacct), the source submitit also uses."""

from __future__ import annotations

import shutil
import subprocess

FIELDS = ("JobIDRaw", "State", "ExitCode", "Elapsed", "Start", "End", "NodeList")


def available() -> bool:
    return shutil.which("sacct") is not None


def query(job_ids: list[str]) -> dict[str, dict]:
    """{job_id: {state, exit_code, elapsed, start, end, nodes, restarts}} for the main steps.

    A job that was requeued has one row per allocation; the last row is the current one.
    Unknown ids are absent from the result. Returns {} when sacct is not installed.
    """
    if not job_ids or not available():
        return {}
    cmd = ["sacct", "-a", "-X", "-D", "--parsable2", "--noheader", "-o", ",".join(FIELDS),
           "-j", ",".join(job_ids)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    rows: dict[str, dict] = {}
    for line in out.splitlines():
        parts = line.split("|")
        if len(parts) != len(FIELDS):
            continue
        jid, state, exit_code, elapsed, start, end, nodes = parts
        restarts = rows[jid]["restarts"] + 1 if jid in rows else 0  # one row per allocation
        rows[jid] = {"state": state.split()[0] if state else "UNKNOWN", "state_text": state,
                     "exit_code": exit_code, "elapsed": elapsed, "start": start, "end": end,
                     "nodes": nodes, "restarts": restarts}
    return rows


def cancel(job_ids: list[str]) -> None:
    if job_ids:
        subprocess.run(["scancel", *job_ids], check=False, timeout=30)
