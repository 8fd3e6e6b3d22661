"""Checkpoint selection: score candidate iterations, pick the best, make it the run's export.

Two stages (each its own job, ``afterok`` edges in ``launch/plan.py``):

* ``candidate_<N>`` (``run_candidate``): export iteration N to ``RUN/select/iter_NNNNNNN/export/hf``
  and, unless selection goes by validation loss only, score it on a quick held-out eval
  (a ``limit``-ed MMLU, plus the task selection goes by) into ``.../eval/student_after.json``.
  The layout is a sub-run's (``RunPaths(RUN/select/iter_NNNNNNN)``).
* ``select`` (``run``): read every candidate's score (a results file's group accuracy, or the
  student's validation loss that distill logged to TensorBoard at that iteration), pick the best
  (``pick_best``), write ``RUN/select/selection.{json,md,png}`` and
  materialise the winner as ``RUN/export/hf`` (hard links when candidates are kept, a rename
  otherwise; the losers' exports are then deleted, their scores kept). ``eval_student_after``
  runs on that export with the full eval settings.

Overfitting: the last iteration is flagged when it is worse than the best by more than
``noise_z`` combined stderrs (``sqrt(se_best**2 + se_last**2)``, the independent-samples test
the report uses; both ask the same questions, so it is conservative). Validation loss has no
stderr: any increase is reported, marked "noise not assessed".

This is the one selection system: a sweep's ``select:`` only sets the experiment's ``select:``
of its members (``launch/sweep_plan.py``), and the sweep history records each member's full eval
of the iteration its ``selection.json`` names (``launch/history.py``). ``load`` is the one reader
of ``selection.json`` (report, sweep check, a rerun of ``select``): it refuses a file with a
missing, mistyped or inconsistent key, naming the file and the key.

Stdlib only at import (``launch/`` and the report read it); matplotlib, TensorBoard and the
export/eval stages are imported inside functions.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from pathlib import Path

from kd import results
from kd.sections import VAL_LOSS
from kd.specs import CandidateSpec, SelectSpec

log = logging.getLogger("kdlaunch.select")

SCHEMA = "kdlaunch.selection/v1"
VAL_LOSS_TAG = "lm loss validation"  # Megatron's TensorBoard scalar: the student's CE, held out
EXPORT_MARKER = ".kdlaunch-export.json"  # kd.export.FINISHED (kd.export imports torch lazily)


# ---------------------------------------------------------------- pure selection logic
def higher_is_better(by: str) -> bool:
    return by != VAL_LOSS


def pick_best(scores: dict[int, float], higher: bool = True) -> int:
    """The best iteration; ties go to the later one (more training for the same score)."""
    if not scores:
        raise ValueError("no scored checkpoint to select from")
    sign = 1 if higher else -1
    return max(scores, key=lambda it: (sign * scores[it], it))


def overfitting(rows: list[dict], best: int, higher: bool, noise_z: float = 2.0) -> dict:
    """Is the last candidate worse than the best by more than the noise?

    ``rows``: one dict per iteration with ``score`` and ``stderr`` (None when unknown)."""
    by_it = {r["iteration"]: r for r in rows}
    last = max(by_it)
    b, la = by_it[best], by_it[last]
    worse = (b["score"] - la["score"]) if higher else (la["score"] - b["score"])
    out = {"last": last, "best": best, "worse_by": worse, "noise_z": noise_z,
           "threshold": None, "flag": False, "noise_assessed": False}
    if last == best:
        return out
    if b.get("stderr") is not None and la.get("stderr") is not None:
        threshold = noise_z * math.hypot(b["stderr"], la["stderr"])
        out.update(threshold=threshold, flag=worse > threshold, noise_assessed=True)
    else:
        out.update(flag=worse > 0)
    return out


def candidate_paths(run_dir: str | Path) -> tuple[Path, Path]:
    """(export dir, quick-eval results file) of a candidate run directory."""
    from kd.paths import RunPaths

    paths = RunPaths(Path(run_dir))
    return paths.hf_export, paths.eval_result("student_after")


def score_rows(spec: SelectSpec) -> list[dict]:
    """One row per candidate: iteration, score, stderr, n, val_loss, files."""
    losses = val_losses(spec.tensorboard) if spec.tensorboard else {}
    by = spec.select.by
    rows = []
    for it, cand in spec.candidates:
        export, result_file = candidate_paths(cand)
        row = {"iteration": it, "export": str(export), "results": None,
               "val_loss": losses.get(it), "score": None, "stderr": None, "n": None}
        if by == VAL_LOSS:
            if row["val_loss"] is None:
                raise ValueError(
                    f"select.by=val_loss: no '{VAL_LOSS_TAG}' at iteration {it} in "
                    f"{spec.tensorboard}; make train.eval_interval divide every candidate "
                    f"iteration, or select by a task")
            row["score"] = row["val_loss"]
        else:
            groups = results.load(result_file)["groups"]
            if by not in groups:
                raise ValueError(f"{result_file} has no {by!r} score (it has "
                                 f"{', '.join(groups)}): set select.by to one of those")
            g = groups[by]
            row.update(results=str(result_file), score=g["acc"], stderr=g.get("acc_stderr"),
                       n=g.get("n"))
        rows.append(row)
    return rows


def val_losses(tensorboard: str | Path | None) -> dict[int, float]:
    """{iteration: student validation loss} from distill's TensorBoard events ({} if none)."""
    if not tensorboard or not Path(tensorboard).is_dir():
        return {}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tensorboard), size_guidance={"scalars": 0})
    acc.Reload()
    if VAL_LOSS_TAG not in acc.Tags().get("scalars", []):
        return {}
    return {int(e.step): float(e.value) for e in acc.Scalars(VAL_LOSS_TAG)}


