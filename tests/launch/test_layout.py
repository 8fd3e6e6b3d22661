"""launch/layout.py: ``auto`` tp/pp/micro-batch/recompute chosen from the memory estimate."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from launch import config as cfg
from launch import layout
from launch.memory import estimate
from launch.schema import ConfigError

from .test_memory import BIG_S, BIG_T, llama

REPO = Path(__file__).resolve().parents[2]
LLAMA_8B = llama(32, 4096, 14336, 32, 8, 128256)


@pytest.fixture
def shaped(make_experiment, tmp_path):
    """An experiment whose student/teacher config.json carry the given shapes."""
    def make(student: dict, teacher: dict, *overrides: str):
        for role, shape in (("student", student), ("teacher", teacher)):
            f = tmp_path / role / "config.json"
            f.write_text(json.dumps({**json.loads(f.read_text()), **shape}))
        return cfg.load_experiment(str(make_experiment()), ["train.tp=auto", *overrides])
    return make


def fits(student, teacher, t, budget, world=8) -> bool:
    dp = world // (t.tp * t.pp)  # the distributed optimizer (default for dp > 1) shards over dp
    return estimate(student, teacher, tp=t.tp, pp=t.pp, seq=t.seq_length,
                    mbs=t.micro_batch_size, recompute=t.recompute == "full", dp=dp,
                    sharded_optimizer=dp > 1,  # sequence parallelism: the default at tp > 1
                    sequence_parallel=t.tp > 1 and t.sequence_parallel is not False).total <= budget


def test_8b_pair_on_an_8_gpu_node_gets_the_smallest_tp_that_fits(shaped):
    exp = shaped(LLAMA_8B, LLAMA_8B, "train.micro_batch_size=auto", "train.global_batch_size=8")
    cluster = cfg.load_cluster("pyxis_nemo", ["nodes=1"])
    out, lay = layout.resolve(exp, cluster)
    t = out.train
    budget = layout.AUTO_FILL * cluster.gpu_memory_gib
    assert (t.tp, t.pp, t.recompute) == (lay.tp, lay.pp, "none")
    assert lay.dp * t.tp * t.pp == 8
    assert fits(LLAMA_8B, LLAMA_8B, t, budget)
    smaller = out.train.__class__(**{**vars(t), "tp": t.tp // 2, "micro_batch_size": 1,
                                     "sequence_parallel": "auto"})
    assert t.tp > 1 and not fits(LLAMA_8B, LLAMA_8B, smaller, budget)  # tp/2 would not fit
    assert lay.auto == ("tp", "pp", "micro_batch_size", "recompute", "distributed_optimizer")
    assert f"tp={t.tp}" in lay.describe() and "estimated peak" in lay.describe()


def test_sharded_optimizer_lets_a_smaller_tp_fit(shaped):
    """Without the distributed optimizer the 8B pair needs a larger TP on 8 x 80 GB."""
    cluster = cfg.load_cluster("pyxis_nemo", ["nodes=1"])
    common = ("train.micro_batch_size=auto", "train.global_batch_size=8")
    _, sharded = layout.resolve(shaped(LLAMA_8B, LLAMA_8B, *common), cluster)
    _, whole = layout.resolve(
        shaped(LLAMA_8B, LLAMA_8B, *common, "train.distributed_optimizer=false"), cluster)
    assert sharded.tp < whole.tp
    # (with sequence parallelism at tp > 1 the unsharded run fits a larger micro-batch at its
    # larger tp, so the two estimates are not ordered; both fit)
    assert max(sharded.estimate_gib, whole.estimate_gib) <= sharded.budget_gib


def test_distributed_optimizer_term():
    s = {**LLAMA_8B}
    one = estimate(s, s, tp=2, seq=4096, mbs=1)
    four = estimate(s, s, tp=2, seq=4096, mbs=1, dp=4, sharded_optimizer=True)
    # 18 bytes per parameter become 6 + 12/4 = 9: exactly half of the student's states
    assert four.student_states == pytest.approx(one.student_states / 2)
    assert four.activations == one.activations and four.logits == one.logits


def test_1b_pair_on_4_gpus_goes_data_parallel_with_a_larger_micro_batch(shaped):
    exp = shaped(BIG_S, BIG_T, "train.micro_batch_size=auto", "train.pp=auto",
                 "train.global_batch_size=32", "train.seq_length=4096")
    cluster = cfg.load_cluster("local_gpu")
    out, lay = layout.resolve(exp, cluster)
    assert (lay.tp, lay.pp, lay.dp) == (1, 1, 4)
    assert lay.micro_batch_size == 4  # of 1, 2, 4, 8 (= 32 / dp 4)
    budget = layout.AUTO_FILL * cluster.gpu_memory_gib
    assert fits(BIG_S, BIG_T, out.train, budget)
    t8 = out.train.__class__(**{**vars(out.train), "micro_batch_size": 8})
    assert not fits(BIG_S, BIG_T, t8, budget)  # the next one would not fit


def test_pinned_values_are_kept_and_only_the_rest_chosen(shaped):
    exp = shaped(BIG_S, BIG_T, "train.tp=2", "train.micro_batch_size=auto",
                 "train.global_batch_size=16", "train.seq_length=2048")
    out, lay = layout.resolve(exp, cfg.load_cluster("local_gpu"))
    assert out.train.tp == 2 and lay.dp == 2 and lay.auto == ("pp", "micro_batch_size", "recompute", "distributed_optimizer")
    assert out.train.micro_batch_size == 8  # 16 / dp 2 = 8 per rank, and it fits a 1B pair


def test_recompute_only_when_nothing_fits_without_it(shaped):
    exp = shaped(LLAMA_8B, LLAMA_8B, "train.pp=1", "train.global_batch_size=8",
                 "train.seq_length=32768", "train.sequence_parallel=false")  # (with it: fits)
    cluster = cfg.load_cluster("pyxis_nemo", ["nodes=1"])
    out, lay = layout.resolve(exp, cluster)
    assert lay.recompute == "full" and lay.tp == 4  # tp 4 with the sharded optimizer (8 without)
    plain = out.train.__class__(**{**vars(out.train), "recompute": "none"})
    assert not fits(LLAMA_8B, LLAMA_8B, plain, layout.AUTO_FILL * cluster.gpu_memory_gib)


def test_no_layout_fits_names_the_fix(shaped):
    exp = shaped(LLAMA_8B, LLAMA_8B, "train.seq_length=262144", "train.recompute=auto")
    with pytest.raises(ConfigError, match=r"no layout fits: with train.seq_length=262144 on 8 "
                                          r"GPUs .* add nodes \(cluster.nodes\)"):
        layout.resolve(exp, cfg.load_cluster("pyxis_nemo", ["nodes=1"]))


def test_auto_needs_gpu_memory_and_readable_models(shaped, make_experiment, tmp_path):
    exp = shaped(BIG_S, BIG_T)
    with pytest.raises(ConfigError, match=r"cluster.gpu_memory_gib is not set: set it"):
        layout.resolve(exp, cfg.load_cluster("local_gpu", ["gpu_memory_gib=null"]))
    (tmp_path / "student" / "config.json").unlink()
    with pytest.raises(ConfigError, match=r"student.path=.* has no readable config.json"):
        layout.resolve(exp, cfg.load_cluster("local_gpu"))


def test_cpu_cluster_uses_no_model_parallelism(make_experiment):
    exp = cfg.load_experiment(str(make_experiment()), [
        "train.tp=auto", "train.pp=auto", "train.micro_batch_size=auto",
        "train.global_batch_size=24"])
    out, lay = layout.resolve(exp, cfg.load_cluster("local"))
    assert (out.train.tp, out.train.pp, out.train.recompute) == (1, 1, "none")
    assert out.train.micro_batch_size == 8  # largest divisor of 24 up to MAX_AUTO_MBS


def test_cli_prints_the_chosen_layout_and_plans_it(make_experiment, tmp_path):
    path = make_experiment()
    proc = subprocess.run(
        [sys.executable, "launch/distill.py", "--cluster", "local", "--config", str(path),
         "--run-dir", str(tmp_path / "run"), "--dry-run", "train.tp=auto",
         "train.micro_batch_size=auto", "train.global_batch_size=4"],
        cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "layout: tp=1 pp=1 dp=1 micro_batch_size=4 recompute=none" in proc.stdout


def test_planning_and_preflight_refuse_an_unresolved_experiment(make_experiment):
    from launch import preflight
    from launch.plan import plan

    cluster = cfg.load_cluster("local")
    exp = cfg.load_experiment(str(make_experiment()), ["train.tp=auto"])
    for step in (lambda: plan(exp, cluster, "/tmp/unused"),
                 lambda: preflight.check_layout(exp, cluster)):
        with pytest.raises(ValueError, match=r"train.tp, train.pp, train.recompute still 'auto'"):
            step()
    resolved, _ = layout.resolve(exp, cluster)
    assert plan(resolved, cluster, "/tmp/unused").job("distill").spec.train.tp == 1


# ------------------------------------------------ a run that resumes keeps its checkpoint's layout
def saved_checkpoint(run_dir: Path, iteration: int, *, tp: int, pp: int, dp: int,
                     sharded: bool) -> Path:
    """A complete save (the files kd.checkpoints requires) and kd.distill's layout record."""
    from kd import checkpoints as ckpts
    from kd.paths import RunPaths

    ckpt = RunPaths(run_dir).checkpoints
    it = ckpt / f"iter_{iteration:07d}"
    it.mkdir(parents=True)
    for name in ckpts.REQUIRED_FILES:
        (it / name).write_text("x")
    (ckpt / ckpts.TRACKER).write_text(str(iteration))
    ckpts.record_layout(ckpt, 0, tp=tp, pp=pp, dp=dp, distributed_optimizer=sharded)
    return ckpt


