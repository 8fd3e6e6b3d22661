"""Sweeps without SLURM: config validation, member expansion, stage sharing in the plan,
history, trend report + regression alarm (exit code), checkpoint selection."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

from launch import config as cfg
from launch import history
from launch import sweep_plan as sp
from launch.schema import ConfigError
from launch.sweep import main
from tests.sweep.conftest import MEMBERS, REPO, write_night

GOOD = {"mmlu": 0.40, "kd_synth": 0.60}


def test_shipped_sweeps_load_and_plan():
    for path in sorted((REPO / "configs" / "sweeps").glob("*.yaml")):
        sweep = sp.load_sweep(str(path))
        plans = sp.plan_sweep(sweep, cfg.load_cluster(sweep.cluster), "2026-01-01")
        assert len(plans) >= 2 and len({p.run_dir for p in plans}) == len(plans), path


def test_grid_expands_and_shared_stages_run_once(sweep_yaml):
    sweep = sp.load_sweep(str(sweep_yaml()))
    plans = sp.plan_sweep(sweep, cfg.load_cluster("ci"), "2026-01-01")
    assert [p.name for p in plans] == list(MEMBERS)
    assert len({p.config_hash for p in plans}) == 4
    runs = {stage: [p.name for p in plans if stage in p.graph.stages]
            for stage in ("prepare_data", "eval_teacher", "eval_student_before", "distill")}
    assert runs == {"prepare_data": ["a-hi", "b-hi"], "eval_teacher": ["a-hi"],
                    "eval_student_before": ["a-hi"], "distill": list(MEMBERS)}
    b_lo = plans[3]
    assert b_lo.graph.external == {"prepare_data": plans[2].run_dir,
                                   "eval_student_before": plans[0].run_dir,
                                   "eval_teacher": plans[0].run_dir}
    blend = b_lo.graph.job("distill").spec.data_blend
    assert blend[0][1].startswith(str(plans[2].run_dir / "data"))
    report = b_lo.graph.job("report").spec
    assert report.teacher.startswith(str(plans[0].run_dir)) and report.after.startswith(
        str(b_lo.run_dir))
    assert str(plans[0].run_dir).endswith("unit_sweep/2026-01-01/a-hi")


@pytest.mark.parametrize("changes, message", [
    ({"gird": {}}, "unknown key(s) gird; valid keys: alarm, base, cluster"),
    ({"overrides": ["cluster.partition=x"]}, "go to cluster_overrides"),
    ({"grid": {"lr": {"a b": ["train.lr=1"]}}}, "use letters, digits"),
    ({"grid": {"lr": {"x": ["train.lr=-1"]}}}, "member x: train.lr=-1.0"),
    ({"select": {"iterations": [15]}}, "iteration 15 is not saved"),
    ({"share": ["distill"]}, "distill cannot be shared"),
])
def test_bad_sweeps_name_the_field(sweep_yaml, changes, message):
    with pytest.raises(ConfigError, match=None) as e:
        sweep = sp.load_sweep(str(sweep_yaml(**changes)))
        sp.plan_sweep(sweep, cfg.load_cluster("ci"), "2026-01-01")
    assert message in str(e.value)


def test_dry_run_submits_nothing(sweep_yaml, capsys):
    path = sweep_yaml(select={"iterations": [10, 20], "task": "kd_synth"})
    assert main([str(path), "--dry-run", "--date", "2026-01-01"]) == 0
    out = capsys.readouterr().out
    assert "4 member(s)" in out and out.count("shared from") == 8
    assert "select/iter_0000010" in out and not (path.parent / "sweeps").exists()


def test_history_next_date_and_injected_drop_alarm(sweep_yaml, capsys):
    path = sweep_yaml()
    write_night(path, "2026-01-01", dict.fromkeys(MEMBERS, GOOD))
    assert main(["check", str(path), "--date", "2026-01-01"]) == 0
    hist_file = path.parent / "sweeps" / "unit_sweep" / "history.csv"
    hist = pd.read_csv(hist_file)
    assert set(hist["member"]) == set(MEMBERS) and list(hist["date"].unique()) == ["2026-01-01"]
    # checking the same night again adds nothing (rows are keyed)
    assert main(["check", str(path), "--date", "2026-01-01"]) == 0
    assert len(pd.read_csv(hist_file)) == len(hist)
    # the next night adds a second point per member; a small move is within noise
    write_night(path, "2026-01-02", dict.fromkeys(MEMBERS, {"mmlu": 0.41, "kd_synth": 0.59}))
    assert main(["check", str(path), "--date", "2026-01-02"]) == 0
    hist = pd.read_csv(hist_file)
    assert hist.groupby("member")["date"].nunique().to_dict() == dict.fromkeys(MEMBERS, 2)
    trend = path.parent / "sweeps" / "unit_sweep" / "2026-01-02" / "trend"
    assert "No regression." in (trend / "trend.md").read_text()
    assert (trend / "trend.png").stat().st_size > 0
    # an injected drop: b-lo loses 20 points of kd_synth (threshold 2 x 2.83 = 5.66 points)
    night3 = {**dict.fromkeys(MEMBERS, GOOD), "b-lo": {"mmlu": 0.40, "kd_synth": 0.39}}
    write_night(path, "2026-01-03", night3)
    capsys.readouterr()
    res = subprocess.run([sys.executable, "launch/sweep.py", "check", str(path), "--date",
                          "2026-01-03"], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "ALARM: 1 regression(s)" in res.stdout
    assert "- b-lo kd_synth: 59.00 (2026-01-02) → 39.00 (-20.00 points, threshold 5.66)" in (
        res.stdout)


def test_missing_member_exit_code(sweep_yaml):
    path = sweep_yaml()
    write_night(path, "2026-01-01", dict.fromkeys(MEMBERS, GOOD))
    (path.parent / "sweeps/unit_sweep/2026-01-01/a-lo/eval/student_after.json").unlink()
    (path.parent / "sweeps/unit_sweep/2026-01-01/a-lo/stages/eval_student_after.done").unlink()
    assert main(["check", str(path), "--date", "2026-01-01"]) == 3


def test_checkpoint_selection_picks_the_better_iteration(sweep_yaml):
    path = sweep_yaml(select={"iterations": [10, 20], "task": "kd_synth"})
    # constructed: the last iteration (20) is worse on kd_synth than iteration 10
    scores = dict.fromkeys(MEMBERS, {"mmlu": 0.40, "kd_synth": 0.50})
    cands = dict.fromkeys(MEMBERS, {10: {"mmlu": 0.39, "kd_synth": 0.70}})
    cands["a-hi"] = {10: {"mmlu": 0.41, "kd_synth": 0.45}}  # here the last one is best
    write_night(path, "2026-01-01", scores, cands)
    assert main(["check", str(path), "--date", "2026-01-01"]) == 0
    hist = pd.read_csv(path.parent / "sweeps" / "unit_sweep" / "history.csv")
    chosen = hist[hist["task"] == "kd_synth"].set_index("member")
    assert chosen["iteration"].to_dict() == {"a-hi": 20, "a-lo": 10, "b-hi": 10, "b-lo": 10}
    assert chosen.loc["a-lo", "acc"] == 0.70 and chosen.loc["a-lo", "candidates"] == "10:70.00;20:50.00"
    sel = path.parent / "sweeps/unit_sweep/2026-01-01/a-lo/select/selection.md"
    assert "| 10 | 70.00 | **selected** |" in sel.read_text()


def test_select_best_ties_take_the_later_iteration(tmp_path):
    from kd import results
    from tests.sweep.conftest import record

    files = {}
    for it in (10, 20):
        files[it] = results.write_json_atomic(tmp_path / f"{it}.json", record({"mmlu": 0.5}))
    assert history.select_best(files, "mmlu") == (20, {10: 0.5, 20: 0.5})
    with pytest.raises(ValueError, match="set select.task"):
        history.select_best(files, "nope")


def test_launch_side_stays_light():
    code = "import sys, launch.sweep, launch.history, kd.trend; " \
           "print([m for m in ('torch', 'transformers', 'lm_eval', 'megatron') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


def test_dry_run_runs_each_members_preflight(sweep_yaml, tmp_path, capsys):
    """The dry run predicts the real launch: a member the pre-flight refuses is named with its
    error, the exit code is 2, and nothing is created."""
    path = sweep_yaml(grid={"data": {"a": [], "gone": [
        f"data.sources=[{{name: g, jsonl: {tmp_path / 'gone.jsonl'}}}]"]}})
    assert main([str(path), "--dry-run", "--date", "2026-01-01"]) == 2
    out, err = capsys.readouterr()
    assert "== member gone" in out and out.count("pre-flight: ok") == 1
    assert f"error: member gone: data.sources[0].jsonl='{tmp_path / 'gone.jsonl'}': no such file" in err
    assert "1 of 2 member(s) would be refused (gone)" in out
    assert main([str(path), "--date", "2026-01-01"]) == 2  # the real launch refuses the same
    assert "member gone: data.sources[0].jsonl" in capsys.readouterr().err
    assert not (path.parent / "sweeps").exists()
