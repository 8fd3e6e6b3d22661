"""Report stage: MMLU before / after distillation / teacher, as Markdown, CSV and a bar chart.

Login-node safe: pandas, matplotlib (Agg) and ``kd.results`` only, no torch or lm-eval.
The pure functions (``table``, ``deltas``, ``gap_closed``, ``verdict``, ``incomparable``,
``markdown``) take records as read by ``kd.results.load``; ``run`` reads the three files and
writes ``report.md``, ``report.csv`` and ``report.png`` under ``spec.out_dir``.

The verdict compares the overall MMLU change (and each extra task's) with its noise.
``|z| < NOISE_Z`` is "within noise".

* Paired (when both results files keep per-question samples of the same questions): the
  per-question differences ``d_i = after_i - before_i`` of the primary score,
  ``z = mean(d) / (sd(d) / sqrt(n))`` (for 0/1 scores this is McNemar's test in its z form:
  only the questions that changed answer carry signal). Before and after are the same
  questions, so this is the test that fits; the line shows the independent z beside it.
* Independent (fallback, said so in the line): ``z = delta / sqrt(se_before**2 + se_after**2)``
  from lm-eval's stderrs, as if the two evaluations had asked different questions; it ignores
  the positive correlation of the two models' answers and is therefore conservative.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from kd import results
from kd.specs import ReportSpec

NOISE_Z = 2.0  # |delta| below this many combined stderrs is "within noise" (~95%)
ROW_BEFORE, ROW_AFTER = "Before distillation", "After distillation"
ROW_DELTA, ROW_GAP = "Δ after − before (points)", "Teacher gap closed"


@dataclass(frozen=True)
class Paired:
    """Paired test over the questions both evaluations share."""

    z: float
    stderr_points: float  # sd(d) / sqrt(n), in points
    n: int  # questions
    gained: int  # questions scored higher after (for 0/1 scores: wrong -> right)
    lost: int  # questions scored lower after (right -> wrong)
    delta_points: float = math.nan  # mean(d) in points: the group's delta when it is a plain mean


@dataclass(frozen=True)
class Verdict:
    outcome: str  # "improved" | "regressed" | "within noise"
    delta_points: float  # overall MMLU, after - before, in accuracy points
    stderr_points: float | None  # combined stderr of the difference, points (None: unknown)
    z: float | None  # independent z
    noise_z: float = NOISE_Z

    task: str = "MMLU"
    paired: Paired | None = None  # decides the outcome when present
    fallback: str | None = None  # why there is no paired test

    def line(self) -> str:
        head = "Verdict" if self.task == "MMLU" else f"Verdict on {self.task}"
        text = (f"**{head}: {self.outcome}**: {self.task} {self.delta_points:+.2f} points "
                f"(after − before)")
        noise = f"|z| < {self.noise_z:.1f} is within noise"
        independent = ("stderrs missing" if self.z is None else
                       f"z = {self.z:+.1f} (combined stderr {self.stderr_points:.2f} points)")
        if self.paired is not None:
            p = self.paired
            return (text + f"; paired z = {p.z:+.1f} over {p.n} shared questions ({p.gained} "
                    f"gained, {p.lost} lost; stderr {p.stderr_points:.2f} points), "
                    f"independent {independent}; {noise}")
        why = f"independent test only, no paired test: {self.fallback}"
        if self.z is None:
            return text + f"; stderrs missing, noise not assessed (sign only); {why}"
        return text + f", {independent}; {noise}; {why}"


def paired_test(before: dict | str | None, after: dict | str | None, key: str) -> Paired | str:
    """The paired test of group ``key`` from two ``results.load_samples`` answers, or a
    sentence saying why it cannot be done."""
    reasons: dict[str, list[str]] = {}
    for name, s in (("before", before), ("after", after)):
        if not isinstance(s, dict):
            reasons.setdefault(s or "no per-question samples", []).append(name)
    if reasons:
        return "; ".join(f"{why} ({' and '.join(names)})" for why, names in reasons.items())
    task = results.label(key)
    leaves = before["members"].get(key)
    if not leaves or leaves != after["members"].get(key):
        return f"the {task} tasks differ between before and after"
    unscored = [t for t in leaves if before["metrics"].get(t) is None
                or after["metrics"].get(t) is None]
    if unscored:
        return f"no per-question scores for {', '.join(unscored)}"
    if any(before["metrics"].get(t) != after["metrics"].get(t) for t in leaves):
        return f"the {task} metrics differ between before and after"
    wanted = set(leaves)
    b = {k: v for k, v in before["scores"].items() if k[0] in wanted}
    a = {k: v for k, v in after["scores"].items() if k[0] in wanted}
    if not b or b.keys() != a.keys() or any(b[k][0] != a[k][0] for k in b):
        return f"before and after were not asked the same {task} questions"
    diffs = [a[k][1] - b[k][1] for k in sorted(b)]
    n = len(diffs)
    mean = math.fsum(diffs) / n
    var = math.fsum((d - mean) ** 2 for d in diffs) / (n - 1) if n > 1 else 0.0
    se = math.sqrt(var / n)
    z = mean / se if se > 0 else math.copysign(math.inf, mean) if mean else 0.0
    return Paired(z, 100 * se, n, sum(d > 0 for d in diffs), sum(d < 0 for d in diffs),
                  100 * mean)


def teacher_label(teacher: dict) -> str:
    model = teacher.get("model")
    return f"Teacher ({Path(model).name})" if model else "Teacher"


def table(before: dict, after: dict, teacher: dict) -> pd.DataFrame:
    """Accuracy (fraction) per group: rows before / after / teacher, columns MMLU..STEM."""
    rows = {ROW_BEFORE: before, ROW_AFTER: after, teacher_label(teacher): teacher}
    keys = results.columns(before, after, teacher)
    data = {label: [rec["groups"][k]["acc"] for k in keys] for label, rec in rows.items()}
    frame = pd.DataFrame.from_dict(data, orient="index", columns=[results.label(k) for k in keys])
    frame.index.name = "Model"
    return frame


def stderrs(before: dict, after: dict, teacher: dict) -> pd.DataFrame:
    """Like ``table`` for the stderrs (NaN where lm-eval reported none)."""
    frame = table(before, after, teacher)
    for label, rec in zip(frame.index, (before, after, teacher), strict=True):
        frame.loc[label] = [
            _nan(rec["groups"][k]["acc_stderr"]) for k in results.columns(before, after, teacher)
        ]
    return frame


def deltas(before: dict, after: dict) -> pd.Series:
    """after − before per group, in accuracy points (percentage points)."""
    return pd.Series(
        {
            results.label(k): 100 * (after["groups"][k]["acc"] - before["groups"][k]["acc"])
            for k in results.columns(before, after)
        },
        name=ROW_DELTA,
    )


def gap_closed(before: dict, after: dict, teacher: dict) -> pd.Series:
    """Share of the before→teacher gap closed by distillation (NaN where there was no gap)."""
    out = {}
    for key in results.columns(before, after, teacher):
        label = results.label(key)
        b, a, t = (rec["groups"][key]["acc"] for rec in (before, after, teacher))
        out[label] = (a - b) / (t - b) if t - b > 0 else math.nan
    return pd.Series(out, name=ROW_GAP)


def verdict(before: dict, after: dict, noise_z: float = NOISE_Z, key: str = "mmlu",
            samples: tuple | None = None) -> Verdict:
    """Improved / regressed / within noise, from one group's change (default overall MMLU):
    paired when ``samples`` (before's and after's ``results.load_samples``) cover the same
    questions, else from the two stderrs as independent samples."""
    b, a = before["groups"][key], after["groups"][key]
    task = results.label(key)
    if not all(_finite(x) for x in (b.get("acc"), a.get("acc"))):
        # results.load refuses these; a record built in code must not give a verdict either
        raise ValueError(f"{task}: a score is missing or not a finite number "
                         f"(before {b.get('acc')!r}, after {a.get('acc')!r}); no verdict")
    delta = a["acc"] - b["acc"]
    pair = paired_test(*(samples or ("no per-question samples",) * 2), key)
    if not isinstance(pair, str) and abs(pair.delta_points - 100 * delta) > 1e-6:
        # e.g. a group averaged over its tasks (weight_by_size: false), not over its questions
        pair = f"the {task} score is not the mean over its questions"
    fallback = pair if isinstance(pair, str) else None
    pair = None if fallback else pair
    if b["acc_stderr"] is None or a["acc_stderr"] is None:
        stderr = z = None
    else:
        stderr = math.hypot(b["acc_stderr"], a["acc_stderr"])
        z = delta / stderr if stderr > 0 else math.copysign(math.inf, delta) if delta else 0.0
    decisive = pair.z if pair else z
    if decisive is None:
        outcome = "improved" if delta > 0 else "regressed" if delta < 0 else "within noise"
    else:
        outcome = ("improved" if decisive >= noise_z else "regressed" if decisive <= -noise_z
                   else "within noise")
    return Verdict(outcome, 100 * delta, None if stderr is None else 100 * stderr, z, noise_z,
                   task, pair, fallback)


def incomparable(records: dict[str, dict]) -> list[str]:
    """One sentence per setting that differs between the named records (empty: comparable)."""
    settings = {name: results.comparable_settings(rec) for name, rec in records.items()}
    problems = []
    for field, what in (
        ("num_fewshot", "few-shot"),
        ("limit", "limit per subject"),
        ("task_versions", "task versions"),
        ("questions", "questions per group"),
    ):
        values = {name: s[field] for name, s in settings.items()}
        if len({_canonical(v) for v in values.values()}) > 1:
            values = _differing(values)
            detail = "; ".join(f"{name}: {_describe(v)}" for name, v in values.items())
            problems.append(f"different {what} ({detail})")
    return problems


def _differing(values: dict[str, object]) -> dict[str, object]:
    """For dict-valued settings keep only the keys whose values differ between records."""
    if not all(isinstance(v, dict) for v in values.values()):
        return values
    keys = set().union(*values.values())
    differ = sorted(k for k in keys if len({_canonical(v.get(k)) for v in values.values()}) > 1)
    return {name: {k: v.get(k) for k in differ} for name, v in values.items()}


def frame(before: dict, after: dict, teacher: dict) -> pd.DataFrame:
    """The whole numeric report: scores, delta (points), gap closed (fraction), stderr columns."""
    scores = table(before, after, teacher)
    full = pd.concat(
        [
            scores,
            deltas(before, after).to_frame().T,
            gap_closed(before, after, teacher).to_frame().T,
        ]
    )
    errors = stderrs(before, after, teacher).add_suffix(" stderr")
    full = full.join(errors)
    full.index.name = "Model"
    return full


def markdown(before: dict, after: dict, teacher: dict, title: str = ReportSpec.title,
             samples: tuple | None = None) -> str:
    """The report; ``samples``: before's and after's ``results.load_samples`` (paired test)."""
    scores = table(before, after, teacher)
    rows = [[f"{v:.4f}" for v in scores.loc[label]] for label in scores.index]
    rows.append([f"{v:+.2f}" for v in deltas(before, after)])
    rows.append(
        ["n/a" if math.isnan(v) else f"{100 * v:.1f}%" for v in gap_closed(before, after, teacher)]
    )
    labels = [*scores.index, ROW_DELTA, ROW_GAP]
    cols = list(scores.columns)
    lines = [
        f"# {title}",
        "",
        "| Model | " + " | ".join(cols) + " |",
        "|" + "---|" * (len(cols) + 1),
    ]
    lines += [
        f"| {label} | " + " | ".join(cells) + " |"
        for label, cells in zip(labels, rows, strict=True)
    ]
    extra = [k for k in results.columns(before, after, teacher) if k not in results.GROUPS]
    metrics = _metrics_line(before, extra)
    if metrics:
        lines += ["", metrics]
    for key in ["mmlu", *extra]:
        lines += ["", verdict(before, after, key=key, samples=samples).line()]
    lines += [""]
    problems = incomparable({"before": before, "after": after, "teacher": teacher})
    if problems:
        lines += ["**Warning: incomparable settings**, the rows were not evaluated alike:"]
        lines += [f"- {p}" for p in problems] + [""]
    lines += ["Settings:", ""] + [
        f"- {role}: {_settings_line(rec)}"
        for role, rec in (("before", before), ("after", after), ("teacher", teacher))
    ]
    return "\n".join(lines) + "\n"


def plot(before: dict, after: dict, teacher: dict, path: str | Path, title: str) -> Path:
    """Grouped bar chart (before / after / teacher per category) with stderr bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores, errors = table(before, after, teacher), stderrs(before, after, teacher)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    scores.T.plot.bar(ax=ax, yerr=errors.T.fillna(0), capsize=2, rot=0, width=0.8)
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def run(spec: ReportSpec) -> str:
    """Read the three results files, write report.{md,csv,png}; return the Markdown."""
    before, after, teacher = (results.load(p) for p in (spec.before, spec.after, spec.teacher))
    out = Path(spec.out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: is a file, not a directory; pass a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--out {out}: cannot create it ({e.strerror}); pass a writable "
                         f"directory") from e
    if not os.access(out, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out}: not writable by you; pass a writable directory")
    samples = (results.load_samples(spec.before, before),
               results.load_samples(spec.after, after))
    text = markdown(before, after, teacher, spec.title, samples)
    if spec.selection:
        text += "\n" + selection_section(spec.selection, out)
    ran = what_ran_section(spec)
    if ran:
        text += "\n" + ran
    spent = cost_section(spec)
    if spent:
        text += "\n" + spent
    _write_text(out / "report.md", text)
    _write_text(out / "report.csv", frame(before, after, teacher).to_csv(float_format="%.6g"))
    plot(before, after, teacher, out / "report.png", spec.title)
    if spec.done_marker:
        results.write_json_atomic(spec.done_marker, {"report": str(out / "report.md")})
    return text


