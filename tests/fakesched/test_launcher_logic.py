"""The launcher's logic against the fake scheduler (tests/fakesched/fake_slurm.py): dependency
order, adoption of queued jobs, failure propagation (afterok + kill-on-invalid-dep), cancel,
a midway sbatch refusal, requeue bookkeeping, sweep idempotence and --retry-failed.

The real cluster adds nothing to these (they are decisions of launch/, read back through
sacct/squeue); it keeps what only it can show: tests/e2e (one real pipeline),
tests/reliability (real requeue, preemption, faults) and the documented sweep (tests/docs).
Stages are tests/fakesched/stages.py (they record when they ran and can fail or requeue).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launch import config as cfg
from launch import layout, status
from launch import manifest as mf
from launch import sweep_plan as sp
from launch.plan import plan
from launch.schema import to_dict
from launch.submit import launch
from launch.sweep import run_sweep, wait_all
from tests.launch.conftest import hf_pair, make_experiment  # noqa: F401  (fixtures)
from tests.sweep.conftest import MEMBERS, sweep_yaml  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parents[2]
STAGES = {"prepare_data", "distill", "export_hf", "eval_student_before", "eval_teacher",
          "eval_student_after", "report"}
pytestmark = pytest.mark.timeout(45)


def _stub(graph):
    return dataclasses.replace(graph, jobs=tuple(
        dataclasses.replace(j, module="tests.fakesched.stages") for j in graph.jobs))


def _cluster(*over: str):
    return cfg.load_cluster("ci", [f"env.PYTHONPATH={REPO}", "env.KD_STUB_SLEEP=0.2", *over])


@pytest.fixture
def stub_run(fake_slurm, make_experiment, tmp_path):  # noqa: F811
    def go(*cluster_over, run_dir=None, wait=True):
        cl = _cluster(*cluster_over)
        exp, _ = layout.load_experiment(str(make_experiment()),
                                        ["train.tp=1", "train.global_batch_size=2"], cl)
        run_dir = run_dir or tmp_path / "run"
        graph = _stub(plan(exp, cl, run_dir))
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / "manifest.json"
        manifest = (mf.Manifest.load(path)
                    or mf.Manifest.create(path, run_dir, to_dict(exp), to_dict(cl)))
        out: list[str] = []
        code = launch(graph, cl, manifest, exp.name, wait=wait, echo=out.append)
        return code, run_dir, "\n".join(out)
    return go


def records(run_dir: Path) -> dict[str, list[dict]]:
    """stage -> one record per run of it (a requeued stage has several)."""
    out: dict[str, list[dict]] = {}
    for p in sorted((run_dir / "stub").glob("*.json")):
        out.setdefault(p.stem.split(".")[0], []).append(json.loads(p.read_text()))
    return out


def sacct_rows(job_id: str) -> list[list[str]]:
    text = subprocess.run(["sacct", "-X", "-D", "-n", "-P", "-o", "JobIDRaw,State,Start,End",
                           "-j", job_id], capture_output=True, text=True, check=True).stdout
    return [line.split("|") for line in text.splitlines()]


def test_order_status_relaunch_adoption_and_cancel(stub_run):
    code, run_dir, out = stub_run()
    assert code == 0, out
    rec = {s: r[-1] for s, r in records(run_dir).items()}
    assert set(rec) == STAGES
    for parent, child in [("prepare_data", "distill"), ("distill", "export_hf"),
                          ("export_hf", "eval_student_after"), ("eval_student_after", "report"),
                          ("eval_teacher", "report"), ("eval_student_before", "report")]:
        assert rec[child]["start"] >= rec[parent]["end"], (parent, child)
    m = json.loads((run_dir / "manifest.json").read_text())
    ids = {s: r["job_id"] for s, r in m["stages"].items()}
    assert len(set(ids.values())) == 7 and rec["distill"]["slurm_job"] == ids["distill"]
    text, status_code = status.render(run_dir)
    assert status_code == 0 and text.count("COMPLETED") == 7, text
    code, _, out = stub_run(run_dir=run_dir, wait=False)  # all done: nothing submitted
    assert code == 0 and out.count("complete, skipped") == 7 and "submitted job" not in out

    # a relaunch while the jobs are queued or running adopts them; cancel ends them all
    code, run2, out = stub_run("env.KD_STUB_SLEEP=60", run_dir=run_dir.parent / "run2", wait=False)
    assert code == 0 and out.count("submitted job") == 7, out
    code, _, again = stub_run("env.KD_STUB_SLEEP=60", run_dir=run2, wait=False)
    assert code == 0 and "submitted job" not in again, again
    assert again.count(", kept") == 7, again
    res = subprocess.run([sys.executable, "launch/status.py", str(run2), "--cancel"], cwd=REPO,
                         capture_output=True, text=True, check=True)
    assert "cancelled 7 job(s)" in res.stdout
    assert status.wait_for_run(run2, echo=lambda *_: None, poll_s=0.5, timeout_s=60) == 1
    _, rows = status.stage_states(run2)
    assert all(r["state"] == "CANCELLED" for r in rows.values()), rows


def test_failed_stage_cancels_dependents_and_relaunch_reruns_them(stub_run):
    code, run_dir, out = stub_run("env.KD_STUB_FAIL=distill")
    assert code == 1, out
    ran = records(run_dir)
    assert not {"distill", "export_hf", "eval_student_after", "report"} & set(ran)  # never ran
    assert {"prepare_data", "eval_teacher", "eval_student_before"} <= set(ran)
    _, rows = status.stage_states(run_dir)
    assert rows["distill"]["state"] == "FAILED"
    for s in ("export_hf", "eval_student_after", "report"):
        assert rows[s]["state"] == "CANCELLED", rows[s]
        job_id = json.loads((run_dir / "manifest.json").read_text())["stages"][s]["job_id"]
        assert sacct_rows(job_id)[-1][2] in ("None", "Unknown")  # cancelled before it started
    res = subprocess.run([sys.executable, "launch/status.py", str(run_dir)], cwd=REPO,
                         capture_output=True, text=True)
    assert res.returncode == 1 and "stub stage distill failed on purpose" in res.stdout

    code, _, out = stub_run(run_dir=run_dir)  # after the fix: only the failed part reruns
    assert code == 0, out
    assert out.count("complete, skipped") == 3 and out.count("submitted job") == 4


def test_sbatch_refusal_midway_cancels_what_this_launch_queued(stub_run, monkeypatch):
    monkeypatch.setenv("KD_FAKESCHED_REFUSE", "export_hf")
    code, run_dir, out = stub_run("env.KD_STUB_SLEEP=30", wait=False)
    assert code != 0 and "sbatch refused it" in out, out
    assert "nothing of this launch is left queued" in out
    m = json.loads((run_dir / "manifest.json").read_text())
    queued = [r["job_id"] for r in m["stages"].values() if r.get("job_id")]
    assert queued, m
    for job_id in queued:
        assert sacct_rows(job_id)[-1][1].startswith("CANCELLED"), job_id


def test_requeue_keeps_one_job_and_dependents_wait_for_the_last_allocation(stub_run):
    """A stage requeued once (as submitit does on USR2: `scontrol requeue`, then exit): the
    manifest keeps the job id, sacct -D shows REQUEUED then COMPLETED, status counts the
    restart, and export starts only after the final allocation ended."""
    code, run_dir, out = stub_run("env.KD_STUB_REQUEUE=distill")
    assert code == 0, out
    ran = records(run_dir)
    assert len(ran["distill"]) == 2 and ran["distill"][1]["restart"] == 1
    m = json.loads((run_dir / "manifest.json").read_text())
    job_id = m["stages"]["distill"]["job_id"]
    rows = sacct_rows(job_id)
    assert [r[1] for r in rows] == ["REQUEUED", "COMPLETED"], rows
    assert ran["export_hf"][0]["start"] >= ran["distill"][1]["end"]
    text, status_code = status.render(run_dir)
    line = next(ln for ln in text.splitlines() if ln.lstrip().startswith("distill"))
    assert status_code == 0 and "COMPLETED" in line and " 1 " in f" {line} ", text


DATE = "2026-02-01"


def stub_sweep(path, *cluster_over, retry=False):
    sweep = sp.load_sweep(str(path))
    cluster = _cluster(*cluster_over)
    plans = [dataclasses.replace(p, graph=_stub(p.graph))
             for p in sp.plan_sweep(sweep, cluster, DATE)]
    out: list[str] = []
    submitted = run_sweep(sweep, cluster, DATE, plans, retry=retry, echo=out.append)
    return plans, submitted, "\n".join(out)


def test_sweep_shares_is_idempotent_and_retries_only_when_asked(fake_slurm, sweep_yaml):  # noqa: F811
    path = sweep_yaml(select={"iterations": [10], "by": "kd_synth"})
    plans, submitted, out = stub_sweep(path, "env.KD_STUB_FAIL=eval_teacher")
    assert wait_all(plans, echo=lambda *_: None) == 1
    runs = {p.name: records(p.run_dir) for p in plans}
    who = {s: sorted(m for m, r in runs.items() if s in r)
           for s in ("prepare_data", "eval_student_before", "distill")}
    assert who == {"prepare_data": ["a-hi", "b-hi"], "eval_student_before": ["a-hi"],
                   "distill": sorted(MEMBERS)}
    assert all("report" not in r for r in runs.values())  # every report waited on the teacher
    assert runs["b-lo"]["distill"][0]["start"] >= runs["b-hi"]["prepare_data"][0]["end"]
    # per member distill, candidate_10, candidate_20, select, eval_student_after, report; two
    # data preps, one teacher eval, one student-before eval
    assert sum(map(len, submitted.values())) == 4 * 6 + 2 + 2
    assert all("candidate_10" in records(p.run_dir) for p in plans)

    _, again, out = stub_sweep(path)  # the same night again (cron retry): nothing submitted
    assert again == {} and out.count("failed, nothing submitted; pass --retry-failed") == 4, out
    _, retried, out = stub_sweep(path, retry=True)
    assert sorted(s for v in retried.values() for s in v) == ["eval_teacher"] + ["report"] * 4
    assert wait_all(plans, echo=lambda *_: None) == 0
    _, again, out = stub_sweep(path)
    assert again == {} and "0 job(s) submitted" in out, out


def test_fake_formats_match_what_submitit_parses(fake_slurm, tmp_path):
    """submitit itself against the fake: submit, state through sacct, result pickle."""
    import submitit

    ex = submitit.AutoExecutor(folder=tmp_path / "sub" / "%j", cluster="slurm")
    ex.update_parameters(slurm_partition="debug", timeout_min=5)
    job = ex.submit(sum, [1, 2, 3])
    assert job.result() == 6
    bad = ex.submit(int, "x")
    with pytest.raises(submitit.core.utils.FailedJobError, match="invalid literal"):
        bad.result()
    # the sacct command submitit's watcher issues, read by submitit's own parser
    from submitit.slurm.slurm import SlurmInfoWatcher

    # the result pickle lands before the fake job's process records its final state (as with
    # real SLURM): read until neither job is RUNNING, bounded
    for _ in range(60):
        text = subprocess.run(["sacct", "-o", "JobID,State,NodeList", "--parsable2", "-j",
                               job.job_id, "-j", bad.job_id],
                              capture_output=True, text=True, check=True).stdout
        info = SlurmInfoWatcher().read_info(text)
        if "RUNNING" not in (info[job.job_id]["State"], info[bad.job_id]["State"]):
            break
        time.sleep(0.5)
    assert info[job.job_id]["State"] == "COMPLETED" and info[bad.job_id]["State"] == "FAILED"


def test_a_sweep_gets_the_live_cluster_check(fake_slurm, sweep_yaml, capsys):  # noqa: F811
    """The sweep launches through the same pre-flight as a single launch, the live cluster
    included: a distill that asks more memory than any node of the partition has is refused,
    naming every member and the field, and nothing is queued (dry run and real launch)."""
    from launch import sweep as sweep_cli

    path = sweep_yaml(cluster_overrides=["mem_gb=64"])  # the fake's nodes have 4000 MB
    argv = [str(path), "--date", DATE]
    for extra in (["--dry-run"], []):
        assert sweep_cli.main([*argv, *extra]) == 2
        err = capsys.readouterr().err
        for member in ("a-hi", "a-lo", "b-hi", "b-lo"):
            assert f"member {member}: stage distill: cluster.mem_gb=64" in err, err
        assert "partition debug" in err, err
    assert not list((fake_slurm / "jobs").glob("*.json")), "a refused sweep queued a job"
