"""Pre-flight checks: each rejects with a message naming the field and the fix."""

from __future__ import annotations

import shutil

import pytest

from launch import config as cfg
from launch import layout, preflight
from launch.schema import ConfigError

from .conftest import write_hf_dir


def run_checks(exp_path, exp_over=(), cl_over=(), cluster="slurm"):
    cl = cfg.load_cluster(cluster, list(cl_over))
    exp, _ = layout.load_experiment(str(exp_path), list(exp_over), cl)
    preflight.check_layout(exp, cl)
    preflight.check_paths(exp)
    preflight.check_models(exp)


def test_valid_experiment_passes(make_experiment):
    run_checks(make_experiment())


@pytest.mark.parametrize("exp_over, cl_over, message", [
    (["train.tp=3"], [], "does not divide the world size 8"),
    (["train.tp=8"], ["tasks_per_node=4", "gpus_per_node=4", "nodes=2"],
     "tensor parallelism must stay inside a node"),
    (["train.global_batch_size=5", "train.tp=4"], [],
     "global_batch_size=5 is not divisible by train.micro_batch_size x data-parallel size = 1 x 2"),
    (["train.seq_length=8192"], [], "exceeds the student's max_position_embeddings=4096"),
])
def test_layout_checks(make_experiment, exp_over, cl_over, message):
    with pytest.raises(ConfigError, match=message):
        run_checks(make_experiment(), exp_over, cl_over)


def test_heads_not_divisible(make_experiment, tmp_path):
    write_hf_dir(tmp_path / "student", heads=12, kv_heads=4)
    with pytest.raises(ConfigError, match="train.tp=8 does not divide the student's 12 attention heads"):
        run_checks(make_experiment())


def test_kv_heads_not_divisible_anymodel_noop_ignored(make_experiment, tmp_path):
    blocks = [{"attention": {"no_op": True, "num_key_value_heads": None}, "ffn": {}},
              {"attention": {"no_op": False, "num_key_value_heads": 4}, "ffn": {}}]
    write_hf_dir(tmp_path / "student", heads=8, kv_heads=8, blocks=blocks)
    with pytest.raises(ConfigError, match=r"does not divide the student's key/value heads \(4\)"):
        run_checks(make_experiment())
    run_checks(make_experiment(), ["train.tp=4", "train.global_batch_size=4"])


def test_vocab_mismatch(make_experiment, tmp_path):
    write_hf_dir(tmp_path / "teacher", vocab=512)
    with pytest.raises(ConfigError, match="student and teacher vocabularies differ"):
        run_checks(make_experiment())


def test_tokenizer_mismatch(make_experiment, tmp_path):
    write_hf_dir(tmp_path / "teacher", tokenizer="tok-B")
    with pytest.raises(ConfigError, match="student and teacher tokenizers differ"):
        run_checks(make_experiment())


def test_missing_paths(make_experiment, tmp_path):
    with pytest.raises(ConfigError, match=r"student.path='/nonexistent/x': no such directory"):
        run_checks(make_experiment(student={"path": "/nonexistent/x"}))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="has no config.json"):
        run_checks(make_experiment(teacher={"path": str(tmp_path / "empty")}))
    with pytest.raises(ConfigError, match=r"jsonl='/no/data.jsonl': no such file"):
        run_checks(make_experiment(data={"sources": [{"name": "a", "jsonl": "/no/data.jsonl"}]}))


def test_prefix_needs_bin_and_idx(make_experiment, tmp_path):
    (tmp_path / "wiki_text_document.bin").write_bytes(b"")
    exp = make_experiment(data={"sources": [{"name": "w", "prefix": str(tmp_path / "wiki_text_document")}]})
    with pytest.raises(ConfigError, match=r"wiki_text_document.idx missing; a Megatron dataset prefix needs both"):
        run_checks(exp)
    (tmp_path / "wiki_text_document.idx").write_bytes(b"")
    run_checks(exp)


def test_named_cluster_without_partition(make_experiment):
    cl = cfg.load_cluster("pyxis_nemo", ["partition=null"])
    exp, _ = layout.load_experiment(str(make_experiment()), [], cl)
    if not shutil.which("sbatch"):
        pytest.skip("needs the SLURM client (started by the test command)")
    with pytest.raises(ConfigError, match=r"cluster.partition is not set for cluster 'pyxis_nemo'"):
        preflight.check(exp, cl)
