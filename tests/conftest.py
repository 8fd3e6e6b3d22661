"""Shared test fixtures: one cache of tiny models/tokenizers for the whole session (and across
sessions: builders in kd/tiny.py are idempotent), GPU skipping."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:
        has_gpu = False
    if has_gpu:
        return
    skip = pytest.mark.skip(reason="needs CUDA GPUs: run on the device machine (see CONTRIBUTING.md)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def fixture_cache() -> Path:
    """Where built fixtures live; shared by every test and kept between runs."""
    path = Path(os.environ.get("KD_TEST_CACHE", REPO / ".cache" / "test-fixtures")).absolute()
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def tiny_tokenizer(fixture_cache: Path) -> Path:
    from kd.tiny import build_tokenizer

    return build_tokenizer(fixture_cache / "tokenizer")


@pytest.fixture(scope="session")
def tiny_teacher(fixture_cache: Path, tiny_tokenizer: Path) -> Path:
    from kd.tiny import build_llama

    return build_llama(fixture_cache / "teacher", tiny_tokenizer, layers=2, hidden=64, ffn=128)