def decide(spec: SelectSpec) -> dict:
    """Score the candidates and pick one: the selection record (written as selection.json)."""
    rows = score_rows(spec)
    by = spec.select.by
    higher = higher_is_better(by)
    best = pick_best({r["iteration"]: r["score"] for r in rows}, higher)
    return {"schema": SCHEMA, "by": by, "label": label(by), "higher_is_better": higher,
            "selected": best, "candidates": rows,
            "overfitting": overfitting(rows, best, higher, spec.select.noise_z),
            "export": spec.out_dir, "keep_candidates": spec.select.keep_candidates}


def label(by: str) -> str:
    return "validation loss" if by == VAL_LOSS else results.label(by)


# ---------------------------------------------------------------- stages
def run_candidate(spec: CandidateSpec) -> dict:
    """Export one iteration, then score it on the quick eval (if any)."""
    from kd import evaluate, export

    export.run(spec.export)
    record = evaluate.run(spec.eval) if spec.eval is not None else None
    if spec.done_marker:
        results.write_json_atomic(spec.done_marker, {"stage": f"candidate_{spec.iteration}",
                                                     "export": spec.export.out_dir})
    return {"iteration": spec.iteration, "groups": record and record["groups"]}


def run(spec: SelectSpec | CandidateSpec) -> dict:
    """The ``select`` stage (a ``CandidateSpec`` runs ``run_candidate``): decide, write the
    selection files, put the winner in place as ``spec.out_dir``."""
    if isinstance(spec, CandidateSpec):
        return run_candidate(spec)
    sel_dir = Path(spec.selection_dir)
    sel_file = sel_dir / "selection.json"
    if sel_file.is_file():  # a rerun: the decision stands (the losers may be gone already)
        selection = load(sel_file)
        log.info("select: %s already chose iteration %d", sel_file, selection["selected"])
    else:
        selection = decide(spec)
        results.write_json_atomic(sel_file, selection)
    write_report(selection, sel_dir)
    winner = next(r for r in selection["candidates"] if r["iteration"] == selection["selected"])
    materialise(Path(winner["export"]), Path(spec.out_dir), selection["selected"],
                keep=spec.select.keep_candidates)
    if not spec.select.keep_candidates:
        for r in selection["candidates"]:
            if r["iteration"] != selection["selected"] and Path(r["export"]).is_dir():
                shutil.rmtree(r["export"])
                log.info("select: deleted the export of iteration %d (select.keep_candidates "
                         "is false)", r["iteration"])
    log.info("select: iteration %d by %s -> %s", selection["selected"], selection["label"],
             spec.out_dir)
    if spec.done_marker:
        results.write_json_atomic(spec.done_marker, {"stage": "select",
                                                     "selected": selection["selected"],
                                                     "export": spec.out_dir})
    return selection


