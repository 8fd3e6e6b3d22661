"""Checkpoint selection (kd/selection.py) on constructed candidates: no model, no job.

The candidates are what ``candidate_<N>`` jobs leave: a finished export directory (its marker
file) and a quick-eval results file. Scores are chosen so the answers can be checked by hand.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from kd import results
from kd import selection as sel
from kd.paths import RunPaths, candidate_stage, is_stage
from kd.sections import Select
from kd.specs import SelectSpec
from launch import history


def record(acc: float, stderr: float | None = 0.02, n: int = 400) -> dict:
    groups = {k: {"acc": 0.25, "acc_stderr": stderr, "n": n} for k in results.GROUPS}
    groups["kd_synth"] = {"acc": acc, "acc_stderr": stderr, "n": n}
    return {"schema": results.SCHEMA, "source": "kdlaunch", "role": "student_after",
            "model": "x", "model_kind": "hf", "settings": {"tasks": ["mmlu", "kd_synth"]},
            "groups": groups, "task_versions": {}, "versions": {}, "timestamp": None,
            "eval_seconds": 1.0, "fingerprint": None, "cache": None}


def make_candidates(run: Path, scores: dict[int, float], stderr: float | None = 0.02):
    paths = RunPaths(run)
    out = []
    for it, acc in scores.items():
        cdir = paths.candidate_dir(it)
        export, result = sel.candidate_paths(cdir)
        export.mkdir(parents=True)
        (export / "model.safetensors").write_text(f"weights of {it}")
        (export / sel.EXPORT_MARKER).write_text(json.dumps({"iteration": it}))
        results.write_json_atomic(result, record(acc, stderr))
        out.append((it, str(cdir)))
    return tuple(out)


def spec(run: Path, cands, tensorboard: str | None = None, **select) -> SelectSpec:
    paths = RunPaths(run)
    select.setdefault("by", "kd_synth")
    return SelectSpec(candidates=cands, out_dir=str(paths.hf_export),
                      selection_dir=str(paths.select), tensorboard=tensorboard,
                      select=Select(every_save=True, **select),
                      done_marker=str(paths.stage_done("select")))


def test_pick_best_ties_and_direction():
    assert sel.pick_best({10: 0.5, 20: 0.7, 30: 0.7}) == 30  # tie: the later one
    assert sel.pick_best({10: 3.0, 20: 2.5, 30: 2.9}, higher=False) == 20
    with pytest.raises(ValueError, match="no scored checkpoint"):
        sel.pick_best({})


def test_stage_names():
    assert candidate_stage(50) == "candidate_50" and is_stage("candidate_50")
    assert is_stage("select") and is_stage("export_hf")
    assert not is_stage("candidate_") and not is_stage("candidate_x") and not is_stage("bogus")


def test_select_materialises_the_best_and_flags_overfitting(tmp_path):
    run = tmp_path / "run"
    # best at 20 (0.60), last (30) 0.45: 15 points worse; noise 2 * hypot(2, 2) = 5.66 points
    cands = make_candidates(run, {10: 0.50, 20: 0.60, 30: 0.45})
    s = spec(run, cands, keep_candidates=True)
    selection = sel.run(s)
    assert selection["selected"] == 20
    o = selection["overfitting"]
    assert o["flag"] and o["noise_assessed"] and o["last"] == 30
    assert math.isclose(o["worse_by"], 0.15) and math.isclose(o["threshold"], 2 * math.hypot(.02, .02))
    hf = Path(s.out_dir)
    assert (hf / "model.safetensors").read_text() == "weights of 20"
    assert json.loads((hf / sel.EXPORT_MARKER).read_text())["iteration"] == 20
    for _it, cdir in cands:  # kept: every candidate's export still there
        assert (sel.candidate_paths(cdir)[0] / "model.safetensors").is_file()
    on_disk = sel.load(RunPaths(run).selection)
    assert on_disk["selected"] == 20 and [r["iteration"] for r in on_disk["candidates"]] == [10, 20, 30]
    md = (RunPaths(run).select / "selection.md").read_text()
    assert "| 20 | 60.00 | 2.00 | - | **chosen** |" in md
    assert "Chosen iteration: **20**" in md
    assert "**Overfitting: the last iteration (30) is worse than the best (20) by 15.00 points**" in md
    assert (RunPaths(run).select / "selection.png").stat().st_size > 1000
    assert json.loads(Path(s.done_marker).read_text())["selected"] == 20
    # a rerun keeps the decision and the export
    assert sel.run(s)["selected"] == 20


def test_within_noise_and_deleting_losers(tmp_path):
    run = tmp_path / "run"
    cands = make_candidates(run, {10: 0.50, 20: 0.53, 30: 0.51})  # 2 points < 5.66 noise
    s = spec(run, cands, keep_candidates=False)
    selection = sel.run(s)
    assert selection["selected"] == 20 and not selection["overfitting"]["flag"]
    assert "Within noise: the last iteration (30) is 2.00 points below the best (20)" in \
        sel.markdown_section(selection)
    assert (Path(s.out_dir) / "model.safetensors").read_text() == "weights of 20"
    exports = {it: sel.candidate_paths(d)[0] for it, d in cands}
    assert not any(e.exists() for e in exports.values())  # winner renamed, losers deleted
    for _it, d in cands:  # their scores stay
        assert sel.candidate_paths(d)[1].is_file()
    assert sel.run(s)["selected"] == 20  # rerun: the export in place is the selected one


def test_last_is_best_and_missing_stderr(tmp_path):
    run = tmp_path / "run"
    cands = make_candidates(run, {10: 0.50, 20: 0.60, 30: 0.61}, stderr=None)
    selection = sel.decide(spec(run, cands))
    assert selection["selected"] == 30
    assert "is the best: no sign of overfitting" in sel.overfitting_line(selection)
    rows = [{"iteration": 10, "score": 0.6, "stderr": None}, {"iteration": 20, "score": 0.59,
                                                               "stderr": None}]
    o = sel.overfitting(rows, 10, higher=True)
    assert o["flag"] and not o["noise_assessed"]


def test_never_overwrites_another_export(tmp_path):
    run = tmp_path / "run"
    cands = make_candidates(run, {10: 0.50, 20: 0.60})
    s = spec(run, cands)
    hf = Path(s.out_dir)
    hf.mkdir(parents=True)
    (hf / sel.EXPORT_MARKER).write_text(json.dumps({"iteration": 10}))
    with pytest.raises(ValueError, match="already holds iteration 10, not the selected iteration 20"):
        sel.run(s)


def test_bad_task_names_the_field(tmp_path):
    run = tmp_path / "run"
    cands = make_candidates(run, {10: 0.5})
    with pytest.raises(ValueError, match="set select.by to one of those"):
        sel.decide(spec(run, cands, by="gsm8k"))
    with pytest.raises(ValueError, match="select.by=val_loss: no 'lm loss validation'"):
        sel.decide(spec(run, cands, by="val_loss", tensorboard=str(tmp_path / "nope")))


def test_sweep_history_reads_a_runs_own_selection(tmp_path):
    """A sweep member selects its checkpoint with the experiment's select: (there is no other
    selection): the history records its full eval of the chosen iteration, never the
    candidates' limited quick evals, and the candidates' quick scores beside it."""
    run = tmp_path / "member"
    cands = make_candidates(run, {10: 0.50, 20: 0.90, 30: 0.45})
    manifest = {"experiment": {"train": {"train_iters": 30}, "export": {"iteration": None},
                               "select": {"iterations": [], "every_save": True}}}
    assert history.member_result(run, manifest) is None  # nothing evaluated yet
    sel.run(spec(run, cands))
    assert history.member_result(run, manifest) is None  # eval_student_after has not run yet
    after = RunPaths(run).eval_result("student_after")
    results.write_json_atomic(after, record(0.70))
    got = history.member_result(run, manifest)
    assert (got.iteration, got.results_file, got.candidates) == (20, after,
                                                                 "10:50.00;20:90.00;30:45.00")
    assert got.record["groups"]["kd_synth"]["acc"] == 0.70
    # a run without select: its export.iteration, else its last iteration; no selection read
    plain = {"experiment": {"train": {"train_iters": 30}, "export": {"iteration": None},
                            "select": {"iterations": [], "every_save": False}}}
    assert history.member_result(run, plain).iteration == 30
    plain["experiment"]["export"]["iteration"] = 10
    assert history.member_result(run, plain).iteration == 10


def test_load_checks_what_decide_writes(tmp_path):
    """``selection.load`` accepts every record ``decide`` can write (by a task, with and without
    stderrs; by validation loss: lower is better, no stderr, noise not assessed) and refuses a
    hand-edited decision that its own scores contradict."""
    run = tmp_path / "run"
    cands = make_candidates(run, {10: 0.50, 20: 0.60, 30: 0.45}, stderr=None)
    by_task = sel.decide(spec(run, cands))
    rows = [{"iteration": it, "export": f"/x/{it}", "results": None, "val_loss": loss,
             "score": loss, "stderr": None, "n": None} for it, loss in ((10, 2.5), (20, 2.1))]
    by_loss = {"schema": sel.SCHEMA, "by": "val_loss", "label": "validation loss",
               "higher_is_better": False, "selected": 20, "candidates": rows,
               "overfitting": sel.overfitting(rows, 20, higher=False), "export": "/x/hf",
               "keep_candidates": True}
    for i, record in enumerate((by_task, by_loss)):
        path = tmp_path / f"s{i}.json"
        results.write_json_atomic(path, record)
        assert sel.load(path) == json.loads(path.read_text())
    by_loss["selected"] = by_loss["overfitting"]["best"] = 10  # 2.5 is not the lowest loss
    results.write_json_atomic(tmp_path / "bad.json", by_loss)
    with pytest.raises(sel.SelectionFileError, match=r"bad.json: selected=10: inconsistent "
                                                     r"with the candidates' scores \(the best "
                                                     r"by val_loss is iteration 20\)"):
        sel.load(tmp_path / "bad.json")
