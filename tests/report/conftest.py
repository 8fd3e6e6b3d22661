"""Fixtures: the guide's two MMLU tables as lm-eval results files (see guide_tables.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.report.guide_tables import REGRESSION, SUCCESS, write_case


@pytest.fixture
def success_files(tmp_path: Path) -> dict[str, Path]:
    return write_case(tmp_path / "success", SUCCESS)


@pytest.fixture
def regression_files(tmp_path: Path) -> dict[str, Path]:
    return write_case(tmp_path / "regression", REGRESSION)
