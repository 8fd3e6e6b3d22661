"""`sweep.py check` in every state a morning can find a night in: nothing launched, nothing
finished, some finished, all finished, some failed. Run directories and manifests are
fabricated as the launch leaves them; SLURM's answer comes from a fake `sacct` on PATH (the
only thing faked: the scheduler at its subprocess boundary)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pandas as pd
import pytest

from kd.paths import RunPaths
from launch import manifest as mf
from launch.sweep import main
from tests.sweep.conftest import MEMBERS, write_night

DATE = "2026-01-05"
GOOD = {"mmlu": 0.40, "kd_synth": 0.60}
STAGES = ("prepare_data", "distill", "export_hf", "eval_student_after", "report")

FAKE_SACCT = """#!/usr/bin/env bash
# sacct -a -X -D --parsable2 --noheader -o FIELDS -j ID,ID,...: rows from $KD_FAKE_SACCT
while [ $# -gt 0 ]; do [ "$1" = -j ] && ids="$2"; shift; done
for id in ${ids//,/ }; do
  state=$(awk -v id="$id" '$1 == id {print $2}' "$KD_FAKE_SACCT")
  [ -n "$state" ] && echo "$id|$state|0:0|00:01:00|Unknown|Unknown|n1"
done
exit 0
"""


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """A fake sacct/squeue on PATH; returns a function that sets {job id: state}."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("sacct", FAKE_SACCT), ("squeue", "#!/bin/sh\nexit 0\n")):
        exe = bin_dir / name
        exe.write_text(text)
        exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    table = tmp_path / "sacct.txt"
    table.write_text("")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("KD_FAKE_SACCT", str(table))

    def set_states(states: dict[str, str]) -> None:
        table.write_text("".join(f"{i} {s}\n" for i, s in states.items()))

    return set_states


def unfinish(night: Path, member: str, states: dict[str, str], first_id: int,
             stages: tuple[str, ...] = STAGES) -> dict[str, str]:
    """Turn a fabricated finished member back into a submitted one whose stages are in
    ``states`` (stage -> SLURM state); returns {job id: state} for the fake sacct."""
    paths = RunPaths(night / member)
    paths.eval_result("student_after").unlink()
    for marker in paths.stages.glob("*.done"):
        marker.unlink()
    manifest = mf.read(paths.manifest)
    out = {}
    for i, stage in enumerate(stages):
        job = str(first_id + i)
        manifest["stages"][stage] = {"job_id": job, "state": "SUBMITTED", "log": ""}
        out[job] = states.get(stage, "PENDING")
    mf.write(paths.manifest, manifest)
    return out


def check(path: Path, capsys) -> tuple[int, str, Path]:
    capsys.readouterr()
    code = main(["check", str(path), "--date", DATE])
    trend = path.parent / "sweeps" / "unit_sweep" / DATE / "trend"
    return code, capsys.readouterr().out, trend


def test_nothing_launched_yet(sweep_yaml, capsys):
    path = sweep_yaml()
    code, out, trend = check(path, capsys)
    assert code == 3
    md = (trend / "trend.md").read_text()
    assert "(partial: 4 member(s) without results)" in md
    assert all(f"- {m}: not launched" in md for m in MEMBERS), md
    assert "nothing to plot" in md and not (trend / "trend.png").exists()


def test_nothing_finished_every_member_queued(sweep_yaml, fake_slurm, capsys):
    """A crash once seen: every member still queued, an empty history (ZeroDivisionError)."""
    path = sweep_yaml()
    write_night(path, DATE, dict.fromkeys(MEMBERS, GOOD))
    night = path.parent / "sweeps" / "unit_sweep" / DATE
    states = {}
    for i, m in enumerate(MEMBERS):
        states |= unfinish(night, m, {"prepare_data": "RUNNING"}, 100 + 10 * i)
    fake_slurm(states)
    code, out, trend = check(path, capsys)
    assert code == 3, out
    md = (trend / "trend.md").read_text()
    assert "- a-hi: waiting: prepare_data RUNNING, distill PENDING" in md, md
    assert "nothing to plot" in md and not (trend / "trend.png").exists()
    assert "4 member(s) without results for 2026-01-05" in out


def test_some_finished_some_running(sweep_yaml, fake_slurm, capsys):
    path = sweep_yaml()
    write_night(path, DATE, dict.fromkeys(MEMBERS, GOOD))
    night = path.parent / "sweeps" / "unit_sweep" / DATE
    states = unfinish(night, "b-hi", {"prepare_data": "COMPLETED", "distill": "RUNNING"}, 200)
    states |= unfinish(night, "b-lo", {"prepare_data": "COMPLETED", "distill": "PENDING"}, 300)
    fake_slurm(states)
    code, out, trend = check(path, capsys)
    assert code == 3, out
    hist = pd.read_csv(path.parent / "sweeps" / "unit_sweep" / "history.csv")
    assert set(hist["member"]) == {"a-hi", "a-lo"}
    md = (trend / "trend.md").read_text()
    assert "- b-hi: waiting: distill RUNNING" in md and "- b-lo: waiting: distill PENDING" in md
    assert (trend / "trend.png").stat().st_size > 0 and "![trend](trend.png)" in md
    # the morning after, everything has ended: the same check now exits 0
    write_night(path, DATE, dict.fromkeys(MEMBERS, GOOD))
    code, out, trend = check(path, capsys)
    assert code == 0, out
    assert "partial" not in (trend / "trend.md").read_text()


def test_all_finished(sweep_yaml, capsys):
    path = sweep_yaml()
    write_night(path, DATE, dict.fromkeys(MEMBERS, GOOD))
    code, out, trend = check(path, capsys)
    assert code == 0, out
    assert "No regression." in out and (trend / "trend.png").stat().st_size > 0


def test_some_failed(sweep_yaml, fake_slurm, capsys):
    path = sweep_yaml()
    write_night(path, DATE, dict.fromkeys(MEMBERS, GOOD))
    night = path.parent / "sweeps" / "unit_sweep" / DATE
    fake_slurm(unfinish(night, "a-lo", {"prepare_data": "COMPLETED", "distill": "FAILED",
                                        "export_hf": "CANCELLED", "eval_student_after":
                                        "CANCELLED", "report": "CANCELLED"}, 400))
    code, out, trend = check(path, capsys)
    assert code == 3, out
    md = (trend / "trend.md").read_text()
    assert "- a-lo: failed: distill FAILED, export_hf CANCELLED" in md, md


def test_report_of_an_earlier_night_leaves_later_nights_out(sweep_yaml, capsys):
    path = sweep_yaml()
    write_night(path, DATE, dict.fromkeys(MEMBERS, GOOD))
    assert main(["check", str(path), "--date", DATE]) == 0
    capsys.readouterr()
    assert main(["check", str(path), "--date", "2026-01-04"]) == 3  # never launched
    md = (path.parent / "sweeps/unit_sweep/2026-01-04/trend/trend.md").read_text()
    assert DATE not in md and "- a-hi: not launched" in md and "nothing to plot" in md


def test_a_selecting_member_waits_on_its_candidates(sweep_yaml, fake_slurm, capsys):
    """A member that selects its checkpoint (the sweep's select:) has no results until its
    candidate_<N> and select jobs and then its full eval have run: check says which it waits on."""
    path = sweep_yaml(select={"iterations": [10], "by": "kd_synth"})
    quick = {10: {"mmlu": 0.39, "kd_synth": 0.70}, 20: {"mmlu": 0.40, "kd_synth": 0.50}}
    write_night(path, DATE, dict.fromkeys(MEMBERS, GOOD), dict.fromkeys(MEMBERS, quick))
    night = path.parent / "sweeps" / "unit_sweep" / DATE
    stages = ("distill", "candidate_10", "candidate_20", "select", "eval_student_after", "report")
    fake_slurm(unfinish(night, "b-lo", {"distill": "COMPLETED", "candidate_10": "COMPLETED",
                                        "candidate_20": "RUNNING"}, 600, stages))
    code, out, trend = check(path, capsys)
    assert code == 3, out
    md = (trend / "trend.md").read_text()
    assert "- b-lo: waiting: candidate_20 RUNNING, select PENDING, eval_student_after PENDING" \
        in md, md
    hist = pd.read_csv(path.parent / "sweeps" / "unit_sweep" / "history.csv")
    assert set(hist["member"]) == {"a-hi", "a-lo", "b-hi"}
    assert set(hist["iteration"]) == {10}  # each selected 10 (70 > 50 on kd_synth)
