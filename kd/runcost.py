"""Predicted against measured cost of one run (stdlib only: the report stage, ``status`` and the
sweep trend read it).

The prediction is what the launcher recorded at launch (``manifest.json`` ``cost``, written by
launch/cost.py ``record``). The measurements are what the stages wrote:

* step time: the median of Megatron's "elapsed time per iteration (ms)" lines in the distill
  job's logs (``RUN/jobs/distill/*_log.out``), the first logged interval left out (warm-up);
  tokens/s/GPU from it, the global batch and the world size;
* peak memory: the largest ``KD_PEAK_MEMORY`` allocated GiB of any rank (GPU runs only);
* stage wall times: each done marker's ``provenance.wall_s`` (kd.provenance: the stage's last
  allocation, module imports included); the GPU-hours from them and the job's GPUs.

``compare(run_dir)`` gives the rows (``Row``: predicted, measured, measured / predicted);
``markdown`` the report's section, ``status_lines`` the lines under ``status``'s table,
``trend_rows`` what a sweep's history keeps per night.
"""

from __future__ import annotations

import json
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

STEP = re.compile(r"iteration\s+(\d+)/\s*\d+ \|.*?elapsed time per iteration \(ms\): ([0-9.]+)")
PEAK = "KD_PEAK_MEMORY "


@dataclass(frozen=True)
class Row:
    key: str  # step_s, tokens_per_s_per_gpu, peak_memory_gib, wall_s:<stage>, gpu_hours
    label: str
    predicted: float | None
    measured: float | None
    unit: str  # s, tokens/s, GiB, GPU-h
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.predicted and self.measured is not None and self.predicted > 0:
            return self.measured / self.predicted
        return None


@dataclass(frozen=True)
class Comparison:
    rows: tuple[Row, ...]
    gpu: str  # the prediction's GPU kind, as recorded
    predicted_at: str | None

    def row(self, key: str) -> Row | None:
        return next((r for r in self.rows if r.key == key), None)


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def distill_logs(run_dir: Path) -> list[Path]:
    return sorted((Path(run_dir) / "jobs" / "distill").glob("*_log.out"))


def step_times(texts: list[str]) -> dict[int, float]:
    """{iteration: ms} from Megatron's log lines (a redone iteration: the later line)."""
    out: dict[int, float] = {}
    for text in texts:
        for m in STEP.finditer(text):
            out[int(m.group(1))] = float(m.group(2))
    return out


def steady_step_s(steps: dict[int, float]) -> float | None:
    """Median step seconds, the first logged interval (warm-up) left out when others exist."""
    its = sorted(steps)
    steady = [steps[i] for i in its[1:]] or [steps[i] for i in its]
    return statistics.median(steady) / 1e3 if steady else None


def peak_memory(texts: list[str]) -> float | None:
    peaks = []
    for text in texts:
        for line in text.splitlines():
            if line.startswith(PEAK):
                try:
                    peaks.append(float(json.loads(line[len(PEAK):])["allocated_gib"]))
                except (ValueError, KeyError, TypeError):
                    continue
    return max(peaks) if peaks else None


def measured(run_dir: Path) -> dict:
    """What the stages of ``run_dir`` wrote: step_s, tokens_per_s_per_gpu, peak_memory_gib,
    and per stage its wall seconds and restart count (None where not written yet)."""
    run = Path(run_dir)
    texts = []
    for p in distill_logs(run):
        try:
            texts.append(p.read_text(errors="replace"))
        except OSError:
            continue
    step = steady_step_s(step_times(texts))
    done = _read_json(run / "stages" / "distill.done") or {}
    out: dict = {"step_s": step, "peak_memory_gib": peak_memory(texts), "stages": {}}
    tokens, world = done.get("tokens_per_iteration"), done.get("world_size")
    out["tokens_per_s_per_gpu"] = (tokens / step / world) if step and tokens and world else None
    for marker in sorted((run / "stages").glob("*.done")):
        prov = (_read_json(marker) or {}).get("provenance") or {}
        wall = prov.get("wall_s")
        job = prov.get("job") or {}
        out["stages"][marker.stem] = {
            "wall_s": float(wall) if isinstance(wall, (int, float)) else None,
            "restarts": job.get("restart_count")}
    return out


