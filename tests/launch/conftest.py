"""Fixtures for login-node tests: fake-but-real-shaped HF dirs (config.json + tokenizer file),
experiment YAMLs written to tmp_path, and a helper that runs launch/distill.py's main()."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def write_hf_dir(path: Path, *, heads=8, kv_heads=8, vocab=256, tokenizer="tok-A", blocks=None):
    path.mkdir(parents=True, exist_ok=True)
    cfg = {"architectures": ["LlamaForCausalLM"], "num_attention_heads": heads,
           "num_key_value_heads": kv_heads, "vocab_size": vocab, "max_position_embeddings": 4096,
           "hidden_size": 64, "num_hidden_layers": 2}
    if blocks is not None:
        cfg["block_configs"] = blocks
    (path / "config.json").write_text(json.dumps(cfg))
    (path / "tokenizer.json").write_text(json.dumps({"fake": tokenizer}))
    return path


@pytest.fixture
def hf_pair(tmp_path: Path) -> tuple[Path, Path]:
    return write_hf_dir(tmp_path / "student"), write_hf_dir(tmp_path / "teacher")


@pytest.fixture
def make_experiment(tmp_path: Path, hf_pair):
    """Write an experiment YAML (the guide's values, local files) and return its path."""
    student, teacher = hf_pair
    jsonl = tmp_path / "corpus.jsonl"
    jsonl.write_text('{"text": "w1 w2 w3"}\n')

    def make(**changes) -> Path:
        data = {
            "name": "unit",
            "student": {"path": str(student)},
            "teacher": {"path": str(teacher)},
            "data": {"sources": [{"name": "corpus", "jsonl": str(jsonl)}]},
            "train": {"tp": 8, "seq_length": 4096, "micro_batch_size": 1, "global_batch_size": 4,
                      "train_iters": 100, "lr_warmup_iters": 10},
            "export": {"hf_template": str(teacher)},
        }
        for key, value in changes.items():
            node = data
            parts = key.split("__")
            for p in parts[:-1]:
                node = node.setdefault(p, {})
            node[parts[-1]] = value
        path = tmp_path / "exp.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    return make