def _export_iteration(hf_dir: Path) -> int | None:
    marker = hf_dir / EXPORT_MARKER
    return json.loads(marker.read_text())["iteration"] if marker.is_file() else None


def materialise(source: Path, out: Path, iteration: int, keep: bool) -> None:
    """Make ``out`` the export of ``iteration``: hard links (a copy across filesystems) when the
    candidate is kept, a rename otherwise. Never overwrites another export."""
    have = _export_iteration(out)
    if have == iteration:
        return
    if have is not None or out.exists():
        what = f"iteration {have}" if have is not None else "files"
        raise ValueError(f"{out} already holds {what}, "
                         f"not the selected iteration {iteration}: move it away and run the "
                         f"select stage again")
    if _export_iteration(source) != iteration:
        raise ValueError(f"{source} is not a finished export of iteration {iteration}: rerun "
                         f"candidate_{iteration}")
    out.parent.mkdir(parents=True, exist_ok=True)
    if not keep:
        os.replace(source, out)
        return
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp, copy_function=_link_or_copy)
    os.replace(tmp, out)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


# ---------------------------------------------------------------- reading selection.json
class SelectionFileError(ValueError):
    """A ``selection.json`` that cannot be trusted; the message names the file, the key, the fix."""


_REDO = ("move it away and run the select stage again (it keeps an existing selection.json, so "
         "a damaged one must go first)")


def load(path: str | Path) -> dict:
    """Read and check ``RUN/select/selection.json`` (``decide``'s record). Anything missing,
    mistyped or inconsistent is a :class:`SelectionFileError` naming the file and the key."""
    path = Path(path)
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise SelectionFileError(f"{path}: no such selection file; the select stage writes it "
                                 f"(RUN/select/selection.json) once the candidates are "
                                 f"scored") from None
    except OSError as e:
        raise SelectionFileError(f"cannot read selection file {path}: {e.strerror}") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise SelectionFileError(f"{path}: not a readable selection file (not UTF-8 JSON: "
                                 f"{str(e)[:200]}); {_REDO}") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        got = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise SelectionFileError(f"{path}: schema {got!r}, expected {SCHEMA!r} (kdlaunch's "
                                 f"checkpoint selection record); {_REDO}")
    return validate(data, path)


def _bad(path: Path, key: str, value: object, what: str) -> SelectionFileError:
    shown = repr(value)
    shown = shown if len(shown) <= 80 else shown[:80] + "..."
    return SelectionFileError(f"{path}: {key}={shown}: {what}; {_REDO}")


