"""The sweep history store (login node: pandas + kd.results only).

``<root>/<sweep>/history.csv`` holds one row per (date, sweep, member, config_hash, task):
the member's score on one group (``mmlu``, ``mmlu_stem``, ..., extra tasks such as
``kd_synth``) that night. Writing a night again replaces its rows (same key), so collecting
twice is harmless. Plain CSV: ``pandas.read_csv`` reads it.

A member's score is its ``eval_student_after`` results file (``member_result``). A member that
selects its checkpoint (``select:`` of its experiment, which a sweep's ``select:`` sets) was
evaluated on the iteration its ``RUN/select/selection.json`` names: that iteration and the
candidates' quick-eval scores go into the row. There is no other selection here
(``kd/selection.py`` is the one).

``read`` checks the file before anything uses it (columns, one field per column on every line,
dates, scores, unique keys) and refuses a damaged one with :class:`HistoryError`, naming the file,
the line and the column.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from kd import results, selection
from kd.paths import RunPaths
from launch import manifest as mf
from launch.schema import ConfigError

KEY = ("date", "sweep", "member", "config_hash", "task")
COLUMNS = (*KEY, "label", "acc", "acc_stderr", "n", "iteration", "candidates", "results_file",
           "recorded")
REBUILD = ("move it away and run `sweep.py check SWEEP --date D` for each night to rebuild it "
           "from the run directories")


class HistoryError(ConfigError):
    """A history.csv (or a member's file behind it) that cannot be trusted; the message names
    the file, the line or key, and the fix."""


def history_file(sweep_root: Path) -> Path:
    return Path(sweep_root) / "history.csv"


# ---------------------------------------------------------------- reading
def _number(text: str, low: float | None = None, high: float | None = None,
            integer: bool = False) -> bool:
    try:
        v = float(text)
    except ValueError:
        return False
    if not math.isfinite(v) or (integer and v != int(v)):
        return False
    return (low is None or v >= low) and (high is None or v <= high)


def _date(text: str) -> bool:
    try:
        return dt.date.fromisoformat(text).isoformat() == text
    except ValueError:
        return False


# column -> (check of a non-empty field, what it must be, may it be empty)
FIELDS = {
    "date": (_date, "a date YYYY-MM-DD", False),
    "sweep": (bool, "a sweep name", False),
    "member": (bool, "a member name", False),
    "config_hash": (bool, "a config hash", False),
    "task": (bool, "a task or group name", False),
    "acc": (lambda t: _number(t, 0, 1), "a score in [0, 1]", False),
    "acc_stderr": (lambda t: _number(t, 0), "a standard error >= 0 (or empty)", True),
    "n": (lambda t: _number(t, 0, integer=True), "a question count (or empty)", True),
    "iteration": (lambda t: _number(t, 0, integer=True), "an iteration (or empty)", True),
}


def check_text(text: str, path: Path) -> None:
    """Refuse a history whose columns, lines or values are not what ``upsert`` writes."""
    rows = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(rows, None)
        if header is None:
            raise HistoryError(f"{path} is empty (no header line); {REBUILD}")
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise HistoryError(f"{path} lacks column(s) {', '.join(missing)}: it is not a "
                               f"kdlaunch sweep history; {REBUILD}")
        where = {c: header.index(c) for c in COLUMNS}
        seen: dict[tuple, int] = {}
        end = rows.line_num
        for row in rows:
            line, end = end + 1, rows.line_num  # a quoted field may span lines
            if not row:
                continue
            if len(row) != len(header):
                span = f"line {line}" if end == line else f"lines {line}-{end} (one quoted field)"
                raise HistoryError(f"{path} {span}: {len(row)} fields, the header has "
                                   f"{len(header)} (truncated or edited by hand?); {REBUILD}")
            for col, (ok, what, empty) in FIELDS.items():
                value = row[where[col]]
                if (value == "" and not empty) or (value != "" and not ok(value)):
                    raise HistoryError(f"{path} line {line}: {col}={value!r}: expected {what}; "
                                       f"{REBUILD}")
            key = tuple(row[where[c]] for c in KEY)
            if key in seen:
                raise HistoryError(f"{path} lines {seen[key]} and {line}: the same "
                                   f"({', '.join(KEY)}) = ({', '.join(key)}) twice; {REBUILD}")
            seen[key] = line
    except csv.Error as e:
        raise HistoryError(f"{path} line {rows.line_num}: not CSV ({e}); {REBUILD}") from None


def read(path: Path) -> pd.DataFrame:
    """The history (an empty frame when there is none), checked by ``check_text``."""
    path = Path(path)
    if not path.exists():
        return pd.DataFrame(columns=list(COLUMNS))
    try:
        raw = path.read_bytes()
    except IsADirectoryError:
        raise HistoryError(f"{path} is a directory, not the sweep history; {REBUILD}") from None
    except OSError as e:
        raise HistoryError(f"cannot read {path}: {e.strerror}; check its permissions") from None
    try:
        text = raw.decode("utf-8-sig")  # a spreadsheet's byte-order mark is not a column
    except UnicodeDecodeError as e:
        raise HistoryError(f"{path}: not UTF-8 text (byte {e.start}), so not a history kdlaunch "
                           f"wrote; {REBUILD}") from None
    check_text(text, path)
    try:
        return pd.read_csv(io.StringIO(text), dtype={"date": str, "sweep": str, "member": str,
                                                     "config_hash": str, "task": str})
    except ValueError as e:  # pandas' parser disagreeing with the csv module's (ParserError)
        raise HistoryError(f"{path}: not a CSV pandas reads ({str(e)[:200]}); {REBUILD}") from None


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


# ---------------------------------------------------------------- a member's result
@dataclass(frozen=True)
class MemberResult:
    record: dict  # the student-after results (kd/results.py)
    results_file: Path
    iteration: int  # the iteration that was evaluated (the selected one, with select:)
    candidates: str  # the selection's candidate scores (selection.candidates_text), or ""


def _positive_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def selects(manifest: dict, path: Path) -> bool:
    """Does the run's recorded experiment select its checkpoint (``select:`` with candidates)?"""
    its = mf.experiment_value(manifest, path, "select.iterations",
                              lambda v: isinstance(v, list) and all(map(_positive_int, v)),
                              "a list of iterations > 0", default=[])
    every = mf.experiment_value(manifest, path, "select.every_save",
                                lambda v: isinstance(v, bool), "true or false", default=False)
    return bool(its) or every


def exported_iteration(manifest: dict, path: Path) -> int:
    """The iteration a run without selection exports: ``export.iteration``, else the last."""
    it = mf.experiment_value(manifest, path, "export.iteration",
                             lambda v: v is None or _positive_int(v), "null or an iteration > 0",
                             default=None)
    return it or mf.experiment_value(manifest, path, "train.train_iters", _positive_int,
                                     "an iteration count > 0")


def member_result(run_dir: Path, manifest: dict) -> MemberResult | None:
    """The member's result for the night, None while its student-after eval has not written
    one. Damaged files (results, selection.json, manifest) are a :class:`HistoryError` or
    ``ManifestError`` naming the file."""
    paths = RunPaths(Path(run_dir))
    file = paths.eval_result("student_after")
    if not file.is_file():
        return None
    try:
        record = results.load(file)
    except ValueError as e:
        raise HistoryError(f"{e} (the results of sweep member {paths.root.name})") from None
    if not selects(manifest, paths.manifest):
        return MemberResult(record, file, exported_iteration(manifest, paths.manifest), "")
    try:
        chosen = selection.load(paths.selection)
    except ValueError as e:
        raise HistoryError(f"{e} (sweep member {paths.root.name} selects its checkpoint, and "
                           f"its results are of the iteration this file names)") from None
    return MemberResult(record, file, chosen["selected"], selection.candidates_text(chosen))
