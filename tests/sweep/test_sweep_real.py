"""A 2x2 nightly sweep of real stages (tiny demo models) on the SLURM test cluster, through
the CLI a cron job would call: every member completes with a report, shared stages ran once,
`check` fills the history, a rerun for the same night submits nothing."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import asset_overrides

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slurm, pytest.mark.e2e, pytest.mark.timeout(900)]
DATE = "2026-03-01"


def sweep_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "launch/sweep.py", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=850)


def test_real_two_by_two_sweep(slurm_cluster, demo_assets, tmp_path):
    small = f"{{name: small, jsonl: {demo_assets['corpus']}, max_documents: 1000}}"
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({
        "name": "real_sweep", "base": "tiny_demo", "cluster": "ci", "root": str(tmp_path / "sw"),
        "overrides": [*asset_overrides(demo_assets), "train.train_iters=10",
                      "train.lr_warmup_iters=2", "eval.limit=100"],
        "cluster_overrides": ["nodes=1"],
        "grid": {"data": {"full": [], "small": [f"data.sources=[{small}]"]},
                 "lr": {"hi": ["train.lr=3e-3"], "lo": ["train.lr=1e-3", "train.min_lr=1e-4"]}},
        "alarm": {"z": 2.0, "tasks": ["mmlu", "kd_synth"]},
    }))
    res = sweep_cli(str(sweep), "--date", DATE, "--wait")
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    night = tmp_path / "sw" / "real_sweep" / DATE
    members = ("full-hi", "full-lo", "small-hi", "small-lo")
    owners: dict[str, list[str]] = {}
    for m in members:
        assert (night / m / "report" / "report.md").is_file(), m
        stages = json.loads((night / m / "manifest.json").read_text())["stages"]
        for stage, rec in stages.items():
            if rec.get("job_id"):
                owners.setdefault(stage, []).append(m)
    # one data prep per dataset, one teacher eval and one student-before eval for all four
    assert len(owners["prepare_data"]) == 2 and len(owners["eval_teacher"]) == 1
    assert len(owners["eval_student_before"]) == 1 and len(owners["distill"]) == 4
    rows = list(csv.DictReader((tmp_path / "sw" / "real_sweep" / "history.csv").open()))
    assert {r["member"] for r in rows} == set(members) and {r["date"] for r in rows} == {DATE}
    assert (night / "trend" / "trend.md").is_file()
    # cron fires again for the same night: nothing is submitted
    again = sweep_cli(str(sweep), "--date", DATE)
    assert again.returncode == 0 and "0 job(s) submitted" in again.stdout, again.stdout
