"""Fixtures for sweep tests: a tiny sweep (2 datasets x 2 learning rates) over fake-but-real-
shaped HF dirs, and a helper that writes a night's results as the eval stages would."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kd import results
from kd.paths import RunPaths
from launch import config as cfg
from launch import manifest as mf
from launch import sweep_plan as sp
from launch.schema import to_dict
from launch.sweep import write_night_manifest
from tests.launch.conftest import write_hf_dir

REPO = Path(__file__).resolve().parents[2]
MEMBERS = ("a-hi", "a-lo", "b-hi", "b-lo")


@pytest.fixture
def sweep_yaml(tmp_path: Path):
    """Write a 2x2 sweep (base experiment + sweep file) under tmp_path; returns a maker."""
    student, teacher = write_hf_dir(tmp_path / "student"), write_hf_dir(tmp_path / "teacher")
    for name in ("a", "b"):
        (tmp_path / f"{name}.jsonl").write_text('{"text": "w1 w2 w3"}\n')
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "kd_synth.yaml").write_text("task: kd_synth\n")
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({
        "name": "unit", "student": {"path": str(student)}, "teacher": {"path": str(teacher)},
        "data": {"sources": [{"name": "a", "jsonl": str(tmp_path / "a.jsonl")}]},
        "train": {"tp": 1, "seq_length": 64, "global_batch_size": 2, "train_iters": 20,
                  "lr_warmup_iters": 2, "save_interval": 10},
        "export": {"hf_template": str(teacher)},
        # kd_synth is a local task: pre-flight finds it in include_path (as the demo's)
        "eval": {"tasks": ["mmlu", "kd_synth"], "include_path": str(tasks)}}))

    def make(**changes) -> Path:
        data = {
            "name": "unit_sweep", "base": str(base), "cluster": "ci",
            "root": str(tmp_path / "sweeps"),
            "grid": {"data": {"a": [], "b": [f"data.sources=[{{name: b, jsonl: "
                                             f"{tmp_path / 'b.jsonl'}}}]"]},
                     "lr": {"hi": ["train.lr=1e-3"], "lo": ["train.lr=1e-4"]}},
            "alarm": {"z": 2.0, "tasks": ["mmlu", "kd_synth"]},
            **changes,
        }
        path = tmp_path / "sweep.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    return make


def record(scores: dict[str, float], stderr: float = 0.02, n: int = 500) -> dict:
    """A results file (kd/results.py schema) with the given accuracies per group key."""
    groups = {k: {"acc": scores.get(k, 0.25), "acc_stderr": stderr, "n": n}
              for k in (*results.GROUPS, "kd_synth")}
    return {"schema": results.SCHEMA, "source": "kdlaunch", "role": "student_after",
            "model": "x", "model_kind": "hf", "settings": {"tasks": ["mmlu", "kd_synth"]},
            "groups": groups, "task_versions": {}, "versions": {}, "timestamp": None,
            "eval_seconds": 1.0, "fingerprint": None, "cache": None}


def write_night(sweep_file: Path, date: str, scores: dict[str, dict[str, float]],
                candidate_scores: dict[str, dict[int, dict[str, float]]] | None = None) -> None:
    """What a finished night leaves behind: manifests, student-after results, done markers; a
    member that selects its checkpoint also gets its candidates (an export and a quick-eval
    result each, ``candidate_scores``) and the real ``select`` stage's decision over them
    (``kd.selection.run`` with the member graph's own select spec)."""
    sweep = sp.load_sweep(str(sweep_file))
    cluster = cfg.load_cluster(sweep.cluster)
    plans = sp.plan_sweep(sweep, cluster, date)
    for p in plans:
        paths = RunPaths(p.run_dir)
        paths.root.mkdir(parents=True, exist_ok=True)
        mf.write(paths.manifest, mf.new(paths.root, to_dict(p.experiment), to_dict(cluster)))
        if "select" in p.graph.stages:
            _select(p.graph.job("select").spec, (candidate_scores or {})[p.name])
        _write_result(p.run_dir, scores[p.name])
    write_night_manifest(sweep, cluster, date, plans, {})


def _select(spec, scores: dict[int, dict[str, float]]) -> None:
    import json

    from kd import selection

    for it, cdir in spec.candidates:
        export, result = selection.candidate_paths(cdir)
        if (Path(spec.out_dir) / selection.EXPORT_MARKER).is_file():
            break  # selected before (write_night called again for the same night)
        export.mkdir(parents=True, exist_ok=True)
        (export / selection.EXPORT_MARKER).write_text(json.dumps({"iteration": it}))
        results.write_json_atomic(result, record(scores[it]))
    selection.run(spec)


def _write_result(run_dir: Path, scores: dict[str, float]) -> None:
    paths = RunPaths(run_dir)
    results.write_json_atomic(paths.eval_result("student_after"), record(scores))
    paths.stages.mkdir(parents=True, exist_ok=True)
    paths.stage_done("eval_student_after").write_text("done\n")
