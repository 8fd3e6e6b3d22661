"""Pipeline parallelism across 2 gloo processes: KD trains, validates and saves with the PP=1
losses (issue 24 item 2: the first validation used to abort the last stage with a gloo size
mismatch, the student+teacher activations of the other stage being twice what it expected)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kd.paths import latest_iteration
from tests.kd.conftest import losses_of, make_spec, run_python, run_ranks, tagged_json

VALIDATION_LINE = re.compile(r"validation loss at iteration\s+(\d+)( on validation set)? \|(.*)")
VALUE = re.compile(r"([a-z ]+?) value: ([0-9.Ee+-]+)")


def validation_losses(text: str) -> dict[tuple[int, bool], dict[str, float]]:
    """{(iteration, final): {"lm loss": .., "total loss": .., ...}} from Bridge's validation
    lines; ``final`` is the validation after training ("on validation set")."""
    found = {}
    for m in VALIDATION_LINE.finditer(text):
        values = {k.strip(): float(v) for k, v in VALUE.findall(m.group(3))}
        found[(int(m.group(1)), bool(m.group(2)))] = values
    return found


@pytest.mark.dist
def test_pp2_validates_with_the_pp1_losses(kd_runs, dense_student, tiny_teacher, token_prefix):
    from kd.distill import spec_to_json

    def spec(name, **kw):
        return make_spec(
            dense_student,
            tiny_teacher,
            token_prefix,
            kd_runs / name,
            train_iters=8,
            eval_interval=4,
            eval_iters=1,
            save_interval=8,
            **kw,
        )

    pp1 = run_python(
        ["-m", "kd.distill", "--spec", str(spec_to_json(spec("pp1"), kd_runs / "pp1.json"))],
        kd_runs / "pp1.log",
    ).stdout
    pp2_spec = spec("pp2", pp=2)
    outputs = run_ranks(
        ["-m", "kd.distill", "--spec", str(spec_to_json(pp2_spec, kd_runs / "pp2.json"))],
        2,
        kd_runs / "pp2_logs",
    )
    pp2 = "\n".join(outputs)  # the last stage (rank 1) prints the losses, rank 0 the summary

    one, two = losses_of(pp1), losses_of(pp2)
    assert sorted(two) == sorted(one) == list(range(1, 9))
    for it in one:
        assert two[it] == pytest.approx(one[it], rel=1e-5, abs=1e-7), (it, one[it], two[it])

    valid1, valid2 = validation_losses(pp1), validation_losses(pp2)
    assert sorted(valid1) == sorted(valid2) == [(4, False), (8, False), (8, True)]
    for key, values in valid1.items():
        assert {"lm loss", "total loss", "logits distillation loss"} <= set(values), values
        for name, value in values.items():  # the student's LM loss and the KD loss
            assert valid2[key][name] == pytest.approx(value, rel=1e-5, abs=1e-7), (key, name)

    assert "bridge-pp-distillation-eval-shapes" in pp2  # kd.compat's summary line
    summary = tagged_json(pp2, "KD_SUMMARY")
    assert summary["world_size"] == 2 and summary["pp"] == 2
    assert latest_iteration(Path(pp2_spec.output_dir) / "checkpoints") == 8
