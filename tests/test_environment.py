"""The test environment itself: what would silently make every test process slower."""

from __future__ import annotations

import importlib.util
import os

import pytest

HEAVY = ("torch", "transformers", "megatron.core", "megatron.bridge", "modelopt", "lm_eval")


@pytest.mark.parametrize("name", HEAVY)
def test_heavy_packages_have_compiled_bytecode(name):
    """Every stage job and compute-test subprocess imports these. Without their .pyc files
    (uv installs none unless asked, and PYTHONDONTWRITEBYTECODE stops Python writing them)
    each process compiles them from source again: that doubled the CPU time of `make test`."""
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.origin, name
    cached = importlib.util.cache_from_source(spec.origin)
    assert os.path.isfile(cached), (
        f"{name} has no compiled bytecode ({cached} is missing): the virtualenv was installed "
        "without it. Rebuild it: rm .venv/.kdlaunch-env-ok && make env")
