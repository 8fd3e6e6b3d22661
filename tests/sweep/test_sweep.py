"""Sweeps without SLURM: config validation, member expansion, stage sharing in the plan,
history, trend report + regression alarm (exit code), checkpoint selection (the experiment's
``select:``, set for every member by the sweep's)."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from kd.sections import Select
from launch import config as cfg
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
    ({"overrides": ["cluster.partition=x"]}, "overrides[0]='cluster.partition=x': cluster "
                                             "settings go to cluster_overrides"),
    ({"overrides": ["train.lr"]}, "overrides[0]='train.lr': override 'train.lr' is not "
                                  "key=value"),
    ({"grid": {"lr": {"a b": ["train.lr=1"]}}}, "grid.lr value name='a b': use letters"),
    ({"grid": {"lr": {}}}, "grid.lr={}: is empty"),
    ({"grid": {"lr": {"x": ["train.lr=-1"]}}}, "member x: train.lr=-1.0"),
    ({"members": [{"name": "../x"}], "grid": {}}, "members[0].name='../x': use letters"),
    ({"grid": {}}, "the sweep has no members"),
    ({"share": ["distill"]}, "share[0]='distill': distill cannot be shared"),
    ({"alarm": {"z": 0}}, "alarm.z=0.0: must be a finite number > 0"),
    ({"alarm": {"min_drop_points": -1}}, "alarm.min_drop_points=-1.0: must be >= 0"),
    # the sweep's select: is the experiment's select: section, checked by its own fields ...
    ({"select": {"iterations": [0]}}, "select.iterations[0]=0: must be > 0"),
    ({"select": {"limit": -1}}, "select.limit=-1: must be > 0"),
    ({"select": {"bogus": 1}}, "unknown key(s) select.bogus; valid keys of select: by,"),
    ({"select": {"iterations": [10], "task": "kd_synth"}},
     "select.task='kd_synth': a sweep's select: is the experiment's select: section"),
    # ... and refused for each member as that member's experiment refuses it
    ({"select": {"iterations": [15]}}, "member a-hi: select.iterations=[15]: 15 is not a save "
                                       "point"),
    ({"select": {"iterations": [10], "by": "gsm8k"}},
     "member a-hi: select.by=gsm8k: not an MMLU group and not in eval.tasks"),
    # what only the sweep gets wrong
    ({"grid": {"lr": {"hi": ["train.lr=1e-3"], "lo": ["train.lr=1e-4"]},
               "lr2": {"x": ["train.lr=5e-4"], "y": ["train.seed=7"]}}},
     "grid.lr and grid.lr2 both set train.lr: the later axis wins"),
    ({"grid": {"lr": {"hi": ["train.lr=1e-3"]}, "all": {"t": ["train={lr: 1e-4, tp: 1}"]}}},
     "grid.all and grid.lr both set train: the later axis wins"),  # (YAML written sorted)
    ({"grid": {"lr": {"hi": ["train.lr=1e-3"], "same": ["train.lr=0.001"]}}},
     "members hi and same have the same config"),
    ({"alarm": {"tasks": ["mmlu", "gsm8k"]}}, "alarm.tasks=['mmlu', 'gsm8k']: no member "
                                              "evaluates gsm8k"),
])
def test_bad_sweeps_name_the_field(sweep_yaml, changes, message):
    with pytest.raises(ConfigError, match=None) as e:
        sweep = sp.load_sweep(str(sweep_yaml(**changes)))
        sp.plan_sweep(sweep, cfg.load_cluster("ci"), "2026-01-01")
    assert message in str(e.value)


def test_dry_run_submits_nothing(sweep_yaml, capsys):
    path = sweep_yaml(select={"iterations": [10, 20], "by": "kd_synth"})
    assert main([str(path), "--dry-run", "--date", "2026-01-01"]) == 0
    out = capsys.readouterr().out
    assert "4 member(s)" in out and out.count("shared from") == 8
    assert "select.by=kd_synth select.iterations=[10, 20]" in out  # each member's overrides
    graph_lines = [ln.split() for ln in out.splitlines() if "kd.selection" in ln]
    assert [w[0] for w in graph_lines].count("candidate_10") == 4, out  # every member's graph
    assert [w[0] for w in graph_lines].count("select") == 4, out
    assert not (path.parent / "sweeps").exists()


def test_sweep_select_is_each_members_experiment_select(sweep_yaml):
    """One selection system: the sweep's select: becomes select.* overrides of every member,
    whose graph then has the experiment's candidate_<N> + select jobs (and no other)."""
    path = sweep_yaml(select={"iterations": [10], "by": "kd_synth", "limit": 5},
                      grid={"lr": {"hi": ["train.lr=1e-3"], "lo": ["train.lr=1e-4",
                                                                   "select.limit=2"]}})
    sweep = sp.load_sweep(str(path))
    plans = sp.plan_sweep(sweep, cfg.load_cluster("ci"), "2026-01-01")
    for p, limit in zip(plans, (5, 2), strict=True):  # a member's own override comes later
        assert p.experiment.select == Select(iterations=(10,), by="kd_synth", limit=limit)
        assert p.graph.stages[:5] == ("prepare_data", "distill", "candidate_10", "candidate_20",
                                      "select") or p.graph.stages[:4] == (
            "distill", "candidate_10", "candidate_20", "select")
        assert p.graph.job("candidate_10").spec.eval.eval.limit == limit
        assert p.graph.job("distill").spec.keep_iterations == (10, 20)  # kept from keep_last
    # without a select: the base experiment's own selection (here none) stands
    plain = sp.plan_sweep(sp.load_sweep(str(sweep_yaml())), cfg.load_cluster("ci"), "2026-01-01")
    assert all("select" not in p.graph.stages and not p.experiment.select.enabled for p in plain)


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


