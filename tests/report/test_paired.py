"""Paired verdict: per-question samples of before and after, McNemar-style paired z.

The results files are built through the eval stage's own path (an lm-eval-shaped result with
``samples`` -> ``results.from_lm_eval`` + ``results.sample_rows`` + ``results.write_samples``),
with per-question outcomes chosen so that the numbers can be checked by hand.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
from pathlib import Path

import pytest

from kd import report, results
from kd.specs import ReportSpec
from tests.report.guide_tables import REGRESSION, SUCCESS, write_case

# one subject per MMLU category, as in the local MMLU copy
LEAVES = {"mmlu_humanities": "mmlu_philosophy", "mmlu_other": "mmlu_nutrition",
          "mmlu_social_sciences": "mmlu_econometrics", "mmlu_stem": "mmlu_abstract_algebra"}


def _summary(scores: list[float]) -> dict:
    n, p = len(scores), sum(scores) / len(scores)
    return {"acc,none": p, "acc_stderr,none": math.sqrt(p * (1 - p) / (n - 1)), "sample_len": n}


def lm_eval_with_samples(outcomes: dict[str, list[float]], model: str) -> dict:
    """An lm-eval results dict (log_samples=True) for per-question 0/1 outcomes per subject."""
    groups = {cat: _summary(outcomes[leaf]) for cat, leaf in LEAVES.items()}
    groups["mmlu"] = _summary([s for leaf in LEAVES.values() for s in outcomes[leaf]])
    samples = {
        leaf: [{"doc_id": i, "filter": "none", "metrics": ["acc"], "acc": s,
                "doc_hash": hashlib.sha256(f"{leaf}/{i}".encode()).hexdigest()}
               for i, s in enumerate(outcomes[leaf])]
        for leaf in LEAVES.values()}
    return {
        "results": {**groups, **{leaf: _summary(outcomes[leaf]) for leaf in LEAVES.values()}},
        "groups": groups,
        "group_subtasks": {"mmlu": list(LEAVES), **{c: [leaf] for c, leaf in LEAVES.items()},
                           **{leaf: [] for leaf in LEAVES.values()}},
        "configs": {leaf: {"dataset_path": "cais/mmlu", "metric_list": [{"metric": "acc"}]}
                    for leaf in LEAVES.values()},
        "n-shot": {leaf: 5 for leaf in LEAVES.values()},
        "versions": {leaf: 1.0 for leaf in LEAVES.values()},
        "config": {"model_args": f"pretrained={model}", "limit": None},
        "samples": samples,
    }


def add_generative(res: dict, strict: list[float], flexible: list[float]) -> dict:
    """Add ``kd_gen``, a generate_until task scored by exact_match under two filters (gsm8k's
    shape): the first filter, strict-match, is its primary score."""
    n = len(strict)
    p, q = sum(strict) / n, sum(flexible) / n
    res["results"]["kd_gen"] = {
        "exact_match,strict-match": p,
        "exact_match_stderr,strict-match": math.sqrt(p * (1 - p) / (n - 1)),
        "exact_match,flexible-extract": q,
        "exact_match_stderr,flexible-extract": math.sqrt(q * (1 - q) / (n - 1))}
    res["configs"]["kd_gen"] = {"output_type": "generate_until",
                                "metric_list": [{"metric": "exact_match"}],
                                "filter_list": [{"name": "strict-match"},
                                                {"name": "flexible-extract"}]}
    res["group_subtasks"]["kd_gen"] = []
    res["n-samples"] = {"kd_gen": {"original": n, "effective": n}}
    res["samples"]["kd_gen"] = [
        {"doc_id": i, "filter": f, "metrics": ["exact_match"], "exact_match": v,
         "doc_hash": hashlib.sha256(f"kd_gen/{i}".encode()).hexdigest()}
        for i in range(n) for f, v in (("strict-match", strict[i]), ("flexible-extract",
                                                                     flexible[i]))]
    return res


def write_result(path: Path, outcomes: dict[str, list[float]], *, with_samples=True,
                 generative: tuple | None = None) -> Path:
    res = lm_eval_with_samples(outcomes, f"/ckpt/{path.stem}")
    if generative:
        add_generative(res, *generative)
    record = results.from_lm_eval(res)
    if with_samples:
        record["samples"] = results.write_samples(path, *results.sample_rows(res,
                                                                              list(record["groups"])))
    results.write_json_atomic(path, record)
    return path


def split(flat: list[float]) -> dict[str, list[float]]:
    """Question i goes to subject i % 4."""
    return {leaf: flat[i::len(LEAVES)] for i, leaf in enumerate(LEAVES.values())}


def small_case() -> tuple[dict, dict]:
    """200 questions, 50 per subject. Before: docs 0-29 of each subject right (120/200 = 0.60).
    After: docs 0-3 of each subject lost, doc 49 gained (27 per subject, 108/200 = 0.54)."""
    before = {leaf: [float(i < 30) for i in range(50)] for leaf in LEAVES.values()}
    after = {leaf: [float(4 <= i < 30 or i == 49) for i in range(50)] for leaf in LEAVES.values()}
    return before, after


def report_for(tmp_path: Path, before: dict, after: dict, teacher: dict,
               options: dict | None = None, *, full: bool = False) -> str:
    """The report's Markdown; ``full``: through ``report.run`` (files, CSV, PNG) as the stage."""
    files = {role: write_result(tmp_path / f"{role}.json", outcomes, **(options or {}).get(role, {}))
             for role, outcomes in (("before", before), ("after", after), ("teacher", teacher))}
    if full:
        return report.run(ReportSpec(before=str(files["before"]), after=str(files["after"]),
                                     teacher=str(files["teacher"]),
                                     out_dir=str(tmp_path / "out")))
    records = {role: results.load(path) for role, path in files.items()}
    samples = tuple(results.load_samples(files[r], records[r]) for r in ("before", "after"))
    return report.markdown(records["before"], records["after"], records["teacher"],
                           samples=samples)