def selection_section(selection_file: str | Path, out: Path) -> str:
    """The checkpoint-selection section (kd/selection.py): table and plot of score against
    iteration, the chosen iteration, the overfitting flag; the plot goes to
    ``out/selection.png``."""
    from kd import selection as sel

    record = sel.load(selection_file)
    sel.plot(record, out / "selection.png")
    return sel.markdown_section(record, "selection.png")


def what_ran_section(spec: ReportSpec) -> str:
    """"What ran": each stage's provenance (kd.provenance) from the done markers of the run
    (``RUN/stages``, the report's own marker's folder) and of the runs whose evaluations this
    one reused (a sweep's shared teacher eval), plus this report job; package versions that
    differ between stages or from the login node's (the manifest's) are flagged. Empty when
    the report is not part of a run (no done marker)."""
    from kd import paths as kp
    from kd import provenance as prov

    if not spec.done_marker:
        return ""
    stages_dir = Path(spec.done_marker).parent
    found = {p.stem: p for p in stages_dir.glob("*.done") if p.stem != "report"}
    for stage, result in (("eval_student_before", spec.before), ("eval_teacher", spec.teacher),
                          ("eval_student_after", spec.after)):
        shared = Path(result).parent.parent / "stages" / f"{stage}.done"  # RUN/eval/<role>.json
        if stage not in found and shared.is_file():
            found[stage] = shared
    order = {s: i for i, s in enumerate(kp.STAGES)}
    stages = sorted(found, key=lambda s: (order.get(s, len(order)), s))
    records: dict[str, dict | None] = {}
    rows = []
    for stage in stages:
        rec, why = prov.read_marker(found[stage])
        label = stage if found[stage].parent == stages_dir else \
            f"{stage} (reused from `{found[stage].parent.parent}`)"
        records[stage] = rec
        rows.append(f"| {label} | " + (" | ".join(
            (prov.hosts_text(rec), prov.job_text(rec), prov.wall_text(rec), prov.gpu_text(rec),
             prov.compat_text(rec))) if rec else f"{why} | | | |") + " |")
    me = prov.collect("report")
    records["report"] = me
    rows.append("| report (this job) | " + " | ".join(
        (prov.hosts_text(me), prov.job_text(me), "-", prov.gpu_text(me), prov.compat_text(me)))
        + " |")
    try:
        import json

        manifest = json.loads((stages_dir.parent / "manifest.json").read_text())
    except (OSError, ValueError):
        manifest = None
    versions = prov.version_rows(records, prov.login_versions(manifest))
    recorded = sum(r is not None for r in records.values())
    lines = ["## What ran", ""]
    differs = prov.differences_line(versions)
    if differs:
        lines += [f"**Warning: {differs}.**", ""]
    lines += ["From each stage's done marker (`launch/status.py RUN --provenance` shows the "
              "same).", "",
              "| Stage | Hosts | Job | Wall | GPU | Compat workarounds |", "|---|---|---|---|---|---|",
              *rows, "",
              f"Versions, each over the stages that imported it; the {prov.LOGIN}'s are what "
              "the launcher saw installed there, not what ran (**bold**: differs):", ""]
    for r in versions:
        text = f"{r['package']} {prov.describe_versions(r, recorded)}"
        lines.append(f"- **{text}**" if r["differs"] else f"- {text}")
    return "\n".join(lines) + "\n"


