"""The options of Model-Optimizer's distill.py on the login node: YAML -> Experiment -> the
stage specs the plan builds (no torch)."""

from __future__ import annotations

from launch import config as cfg
from launch import layout
from launch.plan import plan


def test_options_reach_the_stage_specs(make_experiment, tmp_path):
    ckpt = tmp_path / "pruned" / "checkpoints"
    cl = cfg.load_cluster("ci")
    exp, _ = layout.load_experiment(str(make_experiment()), [
        "train.recompute=selective", "train.recompute_modules=[core_attn, mlp]",
        "train.save_interval=2", "train.train_iters=20", "export.iteration=4",
        "optimizer.adam_beta2=0.98", "optimizer.lr_decay_style=linear",
        "checkpoint.keep_last=2", "logging.timers=2", "logging.wandb_project=kd",
        f"student.megatron_checkpoint={ckpt}", "trust_remote_code=true"], cl)
    g = plan(exp, cl, tmp_path / "run")
    d = g.job("distill").spec
    assert d.train.recompute == "selective" and d.train.recompute_modules == ("core_attn", "mlp")
    assert (d.optimizer.adam_beta2, d.optimizer.lr_decay_style) == (0.98, "linear")
    assert d.checkpoint.keep_last == 2 and d.keep_iterations == (4,)  # export.iteration kept
    assert d.logging.timers == 2 and d.logging.wandb_mode == "offline"  # offline by default
    assert d.student_megatron_checkpoint == str(ckpt)
    assert d.index_cache == str(tmp_path / "run" / "data" / "index_cache")
    assert d.trust_remote_code
    assert g.job("export_hf").spec.trust_remote_code
    assert all(g.job(s).spec.trust_remote_code
               for s in ("eval_student_before", "eval_teacher", "eval_student_after"))
    own = layout.load_experiment(str(make_experiment()), [f"data.index_cache={tmp_path}/ic"], cl)[0]
    assert plan(own, cl, tmp_path / "run2").job("distill").spec.index_cache == f"{tmp_path}/ic"



def test_keep_last_never_deletes_a_selection_candidate(make_experiment, tmp_path):
    """checkpoint.keep_last and select together: every candidate iteration is protected until
    the select job has exported it (the last iteration is always a candidate)."""
    cl = cfg.load_cluster("ci")
    exp, _ = layout.load_experiment(str(make_experiment()), [
        "train.save_interval=2", "train.train_iters=20", "select.iterations=[2, 4]",
        "checkpoint.keep_last=1"], cl)
    d = plan(exp, cl, tmp_path / "run").job("distill").spec
    assert d.keep_iterations == (2, 4, 20)