def test_paired_test_finds_a_regression_the_independent_test_calls_noise(tmp_path):
    before, after = small_case()
    teacher = {leaf: [1.0] * 45 + [0.0] * 5 for leaf in LEAVES.values()}
    text = report_for(tmp_path, before, after, teacher, full=True)
    b, a = (results.load(tmp_path / f"{r}.json") for r in ("before", "after"))
    samples = tuple(results.load_samples(tmp_path / f"{r}.json", rec)
                    for r, rec in (("before", b), ("after", a)))
    v = report.verdict(b, a, samples=samples)
    # By hand. delta = 0.54 - 0.60 = -0.06 (-6.00 points).
    # Independent: se_b = sqrt(.6*.4/199) = 0.034728, se_a = sqrt(.54*.46/199) = 0.035330,
    #   combined sqrt(0.00120603 + 0.00124824) = 0.049541, z = -0.06 / 0.049541 = -1.21:
    #   within noise (|z| < 2).
    # Paired: d_i = after_i - before_i: 16 questions -1 (lost), 4 questions +1 (gained),
    #   180 zero. mean = -12/200 = -0.06; sum d^2 = 20;
    #   var = (20 - 200 * 0.06**2) / 199 = 19.28 / 199 = 0.096884, sd = 0.311262,
    #   se = 0.311262 / sqrt(200) = 0.022010, z = -0.06 / 0.022010 = -2.73: regressed.
    #   (McNemar's z with the same counts: (4 - 16) / sqrt(20) = -2.68.)
    assert v.delta_points == pytest.approx(-6.0)
    assert v.z == pytest.approx(-1.2111, abs=1e-4) and v.stderr_points == pytest.approx(4.9541,
                                                                                        abs=1e-4)
    assert v.paired is not None and v.fallback is None
    assert v.paired.z == pytest.approx(-2.7261, abs=1e-4)
    assert v.paired.stderr_points == pytest.approx(2.2010, abs=1e-4)
    assert (v.paired.n, v.paired.gained, v.paired.lost) == (200, 4, 16)
    assert v.outcome == "regressed"
    # without the samples the same two files are "within noise", and the line says why
    fallback = report.verdict(b, a)
    assert fallback.outcome == "within noise" and fallback.paired is None
    assert "no paired test" in fallback.line()
    line = next(ln for ln in text.splitlines() if ln.startswith("**Verdict"))
    assert line == ("**Verdict: regressed**: MMLU -6.00 points (after − before); paired z = -2.7 "
                    "over 200 shared questions (4 gained, 16 lost; stderr 2.20 points), "
                    "independent z = -1.2 (combined stderr 4.95 points); |z| < 2.0 is within "
                    "noise")