def test_auto_follows_the_checkpoint_of_a_resumed_run(make_experiment, tmp_path):
    """A DP2 run (distributed optimizer on) relaunched on one node: ``auto`` would turn the
    distributed optimizer off at DP1, and the other optimizer cannot load the save."""
    saved_checkpoint(tmp_path / "run", 20, tp=1, pp=1, dp=2, sharded=True)
    cluster = cfg.load_cluster("local")  # one rank: dp 1
    exp_file = str(make_experiment())
    fresh, lay = layout.load_experiment(exp_file, ["train.tp=auto", "train.pp=auto"], cluster)
    assert fresh.train.distributed_optimizer is False and lay.resumes is None
    out, lay = layout.load_experiment(exp_file, ["train.tp=auto", "train.pp=auto"], cluster,
                                      tmp_path / "run")
    assert (out.train.tp, out.train.pp, lay.dp) == (1, 1, 1)
    assert out.train.distributed_optimizer is True and lay.distributed_optimizer
    assert "resumes the checkpoint at iteration 20, saved at tp=1 pp=1 dp=2 distributed " \
           "optimizer on" in lay.describe()


def test_a_pinned_layout_the_checkpoint_cannot_load_is_refused(make_experiment, tmp_path):
    saved_checkpoint(tmp_path / "run", 20, tp=1, pp=1, dp=2, sharded=True)
    cluster = cfg.load_cluster("local")
    exp_file = str(make_experiment())
    for pinned, named in ((["train.tp=auto", "train.pp=auto",
                            "train.distributed_optimizer=false"],
                           "train.distributed_optimizer=false"),
                          (["train.tp=2", "train.pp=1"], "train.tp=2")):
        with pytest.raises(ConfigError, match=rf"{named}: this run directory's checkpoint at "
                           r"iteration 20 was saved at tp=1 pp=1 dp=2 distributed optimizer "
                           r"on.*set train.tp=1 train.pp=1 train.distributed_optimizer=true"):
            layout.load_experiment(exp_file, pinned, cluster, tmp_path / "run")


