"""HF <-> Megatron logits parity for the standard and the AnyModel student, TP=1 and TP=2."""

from __future__ import annotations

import pytest

from tests.kd.conftest import REPO, run_python, run_ranks, tagged_json

SCRIPT = str(REPO / "tests/kd/_parity.py")


def _check(outputs: list[str], models: list[str], tp: int) -> None:
    for out in outputs:
        results = [
            tagged_json(ln, "KD_PARITY") for ln in out.splitlines() if ln.startswith("KD_PARITY ")
        ]
        assert [r["model"] for r in results] == models
        for result in results:
            assert result["tp"] == tp
            assert result["local"]["core"] == "DotProductAttention"
            assert result["sdpa"]["core"] == "SDPACoreAttention"
            for attention in ("local", "sdpa"):
                tolerance = 1e-5 * max(1.0, result[attention]["ref_scale"])
                assert result[attention]["max_abs_diff"] < tolerance, result


def test_hf_megatron_logits_parity(kd_runs, dense_student, anymodel_student):
    models = [str(dense_student), str(anymodel_student)]
    proc = run_python([SCRIPT, *models], kd_runs / "parity.log")
    _check([proc.stdout], models, tp=1)


@pytest.mark.dist
def test_hf_megatron_logits_parity_tp2(kd_runs, dense_student, anymodel_student):
    models = [str(dense_student), str(anymodel_student)]
    _check(run_ranks([SCRIPT, *models], 2, kd_runs / "parity_tp2"), models, tp=2)
