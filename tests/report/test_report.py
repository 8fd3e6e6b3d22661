"""Report stage: golden Markdown/CSV from the guide's tables, verdicts, comparability, CLI.

Re-record the golden files with ``KD_UPDATE_GOLDEN=1 pytest tests/report``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kd import report, results
from kd.specs import ReportSpec
from tests.report.guide_tables import REGRESSION, SUCCESS, lm_eval_results, write_case

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "golden" / "report"


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("KD_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.is_file(), f"{path} missing: record it with KD_UPDATE_GOLDEN=1"
    assert text == path.read_text(), (
        f"{name} changed; re-record with KD_UPDATE_GOLDEN=1 if intended"
    )


def records(case: dict, **overrides) -> dict[str, dict]:
    models = {"before": "/b", "after": "/a", "teacher": "/t/Teacher-8B"}
    return {
        role: results.from_lm_eval(lm_eval_results(accs, models[role], **overrides.get(role, {})))
        for role, accs in case.items()
    }


@pytest.mark.parametrize("case", ["success", "regression"])
def test_report_matches_golden(case, tmp_path):
    files = write_case(tmp_path / case, SUCCESS if case == "success" else REGRESSION)
    spec = ReportSpec(
        before=str(files["before"]),
        after=str(files["after"]),
        teacher=str(files["teacher"]),
        out_dir=str(tmp_path / "out"),
    )
    text = report.run(spec)
    out = tmp_path / "out"
    assert (out / "report.md").read_text() == text
    assert (out / "report.png").stat().st_size > 10_000
    check_golden(f"{case}.md", text)
    check_golden(f"{case}.csv", (out / "report.csv").read_text())


def test_success_numbers():
    r = records(SUCCESS)
    d = report.deltas(r["before"], r["after"])
    assert d["MMLU"] == pytest.approx(6.44)  # the guide: "+6.44 percentage points"
    assert (d > 0).all()
    gap = report.gap_closed(r["before"], r["after"], r["teacher"])
    assert gap["MMLU"] == pytest.approx((0.2960 - 0.2316) / (0.6839 - 0.2316))
    frame = report.table(r["before"], r["after"], r["teacher"])
    assert list(frame.columns) == ["MMLU", "Humanities", "Other", "Social Sciences", "STEM"]
    assert list(frame.index) == [
        "Before distillation",
        "After distillation",
        "Teacher (Teacher-8B)",
    ]


def test_verdict_improved_regressed_within_noise():
    r = records(SUCCESS)
    improved = report.verdict(r["before"], r["after"])
    assert improved.outcome == "improved" and improved.z > 7
    assert report.verdict(r["after"], r["before"]).outcome == "regressed"
    # The guide's regression case: -1.30 points is -1.5 combined stderrs at limit 100.
    r = records(REGRESSION)
    noisy = report.verdict(r["before"], r["after"])
    assert noisy.outcome == "within noise"
    assert noisy.delta_points == pytest.approx(-1.30)
    assert -2 < noisy.z < -1
    assert report.verdict(r["before"], r["after"], noise_z=1.0).outcome == "regressed"


def test_verdict_without_stderr_uses_the_sign():
    r = records(SUCCESS)
    for rec in (r["before"], r["after"]):
        rec["groups"]["mmlu"]["acc_stderr"] = None
    v = report.verdict(r["before"], r["after"])
    assert (v.outcome, v.z) == ("improved", None)
    assert "noise not assessed" in v.line()


def test_gap_closed_is_nan_without_a_gap():
    r = records(
        {"before": SUCCESS["teacher"], "after": SUCCESS["after"], "teacher": SUCCESS["teacher"]}
    )
    assert report.gap_closed(r["before"], r["after"], r["teacher"]).isna().all()
    assert "n/a" in report.markdown(r["before"], r["after"], r["teacher"])


def test_comparable_rows_raise_no_warning():
    r = records(SUCCESS)
    assert report.incomparable(r) == []
    assert "incomparable" not in report.markdown(r["before"], r["after"], r["teacher"])


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"limit": 10}, "different limit per subject (before: 100; after: 10; teacher: 100)"),
        ({"shots": 0}, "different few-shot (before: 5; after: 0; teacher: 5)"),
        ({"version": 3}, "different task versions (before: mmlu=2"),
    ],
)
def test_incomparable_settings_are_flagged(override, expected):
    r = records(SUCCESS, after=override)
    problems = report.incomparable(r)
    assert any(p.startswith(expected) for p in problems), problems
    text = report.markdown(r["before"], r["after"], r["teacher"])
    assert "**Warning: incomparable settings**" in text and expected in text


def test_limit_change_also_flags_question_counts():
    r = records(SUCCESS, teacher={"limit": None})
    problems = report.incomparable(r)
    assert any("questions per group" in p and "teacher: mmlu=14042" in p for p in problems)


def test_missing_file_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        report.run(
            ReportSpec(
                before=str(tmp_path / "nope.json"), after="x", teacher="y", out_dir=str(tmp_path)
            )
        )


def test_cli_prints_the_report_without_heavy_imports(success_files, tmp_path):
    out = tmp_path / "cli"
    args = [
        "--before",
        success_files["before"],
        "--after",
        success_files["after"],
        "--teacher",
        success_files["teacher"],
        "--out",
        out,
    ]
    proc = subprocess.run(
        [sys.executable, str(REPO / "launch" / "report.py"), *map(str, args)],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    assert proc.stdout == (out / "report.md").read_text()
    assert "**Verdict: improved**" in proc.stdout
    assert {p.name for p in out.iterdir()} >= {"report.md", "report.csv", "report.png"}
    probe = (
        "import runpy, sys\n"
        f"sys.argv = ['report.py', *{[str(a) for a in args]!r}]\n"
        f"try: runpy.run_path({str(REPO / 'launch' / 'report.py')!r}, run_name='__main__')\n"
        "except SystemExit as e: assert not e.code, e.code\n"
        "heavy = {'torch', 'transformers', 'lm_eval', 'megatron', 'modelopt'}\n"
        "assert not heavy & set(sys.modules), heavy & set(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True)


def test_cli_reports_a_bad_path(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "launch" / "report.py"),
            "--before",
            "a.json",
            "--after",
            "b.json",
            "--teacher",
            "c.json",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "does not exist" in proc.stderr