def cost_section(spec: ReportSpec) -> str:
    """"Cost: predicted against measured" (kd.runcost): what the launcher predicted (the run's
    manifest) against what the stages measured. Empty outside a run (no done marker) or for a
    run launched without a prediction."""
    from kd import runcost

    if not spec.done_marker:
        return ""
    comparison = runcost.compare(Path(spec.done_marker).parent.parent)  # RUN/stages/report.done
    return runcost.markdown(comparison) if comparison else ""


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _metrics_line(rec: dict, extra: list[str]) -> str:
    """Which score each extra task reports, when it is not plain accuracy."""
    named = []
    for key in extra:
        metric = rec["groups"][key].get("metric", results.PRIMARY_MC)
        if metric != results.PRIMARY_MC:
            name, _, filt = metric.partition(",")
            named.append(f"{key}: {name}" + (f" ({filt} filter)" if filt != "none" else ""))
    return ("Scores are accuracy (acc) except " + "; ".join(named) + ".") if named else ""


def _settings_line(rec: dict) -> str:
    s = rec.get("settings") or {}
    shots = "?" if s.get("num_fewshot") is None else s["num_fewshot"]
    limit = "all questions" if s.get("limit") is None else f"limit {s['limit']} per subject"
    n = rec["groups"]["mmlu"]["n"]
    parts = [f"{shots}-shot", limit, f"{n if n is not None else '?'} questions"]
    parts += [f"{k} {s[k]}" for k in ("dtype", "device") if s.get(k)]
    versions = rec.get("versions") or {}
    if versions.get("lm_eval"):
        parts.append(f"lm-eval {versions['lm_eval']}")
    cache = rec.get("cache") or {}
    if cache.get("hit"):
        parts.append("from the teacher cache")
    model = rec.get("model") or "unknown model"
    return f"`{model}` ({', '.join(parts)})"


def _canonical(value: object) -> str:
    import json

    return json.dumps(value, sort_keys=True, default=str)


def _describe(value: object) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in sorted(value.items())) or "none"
    return "none" if value is None else str(value)


def _finite(value: object) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _nan(value: float | None) -> float:
    return math.nan if value is None else float(value)
