"""Sweep trend report: each member's scores over nights, tonight against the previous night,
and the regression alarm (login-node safe: pandas + matplotlib Agg, no torch).

Input is the sweep history (``launch/history.py``: one row per date x member x task with
``acc`` and ``acc_stderr`` as fractions). A member regresses on a task when its score dropped
by more than ``z`` combined stderrs since the member's previous night in the history:
``prev - cur > z * sqrt(se_prev**2 + se_cur**2)`` (``min_drop_points`` when a stderr is
missing). Only the tasks listed for the alarm can raise it; other drops are shown, not alarmed.

Cost over nights (``record_costs``, ``<root>/<sweep>/cost_history.csv``): each member's
measured / predicted ratio (kd.runcost: step time, tokens/s/GPU, distill wall time, GPU-hours)
per night. A time ratio more than ``SLOWDOWN`` above the member's previous night is flagged at
the top of the report (a slower cluster or slower code shows up like a score drop; it does not
change the exit code: timings vary more than scores on shared machines).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from kd import results

REGRESSION = "REGRESSION"


def _nan(v) -> float:
    return math.nan if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def compare(hist: pd.DataFrame, date: str, *, z: float = 2.0, tasks=("mmlu",),
            min_drop_points: float = 1.0) -> pd.DataFrame:
    """Tonight (``date``) against each member's previous night, one row per member x task."""
    cols = ["member", "task", "label", "prev_date", "prev", "cur", "delta_points",
            "threshold_points", "status", "config_changed"]
    tonight = hist[hist["date"] == date]
    rows = []
    for (member, task), cur in tonight.groupby(["member", "task"], sort=True):
        cur = cur.iloc[-1]
        earlier = hist[(hist["member"] == member) & (hist["task"] == task) & (hist["date"] < date)]
        row = {"member": member, "task": task, "label": results.label(task), "prev_date": None,
               "prev": math.nan, "cur": 100 * cur["acc"], "delta_points": math.nan,
               "threshold_points": math.nan, "status": "first night", "config_changed": False}
        if not earlier.empty:
            prev = earlier.sort_values("date").iloc[-1]
            se = math.hypot(_nan(prev["acc_stderr"]), _nan(cur["acc_stderr"]))
            threshold = min_drop_points if math.isnan(se) else 100 * z * se
            delta = 100 * (cur["acc"] - prev["acc"])
            row.update(prev_date=prev["date"], prev=100 * prev["acc"], delta_points=delta,
                       threshold_points=threshold, status=_status(delta, threshold, task in tasks),
                       config_changed=prev["config_hash"] != cur["config_hash"])
        rows.append(row)
    order = {t: i for i, t in enumerate(_task_order(hist))}
    members = {m: i for i, m in enumerate(dict.fromkeys(hist["member"]))}
    rows.sort(key=lambda r: (members[r["member"]], order[r["task"]]))
    return pd.DataFrame(rows, columns=cols)


def _status(delta: float, threshold: float, alarmed: bool) -> str:
    if -delta > threshold:
        return REGRESSION if alarmed else "dropped (not alarmed)"
    if delta > threshold:
        return "improved"
    return "within noise"


def regressions(comparison: pd.DataFrame) -> pd.DataFrame:
    return comparison[comparison["status"] == REGRESSION]


def _task_order(hist: pd.DataFrame) -> list[str]:
    present = list(dict.fromkeys(hist["task"]))
    return [k for k in results.GROUPS if k in present] + [k for k in present
                                                          if k not in results.GROUPS]


def member_table(hist: pd.DataFrame, member: str, nights: int = 10) -> pd.DataFrame:
    """Scores (points) of one member: rows = the last ``nights`` dates, columns = tasks."""
    rows = hist[hist["member"] == member]
    table = rows.pivot_table(index="date", columns="task", values="acc", aggfunc="last") * 100
    table = table[[t for t in _task_order(hist) if t in table.columns]].tail(nights)
    iters = rows.groupby("date")["iteration"].last()
    table.columns = [results.label(c) for c in table.columns]
    table.insert(0, "Iteration", [_fmt_iter(iters.get(d)) for d in table.index])
    table.index.name = "Date"
    return table


