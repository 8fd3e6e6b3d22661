"""Provenance end to end on one real stage: ``StageJob`` runs the report stage of a run whose
other stages left done markers (with provenance, written before it existed, or in another run
whose teacher eval this one reused), adds what ran to the report's own marker, and the report
shows the "What ran" section with the differing versions flagged."""

from __future__ import annotations

import importlib.metadata
import json
import platform
import re
import shutil

import pytest

from kd import provenance as prov
from kd.job import StageJob
from kd.paths import RunPaths
from kd.specs import ReportSpec
from tests.report.guide_tables import SUCCESS, write_case

GPU_RECORD = {
    "schema": 1, "stage": "distill", "python": platform.python_version(), "wall_s": 3725.0,
    "packages": {"torch": "2.9.0+cu128", "megatron-core": "0.16.1", "kdlaunch": "0.1.0"},
    "compat": {"active": ["bridge-save-hook"], "skipped": {}},
    "cuda": {"torch_cuda": "12.8", "available": True, "driver": "570.86.15",
             "gpus": ["NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3"], "reason": None},
    "host": "n1", "hosts": ["n1", "n2"], "rank": 0, "world_size": 2,
    "job": {"scheduler": "slurm", "job_id": "4242", "step_id": "0", "restart_count": 1},
}
SLURM_ENV = {"SLURM_JOB_ID": "777", "SLURM_JOB_NODELIST": "n3", "SLURMD_NODENAME": "n3",
             "SLURM_STEP_ID": "0"}


def marker(path, stage, record=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"stage": stage, **({"provenance": record} if record else {})}
    path.write_text(json.dumps(body))


@pytest.fixture
def run(tmp_path, monkeypatch):
    """A finished run up to its report: results files and the other stages' markers."""
    for name in ("RANK", "SLURM_PROCID", "SUBMITIT_LOCAL_GLOBALID", "SLURM_JOB_NODELIST",
                 "SLURM_NODELIST", "SLURM_RESTART_COUNT", "SUBMITIT_LOCAL_JOB_ID"):
        monkeypatch.delenv(name, raising=False)
    for k, v in SLURM_ENV.items():
        monkeypatch.setenv(k, v)
    files = write_case(tmp_path / "case", SUCCESS)
    paths, other = RunPaths(tmp_path / "run"), RunPaths(tmp_path / "other")
    for rp, role, src in ((paths, "student_before", "before"), (paths, "student_after", "after"),
                          (other, "teacher", "teacher")):
        rp.eval.mkdir(parents=True, exist_ok=True)
        shutil.copy(files[src], rp.eval_result(role))
    marker(paths.stage_done("distill"), "distill", GPU_RECORD)
    marker(paths.stage_done("export_hf"), "export_hf")  # written before provenance existed
    for stage in ("eval_student_before", "eval_student_after"):
        marker(paths.stage_done(stage), stage, {**GPU_RECORD, "stage": stage, "wall_s": 42.0})
    marker(other.stage_done("eval_teacher"), "eval_teacher",  # a sweep's shared teacher eval
           {**GPU_RECORD, "stage": "eval_teacher", "packages": {"torch": "2.8.0"}})
    paths.manifest.write_text(json.dumps({"kdlaunch_manifest": 1, "login_node": {
        "python": platform.python_version(), "versions": {"torch": "2.13.0", "megatron-core": "0.16.1"}}}))
    spec = ReportSpec(before=str(paths.eval_result("student_before")),
                      after=str(paths.eval_result("student_after")),
                      teacher=str(other.eval_result("teacher")), out_dir=str(paths.report),
                      done_marker=str(paths.stage_done("report")))
    return paths, spec


def test_report_stage_records_and_shows_what_ran(run):
    paths, spec = run
    StageJob("report", "kd.report", spec)()
    done = json.loads(paths.stage_done("report").read_text())
    assert done["report"] == str(paths.report / "report.md")  # the stage's own keys stay
    rec = done["provenance"]
    assert rec["stage"] == "report" and rec["rank"] == 0 and rec["wall_s"] >= 0
    assert rec["packages"]["pandas"] == importlib.metadata.version("pandas")
    assert rec["packages"]["kdlaunch"] == importlib.metadata.version("kdlaunch")
    assert rec["job"]["job_id"] == "777" and rec["job"]["step_id"] == "0"
    assert rec["hosts"] == ["n3"] and rec["host"] == "n3"
    assert rec["cuda"]["gpus"] is None and rec["cuda"]["reason"]  # no GPU here, and why

    text = (paths.report / "report.md").read_text()
    section = text[text.index("## What ran"):]
    # whether this process imported torch too depends on the tests before: the report's own
    # row takes part in the comparison; torch differs either way, Python nowhere
    warning = section.splitlines()[2]
    assert warning.startswith("**Warning: torch differ") and "between stages" in warning
    assert "python" not in warning
    assert ("| distill | n1, n2 | slurm 4242 step 0, restart 1 | 62.1 min | 2 x NVIDIA H100 "
            "80GB HBM3, driver 570.86.15, CUDA 12.8 | 1 active |") in section
    assert ("| export_hf | no provenance in the done marker (written before it was "
            "recorded) |") in section
    assert f"| eval_teacher (reused from `{paths.root.parent / 'other'}`) |" in section
    assert "| report (this job) | n3 | slurm 777 step 0 | - |" in section
    assert ("- **torch 2.9.0+cu128 (distill, eval_student_before, eval_student_after); 2.8.0 "
            "(eval_teacher)") in section and "2.13.0 (login node)**" in section
    # the same everywhere: not flagged, counted; the report's own row has megatron-core only
    # where an earlier test in this worker process imported it (3 or 4 of the 5 stages)
    assert re.search(r"^- megatron-core 0\.16\.1 \([34] of 5 stages, login node\)$", section,
                     re.M), section


def test_only_rank_0_and_only_a_marker_written_now_get_provenance(run, monkeypatch):
    paths, spec = run
    monkeypatch.setenv("RANK", "1")  # another rank of a multi-task job: rank 0 writes it
    StageJob("report", "kd.report", spec)()
    assert "provenance" not in json.loads(paths.stage_done("report").read_text())
    monkeypatch.setenv("RANK", "0")
    job = StageJob("export_hf", "kd.export", spec)
    distill = paths.stage_done("distill")  # a marker found already there is not this run's
    before = distill.read_text()
    job._record_provenance(str(distill), prov.marker_stat(distill), 0.0)
    assert distill.read_text() == before
    job._record_provenance(str(paths.stage_done("report")), None, 0.0)  # written during it
    assert prov.read_marker(paths.stage_done("report"))[0]["stage"] == "export_hf"


def test_no_section_outside_a_run(tmp_path):
    files = write_case(tmp_path / "case", SUCCESS)
    from kd import report

    text = report.run(ReportSpec(before=str(files["before"]), after=str(files["after"]),
                                 teacher=str(files["teacher"]), out_dir=str(tmp_path / "out")))
    assert "What ran" not in text
