"""The stage registry (kd/stages.py) and the typed manifest (launch/manifest.py ``Manifest``)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from kd import specs, stages
from launch import config as cfg
from launch import cost, layout
from launch import manifest as mf
from launch.backends.base import log_path
from launch.executors import setup_lines
from launch.plan import plan
from launch.schema import ConfigError


def test_every_declared_stage_has_its_module_spec_and_time_field():
    for st in (*stages.PIPELINE, stages.SELECT, stages.CANDIDATE):
        assert importlib.util.find_spec(st.module) is not None, st
        assert isinstance(getattr(specs, st.spec), type), st
        assert st.time_field.startswith("cluster."), st
    assert specs.stage_spec("candidate_40") == ("kd.selection", specs.CandidateSpec)
    with pytest.raises(ValueError, match="unknown stage 'candidate_07'"):
        specs.stage_spec("candidate_07")  # a leading zero is no iteration


def test_plan_executors_and_backends_read_the_registry():
    cl = cfg.load_cluster("pyxis_nemo", ["python=python"])
    exp, _ = layout.load_experiment("guide_llama31_8b", [], cl)
    graph = plan(exp, cl, Path("/runs/registry"))
    assert graph.stages == stages.NAMES
    for job in graph.jobs:
        st = stages.stage(job.stage)
        assert (job.module, job.requeue) == (st.module, st.requeue)
        last = log_path(graph.run_dir, job, "9").name.split("_")[1]
        assert last == (str(job.nodes * job.tasks_per_node - 1) if st.log_rank == "last" else "0")
        # the GPU environment fragment goes only to the stage that declares it
        fragment = any("CUDA_DEVICE_MAX_CONNECTIONS" in ln for ln in setup_lines(cl, job))
        assert fragment == bool(st.env_fragment and job.gpus_per_node), job.stage
    assert [j.stage for j in graph.jobs if j.requeue] == ["distill"]
    assert cost.kind_of_stage("candidate_3") == "export_hf" == stages.stage("select").time
    assert stages.time_field("eval_teacher") == cost.FIELDS["eval"]


OLD = {"kdlaunch_manifest": 1, "run_dir": "/r", "created": "c", "updated": "u",
       "config_hash": "abc", "experiment": {"name": "x"}, "cluster": {"name": "ci"},
       "git_revision": None, "versions": {"torch": "2.0"}, "launches": [],
       "stages": {"distill": {"job_id": 7, "state": "FAILED", "error": "boom", "finished": "t"}}}


def test_an_old_manifest_loads_keeps_its_keys_and_records_a_resubmission(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(OLD))
    m = mf.Manifest.load(path)
    assert (m.config_hash, m.job_id("distill"), m.cost, m.extra) == \
        ("abc", "7", None, {"versions": {"torch": "2.0"}})
    entry = m.begin_launch("ci", ["--x"])
    m.record_job("distill", "8", "/r/log")
    entry["submitted"].append("distill")
    m.set_cost({"stages": {}})
    m.save()
    back = json.loads(path.read_text())
    assert back["versions"] == {"torch": "2.0"} and back["cost"] == {"stages": {}}
    rec = back["stages"]["distill"]
    assert (rec["job_id"], rec["state"], "error" in rec, "finished" in rec) == \
        ("8", "SUBMITTED", False, False)
    assert back["launches"][0]["submitted"] == ["distill"]
    assert mf.Manifest.load(path).to_dict() == back
    with pytest.raises(ConfigError, match="holds a run of a different config"):
        m.check_config({"name": "y"})


def test_the_strict_reader_refuses_a_bad_manifest_and_a_night_file(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({**OLD, "stages": []}))
    with pytest.raises(mf.ManifestError, match="'stages' is missing or not a dict"):
        mf.Manifest.load(path)
    path.write_text(json.dumps({"kdlaunch_sweep": 1, "launches": []}))
    with pytest.raises(mf.ManifestError, match="sweep night's manifest"):
        mf.Manifest.load(path)
    assert mf.Manifest.load(tmp_path / "none.json") is None