def _fmt_iter(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else str(int(v))


def _waiting(missing) -> dict[str, str]:
    """``missing`` as {member: where it stands}; a plain list of names says nothing more."""
    return dict(missing) if isinstance(missing, dict) else {m: "no results" for m in missing}


def markdown(hist: pd.DataFrame, date: str, comparison: pd.DataFrame, *, sweep: str,
             missing: dict[str, str] | list[str] = (), z: float = 2.0,
             plotted: bool = True, costs: pd.DataFrame | None = None) -> str:
    regs = regressions(comparison)
    missing = _waiting(missing)
    partial = f" (partial: {len(missing)} member(s) without results)" if missing else ""
    lines = [f"# Nightly sweep {sweep}: {date}{partial}", ""]
    if len(regs):
        lines.append(f"**ALARM: {len(regs)} regression(s)** (drop > {z:g} combined stderrs):")
        lines += [f"- {r.member} {r.label}: {r.prev:.2f} ({r.prev_date}) → {r.cur:.2f} "
                  f"({r.delta_points:+.2f} points, threshold {r.threshold_points:.2f})"
                  for r in regs.itertuples()]
    else:
        lines.append("No regression.")
    slow = slowdowns(costs, date) if costs is not None else []
    if slow:
        lines += ["", f"**Slower than predicted, more than last night** (measured / predicted "
                      f"up by more than {SLOWDOWN:.0%}):"] + [f"- {line}" for line in slow]
    if missing:
        lines += ["", "**No results tonight** (failed or still running); this report is "
                      "partial, run `check` again when they end:", ""]
        lines += [f"- {member}: {state}" for member, state in missing.items()]
    lines += ["", "## Tonight against the previous night", "", _comparison_md(comparison), "",
              "## Over nights (accuracy, points; iteration = selected checkpoint)"]
    for member in dict.fromkeys(hist["member"]):
        lines += ["", f"### {member}", "", md_table(member_table(hist, member).reset_index())]
    if costs is not None and not costs.empty:
        lines += ["", cost_section(costs, date)]
    if plotted:
        lines += ["", "![trend](trend.png)"]
    else:
        lines += ["", "(no scores in the history yet: nothing to plot)"]
    return "\n".join(lines) + "\n"


def _comparison_md(comparison: pd.DataFrame) -> str:
    if comparison.empty:
        return "(no results tonight)"
    show = comparison.rename(columns={"member": "Member", "label": "Task", "prev_date": "Previous",
                                      "prev": "Prev", "cur": "Tonight",
                                      "delta_points": "Δ points", "threshold_points": "Threshold",
                                      "status": "Status"})
    show["Status"] = [f"{s} (config changed)" if c else s
                      for s, c in zip(show["Status"], show["config_changed"], strict=True)]
    show = show[["Member", "Task", "Previous", "Prev", "Tonight", "Δ points", "Threshold",
                  "Status"]]
    return md_table(show)


def md_table(frame: pd.DataFrame) -> str:
    """A Markdown table (numbers with two decimals, NaN/None as '-'); no tabulate needed."""
    def cell(v) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "-"
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    head = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |"
              for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def plot(hist: pd.DataFrame, out: Path, *, sweep: str) -> Path | None:
    """One panel per task, one line per member over nights; None (nothing written) while the
    history holds no scores."""
    if hist.empty:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = _task_order(hist)
    ncols = min(3, len(tasks))
    nrows = math.ceil(len(tasks) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5 * ncols, 3.2 * nrows), squeeze=False)
    for ax, task in zip(axes.flat, tasks, strict=False):
        for member, rows in hist[hist["task"] == task].groupby("member", sort=False):
            rows = rows.sort_values("date")
            err = 100 * rows["acc_stderr"].astype(float).fillna(0.0)
            ax.errorbar(rows["date"], 100 * rows["acc"], yerr=err, marker="o", capsize=3,
                        label=member)
        ax.set_title(results.label(task))
        ax.set_ylabel("accuracy (points)")
        ax.tick_params(axis="x", rotation=30)
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"Nightly sweep {sweep}")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def write(hist: pd.DataFrame, date: str, out_dir: Path, *, sweep: str, z: float = 2.0,
          tasks=("mmlu",), min_drop_points: float = 1.0,
          missing: dict[str, str] | list[str] = (),
          costs: pd.DataFrame | None = None) -> tuple[Path, pd.DataFrame]:
    """Write ``trend.md`` + ``trend.png`` under ``out_dir``; return the Markdown path and the
    comparison (whose ``status == REGRESSION`` rows are the alarm). ``missing``: members
    without results tonight and where each stands; the report then says it is partial. With
    no scores at all yet, only the Markdown is written."""
    hist = hist[hist["sweep"] == sweep] if "sweep" in hist else hist
    hist = hist[hist["date"] <= date]  # the report of a night shows that night and before
    comparison = compare(hist, date, z=z, tasks=tasks, min_drop_points=min_drop_points)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plotted = plot(hist, out_dir / "trend.png", sweep=sweep) is not None
    md = out_dir / "trend.md"
    if costs is not None and not costs.empty:
        costs = costs[(costs["sweep"] == sweep) & (costs["date"] <= date)]
    md.write_text(markdown(hist, date, comparison, sweep=sweep, missing=missing, z=z,
                           plotted=plotted, costs=costs))
    return md, comparison


