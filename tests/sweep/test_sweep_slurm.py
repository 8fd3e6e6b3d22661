"""A 2x2 sweep on the real SLURM test cluster with stub stages (tests/launch/stub_stages.py):
every member completes, shared stages run once (dependents wait on the owner's job), checkpoint
candidates wait on their member's distill job, a rerun for the same night submits nothing, and
a failure is resubmitted only with --retry-failed."""

from __future__ import annotations

import dataclasses
import json

import pytest

from launch import config as cfg
from launch import sweep_plan as sp
from launch.sweep import run_sweep, wait_all
from tests.sweep.conftest import MEMBERS, REPO

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(300)]
DATE = "2026-02-01"


def _stub(graph):
    return dataclasses.replace(graph, jobs=tuple(
        dataclasses.replace(j, module="tests.launch.stub_stages") for j in graph.jobs))


def stub_sweep(path, *cluster_over, retry=False):
    sweep = sp.load_sweep(str(path))
    cluster = cfg.load_cluster("ci", [f"env.PYTHONPATH={REPO}", "env.KD_STUB_SLEEP=0.2",
                                      *cluster_over])
    plans = [dataclasses.replace(p, graph=_stub(p.graph),
                                 candidates=tuple(_stub(c) for c in p.candidates))
             for p in sp.plan_sweep(sweep, cluster, DATE)]
    out: list[str] = []
    submitted = run_sweep(sweep, cluster, DATE, plans, retry=retry, echo=out.append)
    return plans, submitted, "\n".join(out)


def ran(run_dir) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (run_dir / "stub").glob("*.json")}


def test_sweep_runs_shares_and_is_idempotent(slurm_cluster, sweep_yaml):
    path = sweep_yaml(select={"iterations": [10, 20], "task": "kd_synth"})
    plans, submitted, out = stub_sweep(path)
    assert wait_all(plans, echo=lambda *_: None) == 0, out
    by = {p.name: p for p in plans}
    records = {p.name: ran(p.run_dir) for p in plans}
    # shared stages ran once: one data prep per dataset, one teacher / student-before eval
    who = {s: sorted(m for m, r in records.items() if s in r)
           for s in ("prepare_data", "eval_teacher", "eval_student_before", "distill", "report")}
    assert who == {"prepare_data": ["a-hi", "b-hi"], "eval_teacher": ["a-hi"],
                   "eval_student_before": ["a-hi"], "distill": sorted(MEMBERS),
                   "report": sorted(MEMBERS)}
    # a member that shares waits on the owner's job
    assert records["b-lo"]["distill"]["start"] >= records["b-hi"]["prepare_data"]["end"]
    assert records["a-lo"]["report"]["start"] >= records["a-hi"]["eval_teacher"]["end"]
    for p in plans:  # candidates (iteration 10) wait on the member's distill
        cand = ran(p.candidates[0].run_dir)
        assert set(cand) == {"export_hf", "eval_student_after"}
        assert cand["export_hf"]["start"] >= records[p.name]["distill"]["end"]
    assert sum(map(len, submitted.values())) == 4 * 4 + 2 + 2 + 4 * 2
    night = json.loads((by["a-hi"].run_dir.parent / "sweep.json").read_text())
    assert set(night["members"]) == set(MEMBERS)

    # the same night again (a cron retry): nothing is submitted
    _, again, out = stub_sweep(path)
    assert again == {} and "0 job(s) submitted" in out, out
    assert out.count(": done, nothing submitted") == 8


def test_failure_is_resubmitted_only_when_asked(slurm_cluster, sweep_yaml):
    path = sweep_yaml()
    plans, _, out = stub_sweep(path, "env.KD_STUB_FAIL=eval_teacher")
    assert wait_all(plans, echo=lambda *_: None) == 1
    assert all("report" not in ran(p.run_dir) for p in plans)  # every report waited on it
    _, again, out = stub_sweep(path)
    assert again == {} and out.count("failed, nothing submitted; pass --retry-failed") == 4, out
    _, retried, out = stub_sweep(path, retry=True)
    # the teacher eval and the four reports; finished stages are skipped
    assert sorted(s for v in retried.values() for s in v) == ["eval_teacher"] + ["report"] * 4
    assert wait_all(plans, echo=lambda *_: None) == 0
