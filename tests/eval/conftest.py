"""Eval fixtures: a small local MMLU (cais/mmlu layout, one subject per category) with its
include_path overrides, and an "always answers C" model whose accuracies are known by hand."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.eval.always_c import ANSWERS

REPO = Path(__file__).resolve().parents[2]
# datasets caches the parquet -> arrow conversion; keep it out of the user's ~/.cache.
os.environ.setdefault("HF_DATASETS_CACHE", str(REPO / ".cache" / "hf-datasets"))


@pytest.fixture(scope="session")
def mmlu_dataset(fixture_cache: Path) -> Path:
    from assets.mmlu import build_fake_mmlu

    return build_fake_mmlu(
        fixture_cache / "mmlu-fake-v1", tuple(ANSWERS), n_test=4, answers=ANSWERS
    )


@pytest.fixture(scope="session")
def mmlu_tasks(tmp_path_factory, mmlu_dataset: Path) -> Path:
    from kd.mmlu_local import write_task_overrides

    return write_task_overrides(tmp_path_factory.mktemp("mmlu-tasks"), mmlu_dataset, tuple(ANSWERS))


@pytest.fixture(scope="session")
def always_c_model(fixture_cache: Path, tiny_teacher: Path) -> Path:
    """The tiny teacher with its layers silenced and its head rigged to always predict "C".

    With every o_proj and down_proj zeroed, the hidden state at the last prompt token is the
    embedding of that token ("Answer:") alone; the head row of "C" is set to point along it.
    """
    out = fixture_cache / "always-c"
    if (out / "config.json").is_file():
        return out
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(tiny_teacher))
    model = LlamaForCausalLM.from_pretrained(str(tiny_teacher)).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        ids = torch.tensor([[tok.convert_tokens_to_ids("Answer:")]])
        hidden = model.model(ids).last_hidden_state[0, -1]
        model.lm_head.weight[tok.convert_tokens_to_ids("C")] = 50 * hidden / hidden.norm() ** 2
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    os.replace(tmp, out)
    return out


@pytest.fixture(scope="session")
def always_c_anymodel(fixture_cache: Path, always_c_model: Path) -> Path:
    """The always-C model as a pruned Puzzletron AnyModel: no-op attention in layer 0, half FFN
    in layer 1. Both were silenced already, so it must still always answer C."""
    from assets.tiny import build_pruned_anymodel

    return build_pruned_anymodel(always_c_model, fixture_cache / "always-c-anymodel")


@pytest.fixture(scope="session")
def mmlu_and_gen_tasks(tmp_path_factory, mmlu_dataset: Path) -> Path:
    """The local MMLU overrides plus ``kd_gen``, the tiny generative task (gen_task.py)."""
    from kd.mmlu_local import write_task_overrides
    from tests.eval.gen_task import write_gen_task

    root = tmp_path_factory.mktemp("mmlu-gen-tasks")
    tasks = write_task_overrides(root / "tasks", mmlu_dataset, tuple(ANSWERS))
    return write_gen_task(tasks, root / "data")
