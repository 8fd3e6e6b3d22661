"""The job graph of a run with checkpoint selection (pure: no file, no job)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kd.sections import ConfigError
from kd.specs import CandidateSpec, SelectSpec
from launch import config as cfg
from launch import layout
from launch.plan import plan
from launch.select_plan import quick_tasks

RUN = Path("/runs/sel")


def demo_graph(*overrides: str):
    cl = cfg.load_cluster("ci", ["python=python"])
    exp, _ = layout.load_experiment("tiny_demo", list(overrides), cl)
    return exp, plan(exp, cl, RUN)


def test_candidate_iterations():
    def cands(*over):
        exp, _ = demo_graph(*over)
        return exp.select.candidates(exp.train)

    assert cands("select.every_save=true") == [50, 100, 150]
    assert cands("select.every_save=true", "train.train_iters=160") == [50, 100, 150, 160]
    assert cands("select.iterations=[50]") == [50, 150]  # the last one always counts
    with pytest.raises(ConfigError, match=r"select.iterations=\[40\]: 40 is not a save point "
                                          r".*saved at 50, 100, 150"):
        demo_graph("select.iterations=[40]")


def test_quick_tasks():
    assert quick_tasks("mmlu", ("mmlu", "kd_synth")) == ("mmlu",)
    assert quick_tasks("kd_synth", ("mmlu", "kd_synth")) == ("mmlu", "kd_synth")
    with pytest.raises(ValueError, match="select.by='gsm8k': not among eval.tasks"):
        quick_tasks("gsm8k", ("mmlu",))


def test_graph_jobs_and_afterok_edges():
    _, base = demo_graph()
    exp, g = demo_graph("select.every_save=true", "select.by=kd_synth", "select.limit=4")
    assert g.stages == ("prepare_data", "distill", "candidate_50", "candidate_100",
                        "candidate_150", "select", "eval_student_before", "eval_teacher",
                        "eval_student_after", "report")
    deps = {j.stage: j.deps for j in g.jobs}
    assert deps["candidate_50"] == deps["candidate_150"] == ("distill",)
    assert deps["select"] == ("candidate_50", "candidate_100", "candidate_150")
    assert deps["eval_student_after"] == ("select",)
    assert set(deps["report"]) == {"eval_student_before", "eval_teacher", "eval_student_after"}
    assert g.dependents("candidate_100") == ("select", "eval_student_after", "report")

    c = g.job("candidate_100")
    assert c.module == "kd.selection" and isinstance(c.spec, CandidateSpec)
    assert c.spec.export.export.iteration == 100
    assert c.spec.export.out_dir == "/runs/sel/select/iter_0000100/export/hf"
    assert c.spec.eval.model == c.spec.export.out_dir
    assert c.spec.eval.out_file == "/runs/sel/select/iter_0000100/eval/student_after.json"
    assert (c.spec.eval.eval.limit, c.spec.eval.eval.tasks) == (4, ("mmlu", "kd_synth"))
    assert c.spec.done_marker == "/runs/sel/stages/candidate_100.done"
    # the full eval of the chosen export keeps the experiment's settings
    after = g.job("eval_student_after").spec
    assert after == base.job("eval_student_after").spec and after.model == "/runs/sel/export/hf"

    s = g.job("select")
    assert isinstance(s.spec, SelectSpec) and s.spec.out_dir == "/runs/sel/export/hf"
    assert s.spec.candidates[0] == (50, "/runs/sel/select/iter_0000050")
    assert s.spec.select == exp.select and s.cpus_per_task == 1
    assert s.spec.tensorboard == "/runs/sel/distill/tensorboard"
    assert g.job("report").spec.selection == "/runs/sel/select/selection.json"
    assert base.job("report").spec.selection is None


def test_val_loss_selection_needs_no_quick_eval():
    _, base = demo_graph()
    _, g = demo_graph("select.iterations=[50]", "select.by=val_loss")
    assert all(g.job(f"candidate_{it}").spec.eval is None for it in (50, 150))
    assert g.job("candidate_50").gpus_per_node == base.job("export_hf").gpus_per_node
    with pytest.raises(ConfigError, match=r"select.by=val_loss: .*not at \[50\]"):
        demo_graph("select.every_save=true", "select.by=val_loss", "train.eval_interval=20")


@pytest.mark.parametrize("overrides, message", [
    (("eval.enabled=false", "select.by=mmlu"), "needs the eval stage"),
    (("select.by=gsm8k",), "not an MMLU group and not in eval.tasks"),
    (("export.iteration=50",), "export.iteration unset"),
])
def test_refused_combinations(overrides, message):
    with pytest.raises(ConfigError, match=message):
        demo_graph("select.every_save=true", *overrides)


def test_standalone_stage_lookup():
    from kd.specs import stage_spec

    assert stage_spec("candidate_50") == ("kd.selection", CandidateSpec)
    assert stage_spec("select") == ("kd.selection", SelectSpec)
    with pytest.raises(ValueError, match="unknown stage 'candidate_x'"):
        stage_spec("candidate_x")


def test_specs_round_trip_through_json():
    """The standalone sbatch form (--emit-sbatch) writes each spec as JSON; kd.job reads it."""
    import json
    from dataclasses import asdict

    from kd.specs import spec_from_dict, stage_spec

    _, g = demo_graph("select.every_save=true", "select.by=kd_synth")
    for stage in ("candidate_50", "select", "report"):
        spec = g.job(stage).spec
        _, cls = stage_spec(stage)
        assert spec_from_dict(cls, json.loads(json.dumps(asdict(spec)))) == spec
    _, g = demo_graph("select.every_save=true", "select.by=val_loss")
    spec = g.job("candidate_100").spec
    assert spec_from_dict(CandidateSpec, json.loads(json.dumps(asdict(spec)))) == spec
