"""Config loading: shipped configs validate; bad input names the field and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from launch import config as cfg
from launch.schema import ConfigError

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "clusters").glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_shipped_clusters_load(path):
    cl = cfg.load_cluster(str(path))
    assert cl.name == path.stem


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "experiments").glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_shipped_experiments_load(path):
    exp = cfg.load_experiment(str(path))
    assert exp.name == path.stem
    assert path.read_text().startswith("#"), "each experiment starts with a runbook comment"


def test_seed_experiment_matches_the_guide():
    exp = cfg.load_experiment("seed_llama31_8b")
    t = exp.train
    assert (t.tp, t.pp, t.seq_length, t.micro_batch_size, t.global_batch_size) == (8, 1, 4096, 1, 4)
    assert (t.train_iters, t.lr, t.min_lr, t.lr_warmup_iters) == (100, 1e-4, 1e-5, 10)
    assert (t.eval_interval, t.eval_iters, t.log_interval) == (10, 10, 1)
    assert exp.export.hf_template == "meta-llama/Llama-3.1-8B-Instruct"
    assert exp.data.sources[0].weight == 1.0


def test_pyxis_example_uses_nemo_image_and_8_gpus():
    cl = cfg.load_cluster("pyxis_nemo")
    assert cl.container.image == "nvcr.io#nvidia/nemo:26.02" and cl.gpus_per_node == 8


def test_overrides_are_typed(make_experiment):
    exp = cfg.load_experiment(str(make_experiment()), ["train.lr=3e-4", "train.train_iters=50",
                                                       "kd.logit_kl_topk=16"])
    assert exp.train.lr == 3e-4 and exp.train.train_iters == 50 and exp.kd.logit_kl_topk == 16


def test_unknown_key_lists_valid_ones(make_experiment):
    with pytest.raises(ConfigError) as e:
        cfg.load_experiment(str(make_experiment()), ["train.learning_rate=1"])
    msg = str(e.value)
    assert "train.learning_rate" in msg and "valid keys of train:" in msg and "lr" in msg


def test_unknown_top_level_key(make_experiment):
    with pytest.raises(ConfigError, match=r"unknown key\(s\) optimizer; valid keys: data, eval"):
        cfg.load_experiment(str(make_experiment(optimizer={"lr": 1})))


def test_wrong_type_names_field(make_experiment):
    with pytest.raises(ConfigError, match=r"train.seq_length: expected an integer, got 'long'"):
        cfg.load_experiment(str(make_experiment()), ["train.seq_length=long"])
    with pytest.raises(ConfigError, match=r"train.tp='eight': expected a positive integer or "
                                          r"'auto'"):
        cfg.load_experiment(str(make_experiment()), ["train.tp=eight"])
    with pytest.raises(ConfigError, match=r"train.recompute='some': choose one of auto, none"):
        cfg.load_experiment(str(make_experiment()), ["train.recompute=some"])


def test_missing_required_field(make_experiment, tmp_path):
    path = make_experiment()
    text = "\n".join(ln for ln in path.read_text().splitlines() if not ln.startswith("teacher")
                     and not ln.startswith("  path: " + str(tmp_path / "teacher")))
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"teacher is required but missing"):
        cfg.load_experiment(str(path))


@pytest.mark.parametrize("override, message", [
    (["train.global_batch_size=5", "train.micro_batch_size=2"], "not a multiple of train.micro_batch_size"),
    (["train.lr_warmup_iters=100"], "lr_warmup_iters=100 must be < train.train_iters"),
    (["train.min_lr=1"], "need lr > 0 and 0 <= min_lr <= lr"),
    (["train.precision=fp8"], "train.precision='fp8': choose one of bf16, fp32"),
    (["train.cp=2"], "context parallelism is not supported"),
    (["data.sources=[{name: a, jsonl: x.jsonl, weight: 0}]"], "weight=0.0: must be a finite number > 0"),
    (["data.sources=[{name: a, jsonl: x.jsonl, weight: -1}]"], "weight=-1.0: must be a finite number > 0"),
    (["data.sources=[{name: a, jsonl: x.jsonl, weight: heavy}]"], "weight: expected a number"),
    (["data.sources=[{name: a, jsonl: x.jsonl, prefix: y}]"], "set exactly one of jsonl, hf_name, prefix"),
    (["data.sources=[]"], "data.sources is empty"),
    (["export.hf_template=null"], "export.hf_template is not set but export.enabled is true"),
    (["kd.logit_kl_temperature=0"], "kd.logit_kl_temperature=0.0: must be a finite number > 0"),
])
def test_bad_experiment_values(make_experiment, override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("+", r"\+")):
        cfg.load_experiment(str(make_experiment()), override)


@pytest.mark.parametrize("override, message", [
    (["executor=kubernetes"], "cluster.executor='kubernetes': choose one of slurm, local"),
    (["signal_delay_s=20", "save_time_s=60"], "cannot hold one checkpoint save"),
    (["time_min=1", "signal_delay_s=90"], "must be shorter than the time limit"),
    (["env.HF_TOKEN=abc"], "looks like a secret"),
    (["nodes=0"], "cluster.nodes=0: must be > 0"),
    (["container.mounts=[/data]"], "is not SRC:DST"),
])
def test_bad_cluster_values(override, message):
    with pytest.raises(ConfigError, match=message):
        cfg.load_cluster("slurm", override)


def test_unknown_cluster_profile_lists_profiles():
    with pytest.raises(ConfigError, match=r"no such profile; choose one of .*local.*slurm"):
        cfg.load_cluster("nosuch")
