"""Damaged files the user can edit, through the CLIs where users meet them, and bad sweeps.

Every reader of such a file refuses it with exit code 2 and one message naming the file and the
key, never a traceback: results files and their per-question samples and ``selection.json``
(``launch/report.py --selection``); ``history.csv``, a member's results, ``selection.json`` and
``manifest.json`` and the night's ``sweep.json`` (``launch/sweep.py check``). Each case starts
from files the real writers produced (the eval's results and samples writers, the select stage,
``sweep check`` itself) and damages one thing: valid JSON with a key missing, of the wrong type
or inconsistent with another; truncated; not UTF-8. A refused ``check`` leaves the history as it
was.

The sweep cases are refusals of a sweep file for anything a member's experiment would be refused
for, and for what only a sweep gets wrong; through ``launch/sweep.py`` (dry run and launch):
exit 2, the field named, nothing queued and no run directory.

    python -m pytest tests/bad_inputs/test_bad_files.py -q
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from kd import results
from kd import selection as sel
from kd.paths import RunPaths
from launch import report as report_cli
from launch import submit
from launch import sweep as sweep_cli
from tests.report.test_paired import small_case, write_result
from tests.select.test_select import make_candidates
from tests.select.test_select import spec as select_spec
from tests.sweep.conftest import sweep_yaml, write_night  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parents[2]


def run_cli(main, argv: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def refused(code: int, out: str, err: str, path: Path, *parts: str) -> None:
    assert code == 2, f"exit {code}\n{out[-1500:]}\n{err[-1500:]}"
    assert "Traceback" not in out + err, err
    assert str(path) in err, f"{path} not named in: {err}"
    for part in parts:
        assert part in err, f"{part!r} not in: {err}"
    assert len(err) < 2000, err


# ---------------------------------------------------------------- damage
def edit_json(change: Callable[[dict], object]) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        data = json.loads(path.read_text())
        change(data)
        path.write_text(json.dumps(data))
    return damage


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def not_utf8(path: Path) -> None:
    text = path.read_bytes()
    i = text.index(b'"', text.index(b'"') + 1)  # inside the first key or string
    path.write_bytes(text[:i] + b"\xff\xfe" + text[i:])


def put(key_path: str, value: object) -> Callable[[dict], None]:
    """Set (``value``) or delete (``DROP``) a dotted key of a JSON document; ``[i]`` indexes."""
    def change(data: dict) -> None:
        *parents, last = key_path.split(".")
        node = data
        for part in parents:
            node = _step(node, part)
        if "[" in last:
            node, last = _step(node, last.split("[")[0]), int(last.split("[")[1].rstrip("]"))
        if value is DROP:
            del node[last]
        else:
            node[last] = value
    return change


def _step(node, part: str):
    if "[" in part:
        name, index = part.split("[")
        return node[name][int(index.rstrip("]"))]
    return node[part]


DROP = object()


# ---------------------------------------------------------------- report.py: results, samples
@dataclass(frozen=True)
class ReportCase:
    id: str
    file: str  # "after" (results), "samples" (after's samples) or "selection"
    damage: Callable[[Path], None]
    message: tuple[str, ...]  # besides the file's path


def _samples_rows(change: Callable[[list[dict]], list[dict] | None], raw: bytes | None = None):
    """Rewrite the after samples file (rows -> ``change``), and its sha256 in the results file,
    so the damage is read rather than stopped by the checksum."""
    def damage(path: Path) -> None:
        if raw is not None:
            data = raw
        else:
            rows = [json.loads(line) for line in gzip.decompress(path.read_bytes()).splitlines()]
            rows = change(rows) or rows
            data = gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode())
        path.write_bytes(data)
        res = path.parent / "after.json"
        record = json.loads(res.read_text())
        record["samples"]["sha256"] = hashlib.sha256(data).hexdigest()
        res.write_text(json.dumps(record))
    return damage


def _row0(key: str, value: object):
    def change(rows: list[dict]) -> None:
        if value is DROP:
            del rows[0][key]
        else:
            rows[0][key] = value
    return change


def _unordered_selection(data: dict) -> None:  # selected 10 while 20 scores best
    data["selected"] = 10
    data["overfitting"]["best"] = 10


REPORT_CASES = [
    # results files (valid JSON, damaged content; then damaged bytes)
    ReportCase("results-acc-missing", "after", edit_json(put("groups.mmlu.acc", DROP)),
               ("groups.mmlu.acc",)),
    ReportCase("results-acc-string", "after", edit_json(put("groups.mmlu_stem.acc", "0.5")),
               ("groups.mmlu_stem.acc",)),
    ReportCase("results-n-string", "after", edit_json(put("groups.mmlu.n", "many")),
               ("groups.mmlu.n='many'",)),
    ReportCase("results-n-negative", "after", edit_json(put("groups.mmlu.n", -1)),
               ("groups.mmlu.n=-1",)),
    ReportCase("results-settings-list", "after", edit_json(put("settings", [5])),
               ("settings=[5] is not a mapping",)),
    ReportCase("results-fewshot-string", "after", edit_json(put("settings.num_fewshot", "5")),
               ("settings.num_fewshot='5'",)),
    ReportCase("results-limit-zero", "after", edit_json(put("settings.limit", 0)),
               ("settings.limit=0",)),
    ReportCase("results-versions-string", "after", edit_json(put("versions", "new")),
               ("versions='new' is not a mapping",)),
    ReportCase("results-cache-list", "after", edit_json(put("cache", [])),
               ("cache=[] is not a mapping",)),
    ReportCase("results-model-number", "after", edit_json(put("model", 7)),
               ("model=7 is not a string",)),
    ReportCase("results-samples-metrics-list", "after",
               edit_json(put("samples.metrics", ["acc"])), ("samples.metrics",)),
    ReportCase("results-samples-members-unknown-group", "after",
               edit_json(put("samples.members.mmlu_law", ["mmlu_philosophy"])),
               ("samples.members.mmlu_law: no such group",)),
    ReportCase("results-samples-members-unknown-task", "after",
               edit_json(put("samples.members.mmlu", ["mmlu_philosophy", "mmlu_law"])),
               ("samples.members.mmlu lists mmlu_law",)),
    ReportCase("results-samples-sha-not-hex", "after", edit_json(put("samples.sha256", 12)),
               ("samples.sha256=12",)),
    ReportCase("results-samples-questions-mismatch", "after",
               edit_json(put("samples.questions", 7)), ("samples.questions=7",)),
    ReportCase("results-truncated", "after", truncate, ("not valid JSON",)),
    ReportCase("results-not-utf8", "after", not_utf8, ("not valid JSON",)),
    # the samples file beside it
    ReportCase("samples-truncated", "samples", _samples_rows(
        None, raw=gzip.compress(b'{"task": "mmlu_nutrition"}\n' * 20)[:30]),
        ("not a gzipped JSONL samples file",)),
    ReportCase("samples-not-utf8", "samples", _samples_rows(None, raw=gzip.compress(b"\xff\xfe")),
               ("not a gzipped JSONL samples file",)),
    ReportCase("samples-score-missing", "samples", _samples_rows(_row0("score", DROP)),
               ("line 1: not a samples row", "'score'")),
    ReportCase("samples-score-string", "samples", _samples_rows(_row0("score", "1")),
               ("line 1: score: '1' is not a finite number",)),
    ReportCase("samples-task-unknown", "samples", _samples_rows(_row0("task", "mmlu_law")),
               ("line 1: task 'mmlu_law' has no metric",)),
    ReportCase("samples-row-twice", "samples", _samples_rows(lambda rows: rows[:-1] + rows[:1]),
               ("appears twice",)),
    ReportCase("samples-row-lost", "samples", _samples_rows(lambda rows: rows[:-1]),
               ("199 questions", "samples.questions=200")),
    # selection.json (report.py --selection)
    ReportCase("selection-selected-missing", "selection", edit_json(put("selected", DROP)),
               ("selected is missing",)),
    ReportCase("selection-selected-not-a-candidate", "selection", edit_json(put("selected", 99)),
               ("selected=99: not one of the candidates' iterations [10, 20, 30]",)),
    ReportCase("selection-selected-not-the-best", "selection", edit_json(_unordered_selection),
               ("selected=10: inconsistent with the candidates' scores (the best by kd_synth "
                "is iteration 20)",)),
    ReportCase("selection-no-candidates", "selection", edit_json(put("candidates", [])),
               ("candidates=[]",)),
    ReportCase("selection-candidates-mapping", "selection",
               edit_json(put("candidates", {"10": 0.5})), ("candidates=",)),
    ReportCase("selection-score-string", "selection",
               edit_json(put("candidates[1].score", "0.6")), ("candidates[1].score='0.6'",)),
    ReportCase("selection-score-points", "selection",
               edit_json(put("candidates[1].score", 60.0)), ("candidates[1].score=60.0",)),
    ReportCase("selection-iteration-missing", "selection",
               edit_json(put("candidates[0].iteration", DROP)),
               ("candidates[0].iteration is missing",)),
    ReportCase("selection-iteration-twice", "selection",
               edit_json(put("candidates[0].iteration", 20)),
               ("candidates[1].iteration=20: listed twice",)),
    ReportCase("selection-higher-is-better-flipped", "selection",
               edit_json(put("higher_is_better", False)),
               ("higher_is_better=False: inconsistent with by='kd_synth'",)),
    ReportCase("selection-overfitting-missing", "selection", edit_json(put("overfitting", DROP)),
               ("overfitting is missing",)),
    ReportCase("selection-overfitting-best", "selection",
               edit_json(put("overfitting.best", 30)), ("overfitting.best=30",)),
    ReportCase("selection-overfitting-last", "selection",
               edit_json(put("overfitting.last", 10)), ("overfitting.last=10",)),
    ReportCase("selection-threshold-null", "selection",
               edit_json(put("overfitting.threshold", None)), ("overfitting.threshold=None",)),
    ReportCase("selection-schema-missing", "selection", edit_json(put("schema", DROP)),
               ("schema None, expected 'kdlaunch.selection/v1'",)),
    ReportCase("selection-sweep-v0", "selection", lambda p: p.write_text(json.dumps(
        {"task": "kd_synth", "selected": 20, "scores": {"10": 0.5, "20": 0.6}})),
        ("schema None",)),
    ReportCase("selection-list", "selection", lambda p: p.write_text("[20]"), ("schema 'list'",)),
    ReportCase("selection-truncated", "selection", truncate, ("not a readable selection file",)),
    ReportCase("selection-not-utf8", "selection", not_utf8, ("not a readable selection file",)),
    ReportCase("selection-missing", "selection", lambda p: p.unlink(),
               ("no such selection file",)),
]


@pytest.fixture(scope="module")
def pristine_report_world(tmp_path_factory) -> Path:
    """before/after/teacher results with samples (the eval's writers) and a selection.json
    (the select stage over three constructed candidates: 20 is best); built once."""
    root = tmp_path_factory.mktemp("report_world")
    before, after = small_case()
    for role, outcomes in (("before", before), ("after", after), ("teacher", before)):
        write_result(root / f"{role}.json", outcomes)
    run = root / "run"
    sel.run(select_spec(run, make_candidates(run, {10: 0.50, 20: 0.60, 30: 0.55})))
    return root


@pytest.fixture
def report_world(pristine_report_world, tmp_path) -> dict[str, Path]:
    """A copy of the pristine world for one test to damage."""
    root = tmp_path / "world"
    shutil.copytree(pristine_report_world, root)
    files = {role: root / f"{role}.json" for role in ("before", "after", "teacher")}
    files["selection"] = RunPaths(root / "run").selection
    files["samples"] = results.samples_file(files["after"])
    return files


def report_argv(files: dict[str, Path], out: Path) -> list[str]:
    return ["--before", str(files["before"]), "--after", str(files["after"]), "--teacher",
            str(files["teacher"]), "--out", str(out), "--selection", str(files["selection"])]


def test_the_undamaged_report_world_is_accepted(report_world, tmp_path, capsys):
    code, out, err = run_cli(report_cli.main, report_argv(report_world, tmp_path / "out"), capsys)
    assert code == 0, err
    assert "paired z" in out and "Chosen iteration: **20**" in out


@pytest.mark.parametrize("case", REPORT_CASES, ids=[c.id for c in REPORT_CASES])
def test_report_refuses_a_damaged_file(case, report_world, tmp_path, capsys):
    target = report_world[case.file]
    case.damage(target)
    out_dir = tmp_path / "out"
    code, out, err = run_cli(report_cli.main, report_argv(report_world, out_dir), capsys)
    refused(code, out, err, target, *case.message)
    assert not (out_dir / "report.md").exists()


def test_report_refusal_from_a_real_process(report_world, tmp_path):
    """The same refusal as a user meets it: a process, its exit code and its stderr."""
    edit_json(put("candidates[1].score", "0.6"))(report_world["selection"])
    proc = subprocess.run([sys.executable, str(REPO / "launch" / "report.py"),
                           *report_argv(report_world, tmp_path / "out")],
                          capture_output=True, text=True, timeout=60)
    refused(proc.returncode, proc.stdout, proc.stderr, report_world["selection"],
            "candidates[1].score='0.6'")


# ---------------------------------------------------------------- sweep.py check
GOOD = {"mmlu": 0.40, "kd_synth": 0.60}
NIGHT1, NIGHT2 = "2026-01-01", "2026-01-02"
LR_GRID = {"lr": {"hi": ["train.lr=1e-3"], "lo": ["train.lr=1e-4"]}}
SELECT = {"iterations": [10, 20], "by": "kd_synth"}
QUICK = {10: {"mmlu": 0.39, "kd_synth": 0.70}, 20: {"mmlu": 0.40, "kd_synth": 0.50}}


def _history_text(change: Callable[[list[str]], list[str]]):
    def damage(path: Path) -> None:
        path.write_text("\n".join(change(path.read_text().splitlines())) + "\n")
    return damage


def _cell(column: str, value: str, line: int = 2):
    """Set one field (by column name) on one line (1 = the header)."""
    def change(lines: list[str]) -> list[str]:
        header = lines[0].split(",")
        fields = lines[line - 1].split(",")
        fields[header.index(column)] = value
        lines[line - 1] = ",".join(fields)
        return lines
    return _history_text(change)


def _drop_column(column: str):
    def change(lines: list[str]) -> list[str]:
        i = lines[0].split(",").index(column)
        return [",".join(f for j, f in enumerate(ln.split(",")) if j != i) for ln in lines]
    return _history_text(change)


def _history_not_utf8(path: Path) -> None:
    path.write_bytes(path.read_bytes().replace(b"a-hi" if b"a-hi" in path.read_bytes()
                                               else b"hi", b"h\xe9", 1))


@dataclass(frozen=True)
class CheckCase:
    id: str
    file: str  # history | results | selection | manifest | night
    damage: Callable[[Path], None]
    message: tuple[str, ...]
    select: bool = False  # the sweep selects checkpoints


CHECK_CASES = [
    CheckCase("history-truncated", "history", lambda p: p.write_bytes(p.read_bytes()[:-40]),
              ("fields, the header has 13 (truncated or edited by hand?)",)),
    CheckCase("history-not-utf8", "history", _history_not_utf8,
              ("history.csv: not UTF-8 text",)),
    CheckCase("history-no-acc-column", "history", _drop_column("acc"),
              ("lacks column(s) acc",)),
    CheckCase("history-acc-text", "history", _cell("acc", "high"), ("line 2: acc='high'",)),
    CheckCase("history-acc-points", "history", _cell("acc", "40.0", 3), ("line 3: acc='40.0'",)),
    CheckCase("history-acc-empty", "history", _cell("acc", ""), ("line 2: acc=''",)),
    CheckCase("history-stderr-negative", "history", _cell("acc_stderr", "-0.1"),
              ("line 2: acc_stderr='-0.1'",)),
    CheckCase("history-bad-date", "history", _cell("date", "2026-13-01"),
              ("line 2: date='2026-13-01'",)),
    CheckCase("history-iteration-fraction", "history", _cell("iteration", "2.5"),
              ("line 2: iteration='2.5'",)),
    CheckCase("history-member-empty", "history", _cell("member", ""), ("line 2: member=''",)),
    CheckCase("history-row-twice", "history", _history_text(lambda ls: ls + ls[1:2]),
              ("lines 2 and", "twice")),
    CheckCase("history-unclosed-quote", "history", _cell("label", '"MMLU'),
              ("lines 2-", "(one quoted field)")),
    CheckCase("history-empty", "history", lambda p: p.write_text(""), ("is empty",)),
    CheckCase("history-is-a-directory", "history", lambda p: (p.unlink(), p.mkdir()),
              ("is a directory",)),
    CheckCase("results-acc-missing", "results", edit_json(put("groups.kd_synth.acc", DROP)),
              ("groups.kd_synth.acc",)),
    CheckCase("results-settings-list", "results", edit_json(put("settings", [])),
              ("settings=[] is not a mapping",)),
    CheckCase("results-not-utf8", "results", not_utf8, ("not valid JSON",)),
    CheckCase("selection-selected-missing", "selection", edit_json(put("selected", DROP)),
              ("selected is missing", "sweep member hi selects its checkpoint"), select=True),
    CheckCase("selection-old-sweep-format", "selection", lambda p: p.write_text(json.dumps(
        {"task": "kd_synth", "selected": 10, "scores": {"10": 0.7, "20": 0.5}})),
        ("schema None",), select=True),
    CheckCase("selection-deleted", "selection", lambda p: p.unlink(),
              ("no such selection file",), select=True),
    CheckCase("manifest-train-iters-string", "manifest",
              edit_json(put("experiment.train.train_iters", "20")),
              ("experiment.train.train_iters='20': expected an iteration count > 0",)),
    CheckCase("manifest-select-list", "manifest", edit_json(put("experiment.select", [])),
              ("experiment.select=[] is not a mapping",)),
    CheckCase("manifest-config-hash-number", "manifest", edit_json(put("config_hash", 5)),
              ("config_hash=5 is not a string",)),
    CheckCase("manifest-truncated", "manifest", truncate, ("not valid JSON",)),
    CheckCase("night-members-list", "night", edit_json(put("members", [])),
              ("members=[] is not a mapping",)),
    CheckCase("night-run-dir-missing", "night", edit_json(put("members.hi.run_dir", DROP)),
              ("members.hi.run_dir is missing",)),
    CheckCase("night-config-hash-number", "night", edit_json(put("members.lo.config_hash", 3)),
              ("members.lo.config_hash is 3, not a string",)),
]


@pytest.fixture
def check_world(sweep_yaml):  # noqa: F811
    """A night checked into the history, and the next night finished but not checked yet."""
    def make(select: bool) -> tuple[Path, dict[str, Path]]:
        path = sweep_yaml(grid=LR_GRID, **({"select": SELECT} if select else {}))
        quick = dict.fromkeys(("hi", "lo"), QUICK) if select else None
        write_night(path, NIGHT1, dict.fromkeys(("hi", "lo"), GOOD), quick)
        sweep = sweep_cli.sp.load_sweep(str(path))
        assert sweep_cli.collect(sweep, NIGHT1, echo=lambda _: None) == {}  # (no trend plot)
        write_night(path, NIGHT2, dict.fromkeys(("hi", "lo"), GOOD), quick)
        root = path.parent / "sweeps" / "unit_sweep"
        member = RunPaths(root / NIGHT2 / "hi")
        return path, {"history": root / "history.csv", "night": root / NIGHT2 / "sweep.json",
                      "results": member.eval_result("student_after"),
                      "selection": member.selection, "manifest": member.manifest}
    return make


def test_the_undamaged_nights_are_accepted(check_world, capsys):
    for select in (False, True):
        path, files = check_world(select)
        code, out, err = run_cli(sweep_cli.main, ["check", str(path), "--date", NIGHT2], capsys)
        assert code == 0, out + err
        assert ("hi: iteration 10 selected" in out) == select


@pytest.mark.parametrize("case", CHECK_CASES, ids=[c.id for c in CHECK_CASES])
def test_sweep_check_refuses_a_damaged_file(case, check_world, capsys):
    path, files = check_world(case.select)
    target = files[case.file]
    case.damage(target)
    history = files["history"]
    kept = history.read_bytes() if history.is_file() else None
    code, out, err = run_cli(sweep_cli.main, ["check", str(path), "--date", NIGHT2], capsys)
    refused(code, out, err, target, *case.message)
    assert str(path) not in err  # not blamed on the sweep YAML
    assert (history.read_bytes() if history.is_file() else None) == kept  # nothing recorded


def test_sweep_check_refusal_from_a_real_process(check_world):
    path, files = check_world(False)
    _history_not_utf8(files["history"])
    proc = subprocess.run([sys.executable, str(REPO / "launch" / "sweep.py"), "check", str(path),
                           "--date", NIGHT2], capture_output=True, text=True, timeout=120)
    refused(proc.returncode, proc.stdout, proc.stderr, files["history"], "not UTF-8")


# ---------------------------------------------------------------- bad sweeps, refused before queueing
SWEEP_CASES = {  # id -> (sweep file changes, the message part naming the field)
    "select-task-old-key": ({"select": {"iterations": [10], "task": "kd_synth"}},
                            "select.task='kd_synth'"),
    "select-by-task-no-member-evaluates": ({"select": {"iterations": [10], "by": "gsm8k"}},
                                           "member a-hi: select.by=gsm8k"),
    "select-by-mmlu-category-typo": ({"select": {"iterations": [10], "by": "mmlu_maths"}},
                                     "member a-hi: select.by=mmlu_maths: no such MMLU group"),
    "select-iteration-not-saved": ({"select": {"iterations": [15]}},
                                   "member a-hi: select.iterations=[15]"),
    "select-val-loss-not-logged": ({"select": {"iterations": [10], "by": "val_loss"},
                                    "overrides": ["train.eval_interval=20"]},
                                   "member a-hi: select.by=val_loss"),
    "select-limit-negative": ({"select": {"every_save": True, "limit": -1}}, "select.limit=-1"),
    "select-unknown-key": ({"select": {"every_save": True, "metric": "acc"}},
                           "unknown key(s) select.metric"),
    "select-with-export-iteration": ({"select": {"every_save": True},
                                      "overrides": ["export.iteration=10"]},
                                     "member a-hi: select needs export.enabled=true and "
                                     "export.iteration unset"),
    "two-axes-set-one-key": ({"grid": {"lr": {"hi": ["train.lr=1e-3"], "lo": ["train.lr=1e-4"]},
                                       "sched": {"s1": ["train.lr=3e-4"], "s2": []}}},
                             "grid.lr and grid.sched both set train.lr"),
    "members-with-one-config": ({"grid": {}, "members": [
        {"name": "x", "overrides": ["train.lr=1e-3"]},
        {"name": "y", "overrides": ["train.lr=0.001"]}]}, "members x and y have the same config"),
    "member-twice": ({"grid": {}, "members": [{"name": "x"}, {"name": "x"}]},
                     "member name(s) x occur twice"),
    "alarm-task-no-member-evaluates": ({"alarm": {"tasks": ["mmlu", "gsm8k"]}},
                                       "alarm.tasks=['mmlu', 'gsm8k']: no member evaluates gsm8k"),
    "alarm-z-nan": ({"alarm": {"z": float("nan")}}, "alarm.z"),
    "share-distill": ({"share": ["distill"]}, "share[0]='distill'"),
    "override-without-value": ({"overrides": ["train.lr"]}, "overrides[0]='train.lr'"),
    "grid-override-cluster": ({"grid": {"p": {"a": ["cluster.partition=x"]}}},
                              "grid.p.a[0]='cluster.partition=x'"),
}


@pytest.mark.parametrize("mode", ["dry-run", "launch"])
@pytest.mark.parametrize("kind", sorted(SWEEP_CASES))
def test_bad_sweep_is_refused_before_queueing(kind, mode, sweep_yaml, monkeypatch, capsys):  # noqa: F811
    changes, message = SWEEP_CASES[kind]
    queued: list = []
    monkeypatch.setattr(submit, "launch", lambda *a, **k: queued.append(a) or 0)
    path = sweep_yaml(**changes)
    argv = [str(path), "--date", NIGHT1] + (["--dry-run"] if mode == "dry-run" else [])
    code, out, err = run_cli(sweep_cli.main, argv, capsys)
    assert code == 2 and message in err, f"exit {code}: {err[-2000:]}"
    assert "Traceback" not in out + err and len(err) < 2000, err
    assert not queued and not (path.parent / "sweeps").exists()


def test_the_sweep_world_is_accepted(sweep_yaml, capsys):  # noqa: F811
    """Guards the table: the sweep every case changes passes, with and without select:."""
    for changes in ({}, {"select": SELECT}):
        path = sweep_yaml(**changes)
        code, out, err = run_cli(sweep_cli.main, [str(path), "--date", NIGHT1, "--dry-run"],
                                 capsys)
        assert code == 0, err
        assert not (path.parent / "sweeps").exists()


def test_damage_helpers_change_what_they_say():
    doc = {"a": {"b": [{"c": 1}, {"c": 2}]}}
    put("a.b[1].c", 5)(doc)
    put("a.b[0].c", DROP)(doc)
    assert doc == {"a": {"b": [{}, {"c": 5}]}}
    assert copy.deepcopy(doc) == doc