def compare(run_dir: Path, manifest: dict | None = None) -> Comparison | None:
    """Predicted (the manifest's ``cost``) against measured; None when the run recorded no
    prediction (launched before it existed)."""
    run = Path(run_dir)
    manifest = manifest if manifest is not None else _read_json(run / "manifest.json")
    cost = (manifest or {}).get("cost")
    if not isinstance(cost, dict):
        return None
    got = measured(run)
    d = cost.get("distill") or {}
    rows = [
        Row("step_s", "distill step time", d.get("step_s"), got["step_s"], "s"),
        Row("tokens_per_s_per_gpu", "tokens/s per process (CPU)" if cost.get("gpu_kind") == "cpu"
            else "tokens/s/GPU", d.get("tokens_per_s_per_gpu"),
            got["tokens_per_s_per_gpu"], "tokens/s"),
        Row("peak_memory_gib", "peak memory per GPU", d.get("peak_memory_gib"),
            got["peak_memory_gib"], "GiB",
            "" if d.get("peak_memory_gib") is not None else "not estimated without GPUs"),
    ]
    stages = cost.get("stages") or {}
    gpu_h_pred = gpu_h_meas = 0.0
    complete = True
    for stage, p in stages.items():
        m = got["stages"].get(stage) or {}
        wall = m.get("wall_s")
        note = ""
        if m.get("restarts"):
            note = f"{m['restarts']} restart(s): the last allocation's time"
        rows.append(Row(f"wall_s:{stage}", f"{stage} wall time", p.get("seconds"), wall, "s",
                        note))
        gpus = p.get("gpus") or 0
        if p.get("seconds") is not None:
            gpu_h_pred += p["seconds"] * gpus / 3600
        if wall is None:
            complete = complete and stage == "report"
        else:
            gpu_h_meas += wall * gpus / 3600
    if cost.get("gpu_kind") != "cpu":
        rows.append(Row("gpu_hours", "GPU-hours (all stages)", gpu_h_pred,
                        gpu_h_meas if complete else None, "GPU-h",
                        "" if complete else "stages without a measurement yet"))
    return Comparison(tuple(rows), str(cost.get("gpu_name") or cost.get("gpu_kind") or "?"),
                      cost.get("predicted"))


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "s":
        if value < 60:
            return f"{value:.3g} s"
        s = int(round(value))
        return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
    if unit == "tokens/s":
        return f"{value:,.0f}"
    if unit == "GiB":
        return f"{value:.2f} GiB"
    return f"{value:.3f}"


def markdown(cmp: Comparison) -> str:
    """The report's section."""
    lines = ["## Cost: predicted against measured", "",
             f"Predicted at launch (launch/cost.py, {cmp.gpu}"
             + (f", {cmp.predicted_at}" if cmp.predicted_at else "")
             + "); measured from the stages' logs and done markers. Ratio = measured / "
             "predicted: above 1 for a time or memory, below 1 for tokens/s, is slower or "
             "larger than predicted.", "",
             "| Quantity | Predicted | Measured | Ratio | Note |", "|---|---|---|---|---|"]
    for r in cmp.rows:
        ratio = "-" if r.ratio is None else f"{r.ratio:.2f}"
        lines.append(f"| {r.label} | {fmt(r.predicted, r.unit)} | {fmt(r.measured, r.unit)} | "
                     f"{ratio} | {r.note} |")
    return "\n".join(lines) + "\n"


def status_lines(cmp: Comparison) -> list[str]:
    """Compact lines for ``status`` (only what has been measured)."""
    parts = []
    for r in cmp.rows:
        if r.ratio is None:
            continue
        name = r.label.replace(" wall time", "")
        parts.append(f"{name} {fmt(r.predicted, r.unit)} -> {fmt(r.measured, r.unit)} "
                     f"({r.ratio:.2f}x)")
    if not parts:
        return ["cost: predicted at launch; nothing measured yet"]
    return ["cost, predicted -> measured (measured / predicted):"] + [f"    {p}" for p in parts]


TREND_KEYS = ("step_s", "tokens_per_s_per_gpu", "wall_s:distill", "gpu_hours")


def trend_rows(cmp: Comparison, **key) -> list[dict]:
    """One history row per tracked quantity that was both predicted and measured."""
    out = []
    for r in cmp.rows:
        if r.key in TREND_KEYS and r.ratio is not None:
            out.append({**key, "quantity": r.key, "label": r.label, "predicted": r.predicted,
                        "measured": r.measured, "ratio": r.ratio})
    return out
