"""The options Model-Optimizer's distill.py offers, on the compute side:
checkpoint retention by the completeness rule, the checks that depend on where distill runs, and
each option reaching Megatron-Bridge's ConfigContainer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kd import checkpoints as ckpts
from kd.paths import iteration_dir
from kd.sections import Checkpoint, Logging, Optimizer
from kd.specs import replace_fields
from tests.kd.conftest import REPO, make_spec, run_python, tagged_json

FILES = ("__0_0.distcp", "common.pt", ".metadata", "metadata.json", "train_state.pt")


def _save(root: Path, iteration: int, complete: bool = True) -> None:
    d = iteration_dir(root, iteration)
    d.mkdir(parents=True)
    for name in FILES if complete else FILES[:2]:
        (d / name).write_text(name)
    if complete:
        (root / ckpts.TRACKER).write_text(str(iteration))


# ---------------------------------------------------------------- checkpoint.keep_last
def test_keep_last_deletes_only_old_complete_unprotected_checkpoints(tmp_path):
    root = tmp_path / "checkpoints"
    for it in (10, 20, 30, 40):
        _save(root, it)
    _save(root, 50, complete=False)  # a save killed midway: neither counted nor deleted
    assert ckpts.retention_victims(root, 2) == [10, 20]
    assert ckpts.retention_victims(root, 2, protect=(10,)) == [20]  # export.iteration / candidate
    assert ckpts.retention_victims(root, None) == []
    (root / (ckpts.TRASH_PREFIX + "iter_0000005")).mkdir()  # a deletion that was itself killed
    assert ckpts.prune(root, 2, protect=(10,)) == [20]
    assert sorted(p.name for p in root.iterdir()) == [
        "iter_0000010", "iter_0000030", "iter_0000040", "iter_0000050", ckpts.TRACKER]
    assert ckpts.latest_complete(root) == 40  # what a rerun resumes from
    assert ckpts.prune(root, 1) == [10, 30]
    assert ckpts.complete_iterations(root) == [40]


def test_keep_last_never_deletes_the_only_resumable_checkpoint(tmp_path):
    root = tmp_path / "checkpoints"
    _save(root, 10)
    _save(root, 20, complete=False)
    assert ckpts.prune(root, 1) == []
    assert ckpts.latest_complete(root) == 10
    with pytest.raises(ValueError, match="keep_last=0: must be >= 1"):
        ckpts.retention_victims(root, 0)


# ---------------------------------------------------------------- checks where distill runs
def test_options_that_depend_on_the_machine_are_refused_with_the_fix(
        tmp_path, dense_student, tiny_teacher, token_prefix, monkeypatch):
    from kd import distill

    spec = make_spec(dense_student, tiny_teacher, token_prefix, tmp_path / "run")
    distill.check_options(spec, "cpu")
    with pytest.raises(ValueError, match="async_save=true needs CUDA.*async_save=false"):
        distill.check_options(replace_fields(spec, checkpoint=Checkpoint(async_save=True)),
                              "cpu")
    from kd import compat

    layernorm = replace_fields(spec, recompute="selective", recompute_modules=("layernorm",))
    if not compat.have_te():  # megatron-core's output-discarding checkpoint imports TE's FP8 state
        with pytest.raises(ValueError, match="layernorm.*Transformer Engine"):
            distill.check_options(layernorm, "cpu")
    root = tmp_path / "other" / "checkpoints"
    _save(root, 4)
    _save(root, 8, complete=False)
    assert distill.student_init_checkpoint(
        replace_fields(spec, student_megatron_checkpoint=str(root))) == (str(root), 4)
    assert distill.student_init_checkpoint(
        replace_fields(spec, student_megatron_checkpoint=str(iteration_dir(root, 4)))) == (str(root), 4)
    bad = replace_fields(spec, student_megatron_checkpoint=str(iteration_dir(root, 8)))
    with pytest.raises(ValueError, match=r"not a complete Megatron checkpoint.*\[4\]"):
        distill.check_options(bad, "cpu")


def test_wandb_offline_by_default_key_only_from_the_environment(
        tmp_path, dense_student, tiny_teacher, token_prefix, monkeypatch):
    from kd import distill

    spec = make_spec(dense_student, tiny_teacher, token_prefix, tmp_path / "run")
    assert distill.wandb_environment(spec, {}) == {}  # no project: no W&B at all
    wb = replace_fields(spec, logging=Logging(wandb_project="kd"))
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(ValueError, match=r"wandb package is not installed.*pip install wandb"):
        distill.wandb_environment(wb, {})
    monkeypatch.undo()
    # wandb cannot be installed here (the env is pinned): a stand-in package makes it importable
    (tmp_path / "pkgs" / "wandb").mkdir(parents=True)
    (tmp_path / "pkgs" / "wandb" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))
    env: dict = {}
    assert distill.wandb_environment(wb, env) == {"WANDB_MODE": "offline"}
    assert env == {"WANDB_MODE": "offline"}
    online = replace_fields(spec, logging=Logging(wandb_project="kd", wandb_mode="online"))
    with pytest.raises(ValueError, match="needs WANDB_API_KEY in the environment"):
        distill.wandb_environment(online, {"WANDB_API_KEY": " "})
    assert distill.wandb_environment(online, {"WANDB_API_KEY": "k"}) == {"WANDB_MODE": "online"}
    with pytest.raises(ValueError, match="wandb_api_key.*export WANDB_API_KEY") as err:
        Logging(wandb_project="kd", wandb_api_key="0123abcd")
    assert "0123abcd" not in str(err.value)  # the key is not echoed


# ---------------------------------------------------------------- options -> ConfigContainer
def test_gpu_and_wandb_options_reach_the_bridge_config(
        kd_runs, dense_student, tiny_teacher, token_prefix, tmp_path):
    """Async save and W&B cannot run here: their Bridge config objects are built from the spec's
    JSON form (what a job reads) without a model. The real run below covers the rest."""
    from kd.distill import spec_from_dict, spec_to_json

    root = tmp_path / "init" / "checkpoints"
    _save(root, 3)
    spec = replace_fields(
        make_spec(dense_student, tiny_teacher, token_prefix, kd_runs / "flow"),
        checkpoint=Checkpoint(keep_last=2, async_save=True),
        logging=Logging(timers=1, wandb_project="kd", wandb_entity="team"),
        student_megatron_checkpoint=str(iteration_dir(root, 3)),
    )
    path = spec_to_json(spec, tmp_path / "spec.json")
    assert spec_from_dict(json.loads(path.read_text())) == spec
    proc = run_python([str(REPO / "tests/kd/_config_flow.py"), str(path)], tmp_path / "flow.log")
    c = tagged_json(proc.stdout, "KD_CONFIG")
    ckpt = str(Path(spec.output_dir) / "checkpoints")
    # a first start takes the student from iter 3 of the other run; Bridge's own retention is off
    assert c["checkpoint"] == {"save": ckpt, "load": ckpt, "pretrained_checkpoint": str(root),
                               "ckpt_step": 3, "async_save": True, "most_recent_k": -1}
    assert c["logger"] == {"timing_log_level": 1, "log_timers_to_tensorboard": True,
                           "wandb_project": "kd", "wandb_entity": "team",
                           "wandb_exp_name": Path(spec.output_dir).parent.name,  # the run dir
                           "wandb_save_dir": str(Path(spec.output_dir) / "wandb")}


# ---------------------------------------------------------------- a real run with the options
def test_student_from_megatron_checkpoint_with_the_options_in_a_real_run(
        dense_tp1_run, kd_runs, dense_student, tiny_teacher, token_prefix):
    """Run 2 starts its student from run 1's last save (iter 8) instead of the HF weights, with
    selective recomputation, another optimizer, timers in TensorBoard and keep_last=1 (iteration
    1 protected as export.iteration would be). One short run checks them all for real."""
    first = tagged_json(dense_tp1_run["out"], "KD_PROBE")
    saved = Path(dense_tp1_run["spec"].output_dir) / "checkpoints"
    assert ckpts.latest_complete(saved) == 8
    spec = replace_fields(
        make_spec(dense_student, tiny_teacher, token_prefix, kd_runs / "from_megatron",
                  train_iters=3, save_interval=1, lr_warmup_iters=0),
        student_megatron_checkpoint=str(iteration_dir(saved, 8)),
        recompute="selective", recompute_modules=("core_attn", "mlp"),
        optimizer=Optimizer(adam_beta2=0.99, clip_grad=0.5, lr_decay_style="linear"),
        logging=Logging(timers=1),
        checkpoint=Checkpoint(keep_last=1),
        keep_iterations=(1,),
        index_cache=str(kd_runs / "index-cache"),
        trust_remote_code=True,
    )
    from kd.distill import spec_to_json

    path = spec_to_json(spec, kd_runs / "from_megatron.json")
    proc = run_python([str(REPO / "tests/kd/_probe_distill.py"), "--spec", str(path)],
                      kd_runs / "from_megatron.log")
    c = tagged_json(proc.stdout, "KD_CONFIG")  # what the options became in Bridge's config
    assert c["optimizer"] == {"adam_beta1": 0.9, "adam_beta2": 0.99, "adam_eps": 1e-8,
                              "weight_decay": 0.01, "clip_grad": 0.5, "lr": spec.train.lr,
                              "min_lr": spec.train.min_lr}
    assert c["scheduler"] == {"lr_decay_style": "linear", "start_weight_decay": 0.01,
                              "end_weight_decay": 0.01}
    assert c["recompute"] == {"recompute_granularity": "selective", "recompute_method": None,
                              "recompute_num_layers": None, "recompute_modules": ["core_attn", "mlp"]}
    assert (c["checkpoint"]["pretrained_checkpoint"], c["checkpoint"]["ckpt_step"]) == (str(saved), 8)
    assert c["logger"]["timing_log_level"] == 1 and c["logger"]["log_timers_to_tensorboard"]
    assert c["path_to_cache"] == str(kd_runs / "index-cache")
    assert any((kd_runs / "index-cache").glob("*.npy"))  # the indices were built there
    assert c["trust_remote_code"] == [True, True]  # student and teacher
    probe = tagged_json(proc.stdout, "KD_PROBE")
    # the student's weights before its first step are run 1's saved ones, not the HF ones
    assert probe["student_initial"] == first["student_final"]
    assert probe["student_initial"] != first["student_initial"]
    assert "recompute selective" in proc.stdout
    root = Path(spec.output_dir) / "checkpoints"
    assert ckpts.complete_iterations(root) == [1, 3]  # 2 pruned; 1 protected; 3 resumable
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(Path(spec.output_dir) / "tensorboard"))
    events.Reload()
    assert {"forward-backward-time", "optimizer-time"} <= set(events.Tags()["scalars"])


def test_jobs_sharing_an_index_cache_build_one_at_a_time(tmp_path, monkeypatch):
    """data.index_cache shared by sweep members: rank 0 builds under an flock on the cache dir.
    A stand-in for megatron-core's build records that it ran (the real build goes through the
    same wrapper in every distill run); the lock is held through another open file, as another
    job's would be (flock locks belong to the open file, so this works within one process)."""
    import fcntl
    import threading

    from megatron.core.datasets.blended_megatron_dataset_builder import (
        BlendedMegatronDatasetBuilder as Builder,
    )

    from kd import compat

    cache = tmp_path / "index_cache"
    cache.mkdir()
    monkeypatch.setattr(Builder, "build", lambda self: (cache / "built").write_text("x") and "ok")
    compat.scoped.lock_index_builds(str(cache), 1)  # other ranks take no lock
    assert not getattr(Builder.build, "_kd_locked", False)
    compat.scoped.lock_index_builds(str(cache), 0)
    compat.scoped.lock_index_builds(str(cache), 0)  # wraps once
    assert Builder.build._kd_locked and Builder.build.__wrapped__.__name__ == "<lambda>"
    result = []
    with open(cache / ".kdlaunch.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another job is building
        worker = threading.Thread(target=lambda: result.append(Builder.build(object())))
        worker.start()
        worker.join(timeout=1.5)
        assert worker.is_alive() and not (cache / "built").exists()  # waiting for the lock
        fcntl.flock(held, fcntl.LOCK_UN)
    worker.join(timeout=30)
    assert result == ["ok"] and (cache / "built").exists()


def test_bridge_distill_is_still_pretrain_with_the_kd_forward_step():
    """kd.distill.distill_with_callbacks calls what Bridge's distill() calls (it takes no
    callbacks); if Bridge's distill() grows more than that, follow it there."""
    from kd.compat.probes import function_source

    body = function_source("megatron.bridge.training.distill", "distill")
    calls = [ln.strip() for ln in body.splitlines() if ln.strip().startswith(("return", "pretrain"))]
    assert calls == ["return pretrain(config, forward_step_modelopt)"], body

