"""The job graph of a run with checkpoint selection (pure: no file, no job)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kd.select import CandidateSpec, SelectSpec
from launch import config as cfg
from launch import layout
from launch.plan import plan
from launch.select_plan import candidate_iterations, quick_tasks, with_selection

RUN = Path("/runs/sel")


def demo_graph(*overrides: str):
    cl = cfg.load_cluster("ci", ["python=python"])
    exp, _ = layout.load_experiment("tiny_demo", list(overrides), cl)
    return exp, plan(exp, cl, RUN)


def test_candidate_iterations():
    assert candidate_iterations("every_save", 150, 50) == [50, 100, 150]
    assert candidate_iterations("every_save", 160, 50) == [50, 100, 150, 160]
    assert candidate_iterations((50,), 150, 50) == [50, 150]  # the final one always counts
    assert candidate_iterations("every_save", 150, 50, final=100) == [50, 100]
    with pytest.raises(ValueError, match=r"select.iterations=\[40\]: 40 is not saved .*"
                                         r"choose from \[50, 100, 150\]"):
        candidate_iterations((40,), 150, 50)


def test_quick_tasks():
    assert quick_tasks("mmlu", ("mmlu", "kd_synth")) == ("mmlu",)
    assert quick_tasks("kd_synth", ("mmlu", "kd_synth")) == ("mmlu", "kd_synth")
    with pytest.raises(ValueError, match="select.by='gsm8k': not among eval.tasks"):
        quick_tasks("gsm8k", ("mmlu",))


def test_graph_jobs_and_afterok_edges():
    exp, base = demo_graph()
    g = with_selection(base, [50, 100, 150], by="kd_synth", limit=4, keep_candidates=True,
                       noise_z=2.0, tensorboard=str(RUN / "distill" / "tensorboard"))
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
    assert c.module == "kd.select" and isinstance(c.spec, CandidateSpec)
    assert c.spec.export.iteration == 100
    assert c.spec.export.out_dir == "/runs/sel/select/iter_0000100/export/hf"
    assert c.spec.eval.model == c.spec.export.out_dir
    assert c.spec.eval.out_file == "/runs/sel/select/iter_0000100/eval/student_after.json"
    assert (c.spec.eval.limit, c.spec.eval.tasks) == (4, ("mmlu", "kd_synth"))
    assert c.spec.done_marker == "/runs/sel/stages/candidate_100.done"
    # the full eval of the chosen export keeps the experiment's settings
    after = g.job("eval_student_after").spec
    assert after.model == "/runs/sel/export/hf" and after.limit == base.job(
        "eval_student_after").spec.limit and after.tasks == ("mmlu", "kd_synth")

    s = g.job("select")
    assert isinstance(s.spec, SelectSpec) and s.spec.out_dir == "/runs/sel/export/hf"
    assert s.spec.candidates[0] == (50, "/runs/sel/select/iter_0000050")
    assert (s.spec.by, s.spec.keep_candidates, s.cpus_per_task) == ("kd_synth", True, 1)


def test_val_loss_selection_needs_no_quick_eval():
    _, base = demo_graph()
    g = with_selection(base, [50, 150], by="val_loss", limit=None, keep_candidates=False,
                       noise_z=2.0, tensorboard="/runs/sel/distill/tensorboard")
    assert all(g.job(f"candidate_{it}").spec.eval is None for it in (50, 150))
    assert g.job("candidate_50").gpus_per_node == base.job("export_hf").gpus_per_node


def test_task_selection_needs_the_eval_stage():
    _, base = demo_graph("eval.enabled=false")
    with pytest.raises(ValueError, match="needs the eval stage"):
        with_selection(base, [50, 150], by="mmlu", limit=2, keep_candidates=True, noise_z=2.0,
                       tensorboard=None)
