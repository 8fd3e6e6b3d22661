"""The nightly sweep through scrontab (SLURM's cron) on the test cluster, as shipped.

``configs/sweeps/nightly_tiny.scrontab`` is installed with README's commands, with only its
schedule and paths substituted (``variant``, each substitution checked to apply exactly once):
the launch entry fires at the next minute, the check entry a minute later. The launch run must
queue the sweep's members (they are cancelled at once: their run is the documented sweep test's
work) and exit 0; the check run must then report the night's members without results and exit
3 (``sacct``: a REQUEUED run with exit code 3). ``scrontab -r`` in ``finally`` removes both entries. The two runs
cost a few CPU-seconds; the test mostly waits for the two minute boundaries (70-130 s).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import yaml

from tests.docs.test_documented_commands import (
    SWEEP_DATA,
    SWEEP_SHORT,
    commands_of,
    header_commands,
    make_scratch,
)

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "configs" / "sweeps" / "nightly_tiny.scrontab"
LAUNCH, CHECK = "kd-nightly-launch", "kd-nightly-check"
# the shipped schedule (20:00 and 20:30, 07:00) and the one placeholder path, in the entries
SCHEDULES = {LAUNCH: "0,30 20 * * *", CHECK: "0 7 * * *"}
CHDIR = "--chdir=/path/to/kdlaunch"
# first line of the installed variant: a leftover of a killed run is recognisably this test's
MARK = "# kdlaunch tests/slurm/test_scrontab.py test install; `scrontab -r` removes it"


def sh(cmd: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, shell=True, executable="/bin/bash", capture_output=True,
                          text=True, timeout=timeout)


def entries(text: str) -> dict[str, tuple[list[str], str]]:
    """{job name: (its #SCRON lines, its cron line)} of a scrontab file."""
    out, scron = {}, []
    for line in text.splitlines():
        if line.startswith("#SCRON"):
            scron.append(line)
        elif line.strip() and not line.startswith("#"):
            name = re.search(r"--job-name=(\S+)", " ".join(scron))
            assert name, f"an entry without --job-name: {line}"
            out[name.group(1)] = (scron, line)
            scron = []
    return out


def variant(text: str, scratch: Path, at: dict[str, datetime]) -> str:
    """The shipped file with the schedule moved to ``at`` (minute and hour of each entry), the
    placeholder checkout path pointed at ``scratch``, and the check's night moved from
    yesterday to today (the launch fired a minute earlier, the same day); nothing else."""
    assert set(entries(text)) == set(SCHEDULES), entries(text)
    subs = [(f"\n{SCHEDULES[name]} ", f"\n{at[name].minute} {at[name].hour} * * * ", 1)
            for name in (LAUNCH, CHECK)]
    subs += [(CHDIR, f"--chdir={scratch}", 2),  # one per entry
             ("--date $(date -d yesterday +%F)", "--date $(date +%F)", 1)]
    out = text
    for old, new, count in subs:
        assert out.count(old) == count, (old, count)
        out = out.replace(old, new)
    changed = [(a, b) for a, b in zip(text.splitlines(), out.splitlines(), strict=True) if a != b]
    assert len(changed) == 4 and all(not a.startswith("# ") for a, _ in changed), changed
    return f"{MARK}\n{out}"


def next_two_minutes() -> dict[str, datetime]:
    """The launch at the next minute, the check at the one after. Installation must happen
    before the first boundary (slurm takes the next matching minute after it), and both must
    fall on today's date (the check reads today's night): wait when too close to either."""
    while True:
        now = datetime.now()
        base = now.replace(second=0, microsecond=0)
        if now.second < 55 and (base + timedelta(minutes=2)).date() == now.date():
            return {LAUNCH: base + timedelta(minutes=1), CHECK: base + timedelta(minutes=2)}
        time.sleep(61 - now.second)


def queue(names: str) -> dict[str, dict[str, str]]:
    """The documented squeue line's rows: {name: {JOBID, STATE, START_TIME, REASON}}."""
    (cmd,) = [c.text for c in commands_of("scrontab") if c.text.startswith("squeue")]
    assert f"-n {names}" in cmd, cmd
    out = subprocess.run(cmd.split(), capture_output=True, text=True, timeout=30).stdout
    header, *rows = [line.split() for line in out.splitlines() if line.strip()]
    return {r[1]: dict(zip(header, r, strict=True)) for r in rows}


def cron_runs(job_id: str) -> list[dict[str, str]]:
    """Every finished run of a cron job (sacct -D: one row per run, the job id stays)."""
    fields = ["JobID", "State", "ExitCode", "Start", "End"]
    out = subprocess.run(["sacct", "-X", "-D", "-n", "-P", "-j", job_id, "-o", ",".join(fields)],
                         capture_output=True, text=True, timeout=30).stdout
    rows = [dict(zip(fields, line.split("|"), strict=True)) for line in out.splitlines()]
    return [r for r in rows if r["End"] not in ("Unknown", "") and r["State"] != "PENDING"]


def wait_for_run(job_id: str, what: str, timeout_s: float = 240,
                 settle_s: float = 30) -> dict[str, str]:
    """The first finished run of the cron job, once accounting has settled: a run's record
    reads COMPLETED/FAILED for a moment before slurmctld requeues the job (REQUEUED), longer
    on a loaded machine; after ``settle_s`` the record is taken as it stands."""
    deadline = time.monotonic() + timeout_s
    seen = None
    while time.monotonic() < deadline:
        runs = cron_runs(job_id)
        if runs:
            seen = seen or time.monotonic()
            if runs[0]["State"] == "REQUEUED" or time.monotonic() - seen > settle_s:
                return runs[0]
        time.sleep(1)
    job = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True)
    raise AssertionError(f"the {what} entry (job {job_id}) has not run after {timeout_s} s:\n"
                         f"{job.stdout}")


def night_job_ids(night: Path) -> list[str]:
    ids = []
    for manifest in night.glob("*/manifest.json"):
        ids += [r["job_id"] for r in json.loads(manifest.read_text())["stages"].values()
                if r.get("job_id")]
    return ids


def test_nightly_sweep_through_scrontab(slurm_cluster, demo_assets, tmp_path):
    if not shutil.which("scrontab"):
        pytest.fail("no scrontab command: run scripts/slurm/start_cluster.sh (it builds one with "
                    "scripts/slurm/build_scrontab.sh and enables ScronParameters)", pytrace=False)
    cmds = {c.text for c in commands_of("scrontab")}
    assert cmds == {c.text for c in header_commands(SHIPPED)[0]}, \
        "README.md and the scrontab file's runbook show different commands"
    install = next(c for c in cmds if c.endswith("scrontab configs/sweeps/nightly_tiny.scrontab"))
    listing, remove = "scrontab -l", "scrontab -r"
    sacct_cmd = next(c for c in cmds if c.startswith("sacct "))
    assert {listing, remove} <= cmds, cmds

    scratch = make_scratch(tmp_path, Path(demo_assets["teacher"]).parent)
    installed = sh(listing, scratch)
    if installed.returncode == 0:  # root's scrontab is not empty: only ever replace our own
        assert installed.stdout.startswith(MARK), (
            "root already has a scrontab; this test would replace it:\n" + installed.stdout)
        sh(remove, scratch)
    # the documented sweep test's short sweep: 2 members sharing one dataset
    sweeps = scratch / "configs" / "sweeps"
    sweeps.unlink()
    sweeps.mkdir()
    shipped = yaml.safe_load((REPO / "configs" / "sweeps" / "nightly_tiny.yaml").read_text())
    grid = {"data": {SWEEP_DATA: shipped["grid"]["data"][SWEEP_DATA]}, "lr": shipped["grid"]["lr"]}
    (sweeps / "nightly_tiny.yaml").write_text(
        yaml.safe_dump({**shipped, **SWEEP_SHORT, "grid": grid}, sort_keys=False))
    members = [f"{SWEEP_DATA}-{lr}" for lr in grid["lr"]]

    at = next_two_minutes()
    text = variant(SHIPPED.read_text(), scratch, at)
    (sweeps / SHIPPED.name).write_text(text)
    night = scratch / "runs" / "sweeps" / "nightly_tiny" / at[LAUNCH].strftime("%Y-%m-%d")
    ids: dict[str, str] = {}
    try:
        proc = sh(install, scratch)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        listed = sh(listing, scratch)
        assert listed.returncode == 0 and listed.stdout == text, listed.stdout
        jobs = queue(f"{LAUNCH},{CHECK}")
        assert set(jobs) == {LAUNCH, CHECK}, jobs
        for name, row in jobs.items():  # waiting for its time, which is this machine's clock
            assert row["STATE"] == "PENDING" and row["REASON"] == "BeginTime", row
            assert row["START_TIME"] == at[name].isoformat(), (name, row, at[name])
            ids[name] = row["JOBID"]

        launch = wait_for_run(ids[LAUNCH], "launch")
        log = (scratch / "runs" / "sweeps" / "scron-launch.log").read_text()
        # every run is recorded as REQUEUED (the job goes back in the queue) with its exit code
        assert launch["State"] == "REQUEUED" and launch["ExitCode"] == "0:0", (launch, log)
        queued = night_job_ids(night)
        assert len(queued) >= 2 * len(members), queued  # every member's own stages at least
        assert f"{len(queued)} job(s) submitted; runs in {night}" in log, log
        known = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i", "-j", ",".join(queued)],
                               capture_output=True, text=True, timeout=30).stdout.split()
        assert set(known) == set(queued), (known, queued)  # queued on this cluster
        subprocess.run(["scancel", *queued], capture_output=True, timeout=30)
        # requeued for tomorrow: PENDING again, the same job id
        assert queue(f"{LAUNCH},{CHECK}")[LAUNCH]["STATE"] == "PENDING"

        check = wait_for_run(ids[CHECK], "check")
        log = (scratch / "runs" / "sweeps" / "scron-check.log").read_text()
        # 3: members without results (their jobs were cancelled)
        assert check["State"] == "REQUEUED" and check["ExitCode"] == "3:0", (check, log)
        assert launch["End"] <= check["Start"], (launch, check)  # one after the other
        assert f"{len(members)} member(s) without results for {night.name}: " \
               f"{', '.join(members)}" in log, log
        assert all(f"- {m}: failed: " in log for m in members), log  # cancelled above
        md = (night / "trend" / "trend.md").read_text()
        assert f"(partial: {len(members)} member(s) without results)" in md, md
        proc = sh(sacct_cmd, scratch)  # every run, with its exit code
        rows = [line.split() for line in proc.stdout.splitlines()]
        assert [ids[LAUNCH], LAUNCH] in [r[:2] for r in rows], proc.stdout
        assert any(r[:2] == [ids[CHECK], CHECK] and r[-2:] == ["REQUEUED", "3:0"] for r in rows), \
            proc.stdout
    finally:
        removed = sh(remove, scratch)
        queued = night_job_ids(night) if night.is_dir() else []
        if queued:
            subprocess.run(["scancel", *queued], capture_output=True, timeout=30)
    assert removed.returncode == 0, removed.stderr
    assert sh(listing, scratch).stdout.startswith("no crontab for ")
    left = queue(f"{LAUNCH},{CHECK}")  # the entries' jobs are gone, never to run again
    assert not [r for r in left.values() if r["JOBID"] in ids.values()
                and r["STATE"] in ("PENDING", "RUNNING")], left