def test_checkpoint_selection_picks_the_better_iteration(sweep_yaml, capsys):
    """Each member's own select stage chose (quick evals of 10 and 20); the history records the
    member's full eval of the chosen iteration, with the candidates' quick scores beside it."""
    path = sweep_yaml(select={"iterations": [10, 20], "by": "kd_synth"})
    # constructed: the last iteration (20) is worse on kd_synth than iteration 10
    quick = dict.fromkeys(MEMBERS, {10: {"mmlu": 0.39, "kd_synth": 0.70},
                                    20: {"mmlu": 0.40, "kd_synth": 0.50}})
    quick["a-hi"] = {10: {"mmlu": 0.41, "kd_synth": 0.45}, 20: {"mmlu": 0.4, "kd_synth": 0.5}}
    full = dict.fromkeys(MEMBERS, {"mmlu": 0.40, "kd_synth": 0.66})  # of the chosen iteration
    write_night(path, "2026-01-01", full, quick)
    assert main(["check", str(path), "--date", "2026-01-01"]) == 0
    assert "a-lo: iteration 10 selected" in capsys.readouterr().out
    hist = pd.read_csv(path.parent / "sweeps" / "unit_sweep" / "history.csv")
    chosen = hist[hist["task"] == "kd_synth"].set_index("member")
    assert chosen["iteration"].to_dict() == {"a-hi": 20, "a-lo": 10, "b-hi": 10, "b-lo": 10}
    assert chosen.loc["a-lo", "acc"] == 0.66  # the full eval, never a quick one
    assert chosen.loc["a-lo", "candidates"] == "10:70.00;20:50.00"
    assert chosen.loc["a-hi", "candidates"] == "10:45.00;20:50.00"
    night = path.parent / "sweeps/unit_sweep/2026-01-01"
    assert "| 10 | 70.00 | 2.00 | - | **chosen** |" in (night / "a-lo/select/selection.md").read_text()
    # one selection.json writer: the select stage's (kd/selection.py schema)
    for m in MEMBERS:
        assert json.loads((night / m / "select/selection.json").read_text())["schema"] == \
            "kdlaunch.selection/v1"


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
