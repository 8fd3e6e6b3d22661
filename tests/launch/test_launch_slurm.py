"""The launcher on the real SLURM test cluster, with simple stage functions (tests/launch/stub_stages):
afterok order, failure propagation, status, relaunch skipping, cancel."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from launch import config as cfg
from launch import layout, status
from launch import manifest as mf
from launch.plan import plan
from launch.schema import to_dict
from launch.submit import launch

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(300)]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def stub_run(slurm_cluster, make_experiment, tmp_path):
    def go(*cluster_over, run_dir=None, wait=True):
        cl = cfg.load_cluster("ci", [f"env.PYTHONPATH={REPO}", "env.KD_STUB_SLEEP=1", *cluster_over])
        exp, _ = layout.load_experiment(str(make_experiment()),
                                        ["train.tp=1", "train.global_batch_size=2"], cl)
        run_dir = run_dir or tmp_path / "run"
        graph = plan(exp, cl, run_dir)
        graph = dataclasses.replace(graph, jobs=tuple(
            dataclasses.replace(j, module="tests.launch.stub_stages") for j in graph.jobs))
        run_dir.mkdir(parents=True, exist_ok=True)
        manifest = mf.read(run_dir / "manifest.json") or mf.new(run_dir, to_dict(exp), to_dict(cl))
        out: list[str] = []
        code = launch(graph, cl, manifest, exp.name, wait=wait, echo=out.append)
        return code, run_dir, "\n".join(out)
    return go


def stub_records(run_dir: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (run_dir / "stub").glob("*.json")}


def test_graph_runs_in_dependency_order(stub_run):
    code, run_dir, out = stub_run()
    assert code == 0, out
    rec = stub_records(run_dir)
    assert set(rec) == {"prepare_data", "distill", "export_hf", "eval_student_before",
                        "eval_teacher", "eval_student_after", "report"}
    for parent, child in [("prepare_data", "distill"), ("distill", "export_hf"),
                          ("export_hf", "eval_student_after"), ("eval_student_after", "report"),
                          ("eval_teacher", "report"), ("eval_student_before", "report")]:
        assert rec[child]["start"] >= rec[parent]["end"], (parent, child)
    # evals of student-before and teacher do not wait for training
    assert rec["eval_teacher"]["start"] < rec["distill"]["end"]
    m = json.loads((run_dir / "manifest.json").read_text())
    ids = {s: r["job_id"] for s, r in m["stages"].items()}
    assert all(i.isdigit() for i in ids.values()) and len(set(ids.values())) == 7
    assert m["versions"]["submitit"] and m["config_hash"] and m["experiment"]["name"] == "unit"
    assert rec["distill"]["slurm_job"] == ids["distill"]
    text, status_code = status.render(run_dir)
    assert status_code == 0 and text.count("COMPLETED") == 7

    # relaunch: every stage is complete, nothing is submitted
    code, _, out = stub_run(run_dir=run_dir, wait=False)
    assert code == 0 and out.count("complete, skipped") == 7 and "submitted job" not in out


def test_failed_stage_cancels_dependents(stub_run):
    code, run_dir, out = stub_run("env.KD_STUB_FAIL=distill")
    assert code == 1, out
    rec = stub_records(run_dir)
    assert "distill" not in rec
    assert not {"export_hf", "eval_student_after", "report"} & set(rec)   # never ran
    assert {"prepare_data", "eval_teacher", "eval_student_before"} <= set(rec)
    _, rows = status.stage_states(run_dir)
    assert rows["distill"]["state"] == "FAILED"
    for s in ("export_hf", "eval_student_after", "report"):
        assert rows[s]["state"] == "CANCELLED", rows[s]
    res = subprocess.run([sys.executable, "launch/status.py", str(run_dir)], cwd=REPO,
                         capture_output=True, text=True)
    assert res.returncode == 1
    assert "stub stage distill failed on purpose" in res.stdout

    # relaunch after a fix: finished stages are skipped, the failed one and its dependents rerun
    code, _, out = stub_run(run_dir=run_dir)
    assert code == 0, out
    assert out.count("complete, skipped") == 3 and out.count("submitted job") == 4


def test_cancel_run(stub_run):
    code, run_dir, out = stub_run("env.KD_STUB_SLEEP=120", wait=False)
    assert code == 0
    res = subprocess.run([sys.executable, "launch/status.py", str(run_dir), "--cancel"],
                         cwd=REPO, capture_output=True, text=True, check=True)
    assert "cancelled 7 job(s)" in res.stdout
    assert status.wait_for_run(run_dir, echo=lambda *_: None, poll_s=2, timeout_s=120) == 1
    _, rows = status.stage_states(run_dir)
    assert all(r["state"] == "CANCELLED" for r in rows.values()), rows