def test_guide_sized_regression_is_significant_when_paired(tmp_path):
    """The guide's -1.30 points (0.6626 -> 0.6496 over 5700 questions) that the independent test
    calls noise (z = -1.5), with 200 questions lost and 126 gained: paired z = -4.1."""
    before_flat = [float(i < 3777) for i in range(5700)]  # 3777 / 5700 = 0.6626
    after_flat = [float(200 <= i < 3777 + 126) for i in range(5700)]  # 3703 / 5700 = 0.6496
    teacher_flat = [float(i < 3898) for i in range(5700)]  # 0.6839
    text = report_for(tmp_path, split(before_flat), split(after_flat), split(teacher_flat))
    # By hand: mean d = -74/5700; var = (326 - 74**2/5700) / 5699 = 0.0570345;
    # z = (-74/5700) / sqrt(0.0570345 / 5700) = -4.10 (McNemar: -74 / sqrt(326) = -4.10);
    # independent: -0.012982 / sqrt(.6626*.3374/5699 + .6496*.3504/5699) = -1.46.
    assert ("**Verdict: regressed**: MMLU -1.30 points (after − before); paired z = -4.1 over "
            "5700 shared questions (126 gained, 200 lost; stderr 0.32 points), independent "
            "z = -1.5 (combined stderr 0.89 points)") in text


def test_guide_tables_without_samples_keep_their_verdicts_and_say_so(tmp_path):
    for case, outcome in ((SUCCESS, "improved"), (REGRESSION, "within noise")):
        files = write_case(tmp_path / outcome, case)
        records = {role: results.load(path) for role, path in files.items()}
        samples = tuple(results.load_samples(files[r], records[r]) for r in ("before", "after"))
        text = report.markdown(records["before"], records["after"], records["teacher"],
                               samples=samples)
        line = next(ln for ln in text.splitlines() if ln.startswith("**Verdict"))
        assert line.startswith(f"**Verdict: {outcome}**")
        assert line.endswith("independent test only, no paired test: no per-question samples "
                             "(before and after)")


def test_paired_test_needs_the_same_questions_on_both_sides(tmp_path):
    before, after = small_case()
    teacher = before
    # samples on one side only
    text = report_for(tmp_path / "one", before, after, teacher,
                      {"after": {"with_samples": False}})
    assert "independent test only, no paired test: no per-question samples (after)" in text
    # a different number of questions (the limit changed): no pairing
    shorter = {leaf: s[:40] for leaf, s in after.items()}
    text = report_for(tmp_path / "limit", before, shorter, teacher)
    assert "no paired test: before and after were not asked the same MMLU questions" in text
    # a samples file that went missing is named
    files = tmp_path / "gone"
    report_for(files, before, after, teacher)
    results.samples_file(files / "after.json").unlink()
    b, a = (results.load(files / f"{r}.json") for r in ("before", "after"))
    reason = results.load_samples(files / "after.json", a)
    assert reason == f"samples file {files / 'after.samples.jsonl.gz'} is missing"
    # a group score that is not the plain mean of its questions (a macro average) is not paired
    samples = (results.load_samples(files / "before.json", b),) * 2
    macro = {**b, "groups": {**b["groups"], "mmlu": {**b["groups"]["mmlu"], "acc": 0.55}}}
    v = report.verdict(b, macro, samples=samples)
    assert v.paired is None and v.fallback == "the MMLU score is not the mean over its questions"


def test_damaged_samples_are_refused_naming_the_file(tmp_path):
    before, after = small_case()
    path = write_result(tmp_path / "after.json", after)
    record = results.load(path)
    sample_file = results.samples_file(path)
    rows = [json.loads(ln) for ln in gzip.decompress(sample_file.read_bytes()).splitlines()]
    rows[3]["score"] = float("nan")
    sample_file.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    with pytest.raises(ValueError, match="sha256 differs"):
        results.load_samples(path, record)
    record["samples"]["sha256"] = hashlib.sha256(sample_file.read_bytes()).hexdigest()
    with pytest.raises(ValueError, match=r"after.samples.jsonl.gz line 4: score: nan is not a "
                                         r"finite number"):
        results.load_samples(path, record)
    # a samples reference that points outside the results directory is refused at load time
    data = json.loads(path.read_text())
    data["samples"]["file"] = "../elsewhere.jsonl.gz"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="samples must be null or a mapping"):
        results.load(path)


