"""kd.distill: the real Megatron-Bridge distill() loop on CPU, each run in its own process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kd.paths import iteration_dir, latest_iteration
from kd.specs import replace_fields
from tests.kd.conftest import REPO, losses_of, make_spec, run_python, tagged_json


def test_entry_points_import_without_torch():
    code = (
        "import sys, kd.distill, kd.export, kd.compat; "
        "heavy = [m for m in ('torch', 'megatron', 'modelopt') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        check=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def test_validate_names_the_fix(tmp_path, dense_student, tiny_teacher, token_prefix):
    from kd.distill import validate

    good = make_spec(dense_student, tiny_teacher, token_prefix, tmp_path)
    validate(good, world_size=1)
    cases = {
        "precision": dict(precision="fp16"),
        "multiple of tp": dict(tp=2),
        "global_batch_size": dict(global_batch_size=3),
        "lr_warmup_iters": dict(lr_warmup_iters=6),
        "config.json": dict(student=str(tmp_path)),
        "prepare_data": dict(data_blend=((1.0, str(tmp_path / "nothing")),)),
    }
    for needle, change in cases.items():
        with pytest.raises(ValueError, match=needle):
            validate(replace_fields(good, **change), world_size=1)


def test_spec_json_round_trip(tmp_path, dense_student, tiny_teacher, token_prefix):
    from kd.distill import spec_from_dict, spec_to_json
    from kd.specs import KDOptions

    spec = make_spec(
        dense_student,
        tiny_teacher,
        token_prefix,
        tmp_path,
        kd=KDOptions(intermediate_layer_pairs=(("a", "b"),), logit_kl_topk=8),
    )
    path = spec_to_json(spec, tmp_path / "spec.json")
    assert spec_from_dict(json.loads(path.read_text())) == spec


def test_kd_loss_decreases_and_teacher_stays_frozen(dense_tp1_run):
    losses = losses_of(dense_tp1_run["out"])
    assert sorted(losses) == list(range(1, 9)), losses
    first, last = sum(losses[i] for i in (1, 2)) / 2, sum(losses[i] for i in (7, 8)) / 2
    assert last < 0.8 * first, losses
    probe = tagged_json(dense_tp1_run["out"], "KD_PROBE")
    assert probe["teacher_params"] > 0 and probe["student_trainable"] > 0
    assert probe["teacher_requires_grad"] == 0
    assert probe["teacher_with_grad"] == 0
    assert probe["teacher_max_change"] == 0.0
    summary = tagged_json(dense_tp1_run["out"], "KD_SUMMARY")
    assert summary["status"] == "completed" and summary["iteration"] == 8


def test_anymodel_student_checkpoints_and_marker(hetero_run):
    spec, out = hetero_run["spec"], hetero_run["out"]
    ckpt = Path(spec.output_dir) / "checkpoints"
    assert sorted(losses_of(out)) == list(range(1, 7))
    assert latest_iteration(ckpt) == 6
    for it in (3, 6):
        assert (iteration_dir(ckpt, it) / "run_config.yaml").is_file()
    run_config = (iteration_dir(ckpt, 6) / "run_config.yaml").read_text()
    assert "kd.layer_specs.hetero_sdpa_spec" in run_config
    assert any((Path(spec.output_dir) / "tensorboard").iterdir())
    marker = json.loads(Path(spec.done_marker).read_text())
    assert marker["status"] == "completed" and marker["iteration"] == 6


def test_rerun_skips_when_complete(hetero_run, monkeypatch):
    from kd import distill

    monkeypatch.setattr(os, "environ", dict(os.environ))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        os.environ.pop(key, None)
    # the done marker alone is enough; so is the final checkpoint without a marker
    assert distill.run(hetero_run["spec"])["status"] == "skipped"
    summary = distill.run(replace_fields(hetero_run["spec"], done_marker=None))
    assert summary["status"] == "skipped" and summary["iteration"] >= 6


def test_resume_continues_from_saved_iteration(hetero_run, kd_runs):
    from kd.distill import spec_to_json

    longer = replace_fields(
        hetero_run["spec"], train_iters=8, done_marker=str(kd_runs / "stages" / "distill8.done")
    )
    spec_file = spec_to_json(longer, kd_runs / "hetero8.json")
    proc = run_python(["-m", "kd.distill", "--spec", str(spec_file)], kd_runs / "hetero8.log")
    assert "resuming from iteration 6 to 8" in proc.stdout
    assert sorted(losses_of(proc.stdout)) == [7, 8]
    assert latest_iteration(Path(longer.output_dir) / "checkpoints") == 8
    assert tagged_json(proc.stdout, "KD_SUMMARY")["start_iteration"] == 6


def test_exit_signal_saves_checkpoint_and_stops(kd_runs, dense_student, tiny_teacher, token_prefix):
    from kd.distill import spec_to_json

    spec = make_spec(
        dense_student,
        tiny_teacher,
        token_prefix,
        kd_runs / "signal",
        train_iters=400,
        save_interval=None,
        lr_warmup_iters=1,
    )
    spec_file = spec_to_json(spec, kd_runs / "signal.json")
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "kd.distill", "--spec", str(spec_file), "--exit-signal", "USR2"],
        cwd=REPO,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    lines, deadline = [], time.time() + 240
    try:
        for line in proc.stdout:
            lines.append(line)
            if losses_of(line).get(2) is not None:
                proc.send_signal(signal.SIGUSR2)
                break
            assert time.time() < deadline, "training did not start in time"
        lines.extend(proc.stdout)
        code = proc.wait(timeout=120)
    finally:
        proc.kill()
    text = "".join(lines)
    (kd_runs / "signal.log").write_text(text)
    stopped = latest_iteration(Path(spec.output_dir) / "checkpoints")
    assert code == 3, text[-3000:]
    assert stopped is not None and 2 <= stopped < 400
    assert f"stopped at iteration {stopped} of 400" in text
