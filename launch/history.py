"""The sweep history store and checkpoint selection (login node: pandas + kd.results only).

``<root>/<sweep>/history.csv`` holds one row per (date, sweep, member, config_hash, task):
the member's score on one group (``mmlu``, ``mmlu_stem``, ..., extra tasks such as
``kd_synth``) that night, from the selected checkpoint. Writing a night again replaces its
rows (same key), so collecting twice is harmless. Plain CSV: ``pandas.read_csv`` reads it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from kd import results
from kd.paths import RunPaths
from kd.selection import SCHEMA as SELECTION_SCHEMA
from kd.selection import pick_best

KEY = ("date", "sweep", "member", "config_hash", "task")
COLUMNS = (*KEY, "label", "acc", "acc_stderr", "n", "iteration", "candidates", "results_file",
           "recorded")


def history_file(sweep_root: Path) -> Path:
    return Path(sweep_root) / "history.csv"


def read(path: Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        return pd.DataFrame(columns=list(COLUMNS))
    frame = pd.read_csv(path, dtype={"date": str, "member": str, "config_hash": str, "task": str})
    missing = sorted(set(KEY) - set(frame.columns))
    if missing:
        raise ValueError(f"{path} lacks column(s) {', '.join(missing)}: it is not a kdlaunch "
                         f"sweep history; move it away and collect again")
    return frame


def upsert(path: Path, rows: list[dict]) -> pd.DataFrame:
    """Add ``rows`` to the history, replacing rows with the same key; written atomically."""
    old = read(path)
    new = pd.DataFrame(rows, columns=list(COLUMNS))
    if not old.empty and not new.empty:
        keys = set(new[list(KEY)].astype(str).itertuples(index=False, name=None))
        keep = [tuple(r) not in keys for r in old[list(KEY)].astype(str).itertuples(index=False)]
        old = old[keep]
    frames = [f for f in (old, new) if not f.empty]
    out = pd.concat(frames, ignore_index=True) if frames else new
    out = out.sort_values(["date", "member", "task"], kind="stable", ignore_index=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    out.to_csv(tmp, index=False)
    os.replace(tmp, path)
    return out


def rows_from_record(record: dict, *, date: str, sweep: str, member: str, config_hash: str,
                     iteration: int | None, candidates: str, results_file: str,
                     recorded: str) -> list[dict]:
    rows = []
    for key, group in record["groups"].items():
        rows.append({"date": date, "sweep": sweep, "member": member, "config_hash": config_hash,
                     "task": key, "label": results.label(key), "acc": group["acc"],
                     "acc_stderr": group.get("acc_stderr"), "n": group.get("n"),
                     "iteration": iteration, "candidates": candidates,
                     "results_file": results_file, "recorded": recorded})
    return rows


# ---------------------------------------------------------------- checkpoint selection
def run_selection(run_dir: Path) -> dict | None:
    """The run's own checkpoint selection (``select:`` of its experiment, kd/selection.py), if it
    made one; sweep-level selection files (``write_selection``) are not that."""
    path = RunPaths(Path(run_dir)).selection
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("schema") == SELECTION_SCHEMA else None


def exported_iteration(run_dir: Path, final_iteration: int) -> int:
    """The iteration in the member's ``export/hf``: the one its own selection chose, else
    ``final_iteration``."""
    own = run_selection(run_dir)
    return own["selected"] if own else final_iteration


def candidate_results(run_dir: Path, final_iteration: int) -> dict[int, Path]:
    """{iteration: student-after results file} of a member: its own export + select/iter_*.

    A run that selected its checkpoint itself has one result: its full eval of the chosen
    iteration (its candidates' quick evals are limited, not comparable)."""
    run_dir = Path(run_dir)
    own = run_selection(run_dir)
    if own:
        f = RunPaths(run_dir).eval_result("student_after")
        return {own["selected"]: f} if f.is_file() else {}
    out = {final_iteration: RunPaths(run_dir).eval_result("student_after")}
    for sub in sorted((run_dir / "select").glob("iter_*")):
        out[int(sub.name.removeprefix("iter_"))] = RunPaths(sub).eval_result("student_after")
    return {it: f for it, f in sorted(out.items()) if f.is_file()}


def select_best(files: dict[int, Path], task: str) -> tuple[int, dict[int, float]]:
    """The iteration with the highest ``task`` accuracy (ties: the later one), and all scores."""
    if not files:
        raise ValueError("no evaluated checkpoint to select from: the member's evals have not "
                         "finished")
    scores = {}
    for it, path in files.items():
        groups = results.load(path)["groups"]
        if task not in groups:
            raise ValueError(f"{path} has no {task!r} score (it has {', '.join(groups)}): set "
                             f"select.task to one of those")
        scores[it] = groups[task]["acc"]
    return pick_best(scores), scores


def write_selection(run_dir: Path, task: str, best: int, scores: dict[int, float]) -> Path:
    out = Path(run_dir) / "select" / "selection.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"# Checkpoint selection by {results.label(task)}", "",
             "| Iteration | Score | |", "|---:|---:|---|"]
    lines += [f"| {it} | {100 * s:.2f} | {'**selected**' if it == best else ''} |"
              for it, s in scores.items()]
    out.write_text("\n".join(lines) + "\n")
    (out.parent / "selection.json").write_text(json.dumps(
        {"task": task, "selected": best, "scores": {str(k): v for k, v in scores.items()}},
        indent=2) + "\n")
    return out