def test_a_checkpoint_without_the_layout_record_is_read_from_bridge_run_config(tmp_path):
    """Saves from before kdlaunch recorded layouts: Bridge's run_config.yaml says tp/pp and
    the optimizer kind (dp unknown)."""
    from kd import checkpoints as ckpts

    ckpt = saved_checkpoint(tmp_path / "run", 10, tp=1, pp=1, dp=2, sharded=True)
    (ckpt / ckpts.LAYOUTS).unlink()
    (ckpt / "iter_0000010" / "run_config.yaml").write_text(
        "ddp:\n  use_distributed_optimizer: false\nmodel:\n  pipeline_model_parallel_size: 2\n"
        "  tensor_model_parallel_size: 4\n")
    saved = ckpts.saved_layout(ckpt)
    assert (saved.iteration, saved.tp, saved.pp, saved.dp, saved.distributed_optimizer) == (
        10, 4, 2, None, False)
    assert saved.describe() == "tp=4 pp=2 dp=? distributed optimizer off"


def test_the_layout_record_names_the_layout_of_each_save(tmp_path):
    from kd import checkpoints as ckpts

    ckpt = saved_checkpoint(tmp_path / "run", 10, tp=1, pp=1, dp=2, sharded=True)
    ckpts.record_layout(ckpt, 10, tp=1, pp=1, dp=2, distributed_optimizer=True)  # same: no entry
    ckpts.record_layout(ckpt, 10, tp=1, pp=1, dp=4, distributed_optimizer=True)  # relaunched
    assert len(json.loads((ckpt / ckpts.LAYOUTS).read_text())) == 2
    assert ckpts.saved_layout(ckpt).dp == 2  # iteration 10 was saved by the first start
    (ckpt / "iter_0000020").mkdir()
    for name in ckpts.REQUIRED_FILES:
        (ckpt / "iter_0000020" / name).write_text("x")
    (ckpt / ckpts.TRACKER).write_text("20")
    assert ckpts.saved_layout(ckpt).dp == 4


def test_launch_refuses_a_clashing_layout_before_queueing(make_experiment, tmp_path, capsys):
    from launch.distill import main

    run = tmp_path / "run"
    saved_checkpoint(run, 20, tp=1, pp=1, dp=2, sharded=True)
    code = main(["--cluster", "local", "--config", str(make_experiment()), "--run-dir", str(run),
                 "train.tp=auto", "train.pp=auto", "train.distributed_optimizer=false"])
    out = capsys.readouterr()
    assert code == 2, out
    assert "train.distributed_optimizer=false: this run directory's checkpoint" in out.err + out.out
    assert not (run / "manifest.json").exists() and not (run / "jobs").exists()