def test_v1_results_files_still_load_and_newer_ones_are_refused(tmp_path):
    before, _ = small_case()
    path = write_result(tmp_path / "r.json", before, with_samples=False)
    data = json.loads(path.read_text())
    v1 = {k: v for k, v in data.items() if k != "samples"}
    v1["schema"] = "kdlaunch.results/v1"
    for g in v1["groups"].values():
        del g["metric"]
    path.write_text(json.dumps(v1))
    assert results.load(path)["groups"]["mmlu"]["acc"] == pytest.approx(0.6)
    assert results.load_samples(path, results.load(path)) == "no per-question samples"
    path.write_text(json.dumps({**v1, "schema": "kdlaunch.results/v9"}))
    with pytest.raises(ValueError, match="newer than this kdlaunch reads"):
        results.load(path)


def test_generative_task_is_reported_by_its_primary_metric(tmp_path):
    """kd_gen: exact_match under its first filter (strict-match), its stderr, its own paired
    verdict; the flexible-extract numbers are not what the report reads."""
    before, after = small_case()
    gen = {  # 10 questions; strict: before 2/10 right, after 7/10; flexible: everything right
        "before": ([1.0] * 2 + [0.0] * 8, [1.0] * 10),
        "after": ([1.0] * 7 + [0.0] * 3, [1.0] * 10),
        "teacher": ([1.0] * 9 + [0.0], [1.0] * 10)}
    files = {role: write_result(tmp_path / f"{role}.json", outcomes, generative=gen[role])
             for role, outcomes in (("before", before), ("after", after), ("teacher", before))}
    records = {role: results.load(path) for role, path in files.items()}
    g = records["after"]["groups"]["kd_gen"]
    assert g["metric"] == "exact_match,strict-match" and g["acc"] == 0.7 and g["n"] == 10
    assert g["acc_stderr"] == pytest.approx(math.sqrt(0.7 * 0.3 / 9))
    assert records["after"]["samples"]["metrics"]["kd_gen"] == "exact_match,strict-match"
    samples = tuple(results.load_samples(files[r], records[r]) for r in ("before", "after"))
    assert [samples[1]["scores"][("kd_gen", i)][1] for i in range(10)] == gen["after"][0]
    text = report.markdown(records["before"], records["after"], records["teacher"],
                           samples=samples)
    assert "| Model | MMLU | Humanities | Other | Social Sciences | STEM | kd_gen |" in text
    assert "Scores are accuracy (acc) except kd_gen: exact_match (strict-match filter)." in text
    # By hand: d = +1 on questions 2-6 (5 gained), 0 elsewhere; mean 0.5, sum d^2 = 5,
    # var = (5 - 10 * 0.25) / 9 = 0.27778, se = sqrt(0.27778 / 10) = 0.16667, z = +3.0.
    assert ("**Verdict on kd_gen: improved**: kd_gen +50.00 points (after − before); paired "
            "z = +3.0 over 10 shared questions (5 gained, 0 lost; stderr 16.67 points)") in text


def test_a_task_without_per_question_scores_is_not_paired(tmp_path):
    """A corpus-level metric (per-sample values are tuples, as for bleu or f1) gives no rows for
    its task: the eval still writes its samples, that task's verdict falls back."""
    before, after = small_case()
    res = add_generative(lm_eval_with_samples(before, "/ckpt/b"), [1.0] * 5, [1.0] * 5)
    for row in res["samples"]["kd_gen"]:
        row["exact_match"] = ("prediction", "reference")
    record = results.from_lm_eval(res)
    rows, metrics, groups = results.sample_rows(res, list(record["groups"]))
    assert metrics["kd_gen"] is None and metrics["mmlu_nutrition"] == "acc,none"
    assert {r["task"] for r in rows} == set(LEAVES.values()) and len(rows) == 200
    samples = {"scores": {(r["task"], r["doc_id"]): (r["hash"], r["score"]) for r in rows},
               "metrics": metrics, "members": groups}
    assert report.paired_test(samples, samples, "kd_gen") == "no per-question scores for kd_gen"
    assert isinstance(report.paired_test(samples, samples, "mmlu"), report.Paired)