def _finite(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _need(data: dict, key: str, ok, what: str, path: Path, where: str = "") -> object:
    name = f"{where}{key}"
    if key not in data:
        raise SelectionFileError(f"{path}: {name} is missing; {_REDO}")
    if not ok(data[key]):
        raise _bad(path, name, data[key], what)
    return data[key]


def _optional(ok):
    return lambda v: v is None or ok(v)


def validate(data: dict, path: str | Path) -> dict:
    """The checks of ``load`` on an already parsed record (see there)."""
    path = Path(path)
    by = _need(data, "by", lambda v: isinstance(v, str) and v != "", "expected a task or "
               f"group name, or {VAL_LOSS}", path)
    _need(data, "label", lambda v: isinstance(v, str), "expected a string", path)
    higher = _need(data, "higher_is_better", lambda v: isinstance(v, bool), "expected true or "
                   "false", path)
    if higher != higher_is_better(by):
        raise _bad(path, "higher_is_better", higher, f"inconsistent with by={by!r} "
                   f"({'lower' if higher else 'higher'} is better for it)")
    rows = _need(data, "candidates", lambda v: isinstance(v, list) and len(v) > 0
                 and all(isinstance(r, dict) for r in v), "expected a non-empty list of "
                 "mappings (one per candidate iteration)", path)
    seen: set[int] = set()
    for i, row in enumerate(rows):
        where = f"candidates[{i}]."
        it = _need(row, "iteration", lambda v: _int(v) and v > 0, "expected an iteration > 0",
                   path, where)
        if it in seen:
            raise _bad(path, f"{where}iteration", it, "listed twice")
        seen.add(it)
        if higher:  # a results group's accuracy
            _need(row, "score", lambda v: _finite(v) and 0 <= v <= 1, "expected a fraction in "
                  "[0, 1] (a group's accuracy)", path, where)
        else:
            _need(row, "score", _finite, "expected a finite number", path, where)
        _need(row, "stderr", _optional(lambda v: _finite(v) and v >= 0), "expected null or a "
              "finite number >= 0", path, where)
        for key in ("val_loss",):
            _need(row, key, _optional(_finite), "expected null or a finite number", path, where)
        _need(row, "export", lambda v: isinstance(v, str) and v != "", "expected the path of "
              "the candidate's export", path, where)
        if "n" in row:
            _need(row, "n", _optional(lambda v: _int(v) and v >= 0), "expected null or a "
                  "question count", path, where)
    best = _need(data, "selected", _int, "expected an iteration", path)
    if best not in seen:
        raise _bad(path, "selected", best, f"not one of the candidates' iterations "
                   f"{sorted(seen)}")
    scores = {r["iteration"]: r["score"] for r in rows}
    if pick_best(scores, higher) != best:
        raise _bad(path, "selected", best, f"inconsistent with the candidates' scores (the best "
                   f"by {by} is iteration {pick_best(scores, higher)})")
    o = _need(data, "overfitting", lambda v: isinstance(v, dict), "expected a mapping", path)
    where = "overfitting."
    last = _need(o, "last", _int, "expected an iteration", path, where)
    if last != max(seen):
        raise _bad(path, "overfitting.last", last, f"inconsistent: the last candidate is "
                   f"{max(seen)}")
    if _need(o, "best", _int, "expected an iteration", path, where) != best:
        raise _bad(path, "overfitting.best", o["best"], f"inconsistent with selected={best}")
    _need(o, "worse_by", _finite, "expected a finite number", path, where)
    _need(o, "noise_z", lambda v: _finite(v) and v > 0, "expected a finite number > 0", path,
          where)
    assessed = _need(o, "noise_assessed", lambda v: isinstance(v, bool), "expected true or "
                     "false", path, where)
    _need(o, "threshold", (lambda v: _finite(v) and v >= 0) if assessed else _optional(_finite),
          "expected a finite number >= 0 (null only when noise_assessed is false)", path, where)
    _need(o, "flag", lambda v: isinstance(v, bool), "expected true or false", path, where)
    _need(data, "export", lambda v: isinstance(v, str) and v != "", "expected the path of "
          "RUN/export/hf", path)
    _need(data, "keep_candidates", lambda v: isinstance(v, bool), "expected true or false", path)
    return data


def candidates_text(selection: dict) -> str:
    """The candidates' scores in one cell (the sweep history's ``candidates`` column):
    ``20:45.00;40:50.00`` (points) or, by validation loss, ``20:2.3456;40:2.1234``."""
    loss = selection["by"] == VAL_LOSS
    return ";".join(f"{r['iteration']}:{r['score']:.4f}" if loss else
                    f"{r['iteration']}:{100 * r['score']:.2f}"
                    for r in sorted(selection["candidates"], key=lambda r: r["iteration"]))


# ---------------------------------------------------------------- report section
def _fmt(row: dict, key: str, by: str) -> str:
    v = row.get(key)
    if v is None:
        return "-"
    if key == "val_loss" or (by == VAL_LOSS and key in ("score", "stderr")):
        return f"{v:.4f}"
    return f"{100 * v:.2f}"


def markdown_section(selection: dict, plot_name: str | None = "selection.png") -> str:
    """The report's "Checkpoint selection" section: table, chosen iteration, overfitting flag."""
    by, best = selection["by"], selection["selected"]
    unit = "" if by == VAL_LOSS else " (points)"
    lines = ["## Checkpoint selection", "",
             f"Chosen iteration: **{best}** (by {selection['label']}, "
             f"{'higher' if selection['higher_is_better'] else 'lower'} is better; "
             f"{len(selection['candidates'])} candidates).", "",
             f"| Iteration | {selection['label']}{unit} | ± stderr | Validation loss | |",
             "|---:|---:|---:|---:|---|"]
    for r in selection["candidates"]:
        mark = "**chosen**" if r["iteration"] == best else ""
        lines.append(f"| {r['iteration']} | {_fmt(r, 'score', by)} | {_fmt(r, 'stderr', by)} | "
                     f"{_fmt(r, 'val_loss', by)} | {mark} |")
    lines += ["", overfitting_line(selection)]
    if plot_name:
        lines += ["", f"![checkpoint selection]({plot_name})"]
    return "\n".join(lines) + "\n"


def overfitting_line(selection: dict) -> str:
    o = selection["overfitting"]
    by = selection["by"]
    scale = 1 if by == VAL_LOSS else 100
    unit = "" if by == VAL_LOSS else " points"
    if o["last"] == o["best"]:
        return f"The last iteration ({o['last']}) is the best: no sign of overfitting."
    worse = f"{scale * o['worse_by']:.2f}{unit}"
    if not o["noise_assessed"]:
        what = "**Overfitting?**" if o["flag"] else "Not overfitting:"
        return (f"{what} the last iteration ({o['last']}) is worse than the best ({o['best']}) "
                f"by {worse} (no stderr: noise not assessed).")
    noise = f"{scale * o['threshold']:.2f}{unit} = {o['noise_z']:g} combined stderrs"
    if o["flag"]:
        return (f"**Overfitting: the last iteration ({o['last']}) is worse than the best "
                f"({o['best']}) by {worse}**, more than the noise ({noise}).")
    return (f"Within noise: the last iteration ({o['last']}) is {worse} below the best "
            f"({o['best']}), less than the noise ({noise}).")


def plot(selection: dict, path: str | Path) -> Path:
    """Score (with stderr bars) against iteration; the chosen one marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = selection["candidates"]
    scale = 1 if selection["by"] == VAL_LOSS else 100
    its = [r["iteration"] for r in rows]
    ys = [scale * r["score"] for r in rows]
    err = [scale * (r["stderr"] or 0.0) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.errorbar(its, ys, yerr=err, marker="o", capsize=3)
    best = selection["selected"]
    ax.plot([best], [scale * next(r["score"] for r in rows if r["iteration"] == best)], "r*",
            markersize=14, label=f"chosen: {best}")
    ax.set_xlabel("iteration")
    ax.set_ylabel(selection["label"] + ("" if scale == 1 else " (points)"))
    title = "Checkpoint selection"
    if selection["overfitting"]["flag"]:
        title += " (last iteration worse: overfitting?)"
    ax.set_title(title)
    ax.legend(fontsize="small")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(selection: dict, out_dir: str | Path) -> Path:
    """``selection.md`` + ``selection.png`` under ``out_dir``; returns the Markdown path."""
    out_dir = Path(out_dir)
    plot(selection, out_dir / "selection.png")
    md = out_dir / "selection.md"
    md.write_text(markdown_section(selection))
    return md