# ---------------------------------------------------------------- cost over nights
COST_KEY = ("date", "sweep", "member", "quantity")
COST_COLUMNS = (*COST_KEY, "label", "predicted", "measured", "ratio", "recorded")
SLOWDOWN = 0.25  # a time ratio this much above the member's previous night is flagged
SLOWER_IF_HIGHER = ("step_s", "wall_s:distill", "gpu_hours")  # ratios where higher is slower


def cost_history_file(sweep_root: Path) -> Path:
    return Path(sweep_root) / "cost_history.csv"


def read_costs(path: Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        return pd.DataFrame(columns=list(COST_COLUMNS))
    frame = pd.read_csv(path, dtype={"date": str, "member": str, "quantity": str})
    missing = sorted(set(COST_KEY) - set(frame.columns))
    if missing:
        raise ValueError(f"{path} lacks column(s) {', '.join(missing)}: it is not a kdlaunch "
                         f"cost history; move it away and run check again")
    return frame


def record_costs(sweep_root: Path, date: str, sweep: str,
                 run_dirs: dict[str, Path]) -> pd.DataFrame:
    """Add tonight's measured / predicted rows of every member (kd.runcost; a member without
    a prediction or a measurement adds none) to ``cost_history.csv``, replacing tonight's
    earlier rows; returns the whole history."""
    import os

    from kd import runcost

    rows = []
    for member, run_dir in run_dirs.items():
        cmp = runcost.compare(run_dir)
        if cmp is not None:
            rows += runcost.trend_rows(cmp, date=date, sweep=sweep, member=member,
                                       recorded=pd.Timestamp.now(tz="UTC").isoformat(
                                           timespec="seconds"))
    path = cost_history_file(sweep_root)
    old = read_costs(path)
    if not rows:
        return old
    new = pd.DataFrame(rows, columns=list(COST_COLUMNS))
    if not old.empty:
        keys = set(new[list(COST_KEY)].astype(str).itertuples(index=False, name=None))
        old = old[[tuple(r) not in keys
                   for r in old[list(COST_KEY)].astype(str).itertuples(index=False)]]
    out = pd.concat([f for f in (old, new) if not f.empty], ignore_index=True)
    out = out.sort_values(["date", "member", "quantity"], kind="stable", ignore_index=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    out.to_csv(tmp, index=False)
    os.replace(tmp, path)
    return out


def slowdowns(costs: pd.DataFrame, date: str) -> list[str]:
    """One line per member and time quantity whose ratio rose by more than ``SLOWDOWN`` since
    the member's previous night."""
    out = []
    if costs is None or costs.empty:
        return out
    for (member, quantity), rows in costs.groupby(["member", "quantity"], sort=False):
        if quantity not in SLOWER_IF_HIGHER:
            continue
        rows = rows.sort_values("date")
        cur = rows[rows["date"] == date]
        prev = rows[rows["date"] < date]
        if cur.empty or prev.empty:
            continue
        now, before = float(cur["ratio"].iloc[-1]), float(prev["ratio"].iloc[-1])
        if before > 0 and now > before * (1 + SLOWDOWN):
            out.append(f"{member} {cur['label'].iloc[-1]}: measured / predicted {now:.2f} "
                       f"tonight, {before:.2f} on {prev['date'].iloc[-1]} "
                       f"({now / before - 1:+.0%})")
    return out


def cost_section(costs: pd.DataFrame, date: str, nights: int = 10) -> str:
    """Measured / predicted per member and quantity over the last ``nights`` nights."""
    lines = ["## Cost: measured / predicted over nights", "",
             "Ratio of what the stages measured to what launch/cost.py predicted at launch "
             "(above 1: slower than predicted; tokens/s: below 1 is slower).", ""]
    for member, rows in costs.groupby("member", sort=False):
        table = rows.pivot_table(index="date", columns="label", values="ratio", aggfunc="last")
        table = table.tail(nights)
        table.index.name = "Date"
        lines += [f"### {member}", "", md_table(table.reset_index()), ""]
    return "\n".join(lines).rstrip() + "\n"
