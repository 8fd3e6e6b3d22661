"""``status --provenance``: what each finished stage ran, from the done markers and the
manifest alone; old markers (no provenance, or not JSON) and old manifests (top-level
``versions``) are read too. The default table stays as it was, plus one line when versions
differ."""

from __future__ import annotations

import json

from kd.paths import RunPaths
from launch import status

RAN = {"schema": 1, "python": "3.12.3", "wall_s": 12.5,
       "packages": {"torch": "2.9.0", "megatron-core": "0.16.1"},
       "compat": {"active": ["bridge-save-hook", "mcore-index-torn-writes",
                             *(f"cpu-workaround-number-{i}" for i in range(8))], "skipped": {}},
       "cuda": {"torch_cuda": "12.8", "available": True, "driver": "570.86.15",
                "gpus": ["NVIDIA H100 80GB HBM3"] * 4, "reason": None},
       "host": "n1", "hosts": ["n1", "n2"], "rank": 0, "world_size": 8,
       "job": {"scheduler": "slurm", "job_id": "11", "step_id": "0", "restart_count": 0}}


def make_run(tmp_path, manifest_versions: dict, distill_torch: str = "2.9.0"):
    paths = RunPaths(tmp_path / "run")
    paths.stages.mkdir(parents=True)
    stages = {s: {"job_id": str(10 + i), "deps": [], "state": "SUBMITTED", "log": ""}
              for i, s in enumerate(("prepare_data", "distill", "export_hf", "eval_teacher",
                                     "report"))}
    paths.manifest.write_text(json.dumps(
        {"kdlaunch_manifest": 1, "config_hash": "abc", "launches": [], "experiment": {},
         "cluster": {"executor": "local", "name": "test"}, "stages": stages,
         **manifest_versions}))
    cpu = {**RAN, "packages": {"datasets": "5.0.1", "torch": "2.9.0"}, "hosts": ["n3"], "compat": None,
           "cuda": {"gpus": None, "reason": "torch not imported by this stage"},
           "job": {"scheduler": "slurm", "job_id": "10", "step_id": "0"}}
    paths.stage_done("prepare_data").write_text(json.dumps({"blend": "b", "provenance": cpu}))
    paths.stage_done("distill").write_text(json.dumps(
        {"stage": "distill", "provenance": {**RAN, "packages": {**RAN["packages"],
                                                                "torch": distill_torch}}}))
    paths.stage_done("export_hf").write_text(json.dumps({"stage": "export_hf"}))  # before
    paths.stage_done("eval_teacher").write_text("done\n")  # not JSON (a hand-made marker)
    return paths.root


def test_provenance_view(tmp_path, capsys):
    run = make_run(tmp_path, {"login_node": {"python": "3.12.3", "versions": {
        "torch": "2.9.0", "megatron-core": "0.16.0", "pandas": "3.1.1"}}})
    assert status.main([str(run), "--provenance"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {ln.split()[0]: ln for ln in lines[2:7]}
    assert rows["distill"].split()[1:8] == ["n1,", "n2", "slurm", "11", "step", "0", "12.5"]
    assert "10 active" in rows["distill"]
    assert rows["distill"].endswith("4 x NVIDIA H100 80GB HBM3, driver 570.86.15, CUDA 12.8")
    assert rows["prepare_data"].endswith("none (torch not imported by this stage)")
    assert "no provenance in the done marker (written before it was recorded)" in \
        rows["export_hf"]
    assert "done marker is not JSON" in rows["eval_teacher"]
    assert rows["report"] == "report               - no done marker"
    text = "\n".join(lines)
    assert "! megatron-core    0.16.1 (distill); 0.16.0 (login node)" in text
    assert "  torch            2.9.0 (all 2 stages, login node)" in text
    assert "  python           3.12.3 (all 2 stages, login node)" in text
    assert "  compat in distill: bridge-save-hook, mcore-index-torn-writes, cpu-" in text
    assert max(map(len, lines[7:])) <= 100 and lines[-1].startswith("      cpu-")  # wrapped


def test_default_table_adds_one_line_only_when_versions_differ(tmp_path, capsys):
    run = make_run(tmp_path / "a", {"versions": {"torch": "2.9.0"}})  # an older manifest
    assert status.main([str(run)]) == 0
    out = capsys.readouterr().out
    assert "what ran" not in out and out.count("COMPLETED") == 4
    run = make_run(tmp_path / "b", {"versions": {"torch": "2.9.0", "megatron-core": "0.15"}},
                   distill_torch="2.8.0")
    text, code = status.render(run)
    assert code == 0
    assert text.splitlines()[-1] == ("! what ran: torch differs between stages; megatron-core "
                                     "differs from the login node (--provenance shows each "
                                     "stage's)")
