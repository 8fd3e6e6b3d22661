"""Numbers of finished launcher runs: tokens/s/GPU, step time, peak memory per rank, KD loss,
export and eval results, read from the run directory (manifest, markers, per-task job logs).

    python scripts/gpu/kd_log_stats.py runs/tp4 [runs/tp2 ...] [--json out.json]

Step time is Megatron's "elapsed time per iteration (ms)"; the steady value is the median over
iterations after ``--warmup`` (torch.compile and allocator warm-up happen in the first ones).
tokens/s/GPU = global_batch_size * seq_length / steady step time / world size.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

STEP = re.compile(
    r"iteration\s+(\d+)/\s*\d+ \|.*?elapsed time per iteration \(ms\): ([0-9.]+)"
    r".*?total loss: ([0-9.Ee+-]+)"
)


def parse_log_text(text: str) -> dict:
    """{iteration: (ms, loss)} from Megatron's lines, and every KD_PEAK_MEMORY record."""
    steps = {int(m.group(1)): (float(m.group(2)), float(m.group(3))) for m in STEP.finditer(text)}
    memory = [
        json.loads(line.split(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("KD_PEAK_MEMORY ")
    ]
    return {"steps": steps, "memory": memory}


def step_stats(steps: dict, warmup: int) -> dict:
    steady = [ms for it, (ms, _) in sorted(steps.items()) if it > warmup]
    if not steady:
        return {}
    its = sorted(steps)
    return {
        "iterations": len(steps),
        "first_iteration_ms": steps[its[0]][0],
        "step_ms_median": round(statistics.median(steady), 1),
        "step_ms_mean": round(statistics.fmean(steady), 1),
        "step_ms_min": round(min(steady), 1),
        "loss_first": steps[its[0]][1],
        "loss_last": steps[its[-1]][1],
    }


def run_stats(run_dir: Path, warmup: int = 5) -> dict:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    spec = manifest["stages"]["distill"]["spec"]
    done_file = run_dir / "stages" / "distill.done"
    done = json.loads(done_file.read_text()) if done_file.is_file() else {}
    text = "\n".join(
        p.read_text() for p in sorted((run_dir / "jobs" / "distill").glob("*_log.out"))
    )
    parsed = parse_log_text(text)
    out = {
        "run_dir": str(run_dir),
        "tp": spec["tp"],
        "world_size": done.get("world_size"),
        "seq_length": spec["seq_length"],
        "micro_batch_size": spec["micro_batch_size"],
        "global_batch_size": spec["global_batch_size"],
        "distill_wall_s": done.get("wall_s"),
        **step_stats(parsed["steps"], warmup),
    }
    if out.get("step_ms_median") and out["world_size"]:
        tokens = spec["global_batch_size"] * spec["seq_length"]
        out["tokens_per_s_per_gpu"] = round(
            tokens / (out["step_ms_median"] / 1e3) / out["world_size"]
        )
    by_rank = {m["rank"]: m for m in parsed["memory"]}
    out["peak_allocated_gib_per_rank"] = [by_rank[r]["allocated_gib"] for r in sorted(by_rank)]
    out["peak_reserved_gib_per_rank"] = [by_rank[r]["reserved_gib"] for r in sorted(by_rank)]
    export = run_dir / "export" / "hf" / ".kdlaunch-export.json"
    if export.is_file():
        out["export"] = json.loads(export.read_text())
    out["eval"] = {}
    for path in sorted((run_dir / "eval").glob("*.json")):
        record = json.loads(path.read_text())
        groups = record.get("groups", {})
        out["eval"][path.stem] = {
            "mmlu_acc": groups.get("mmlu", {}).get("acc"),
            "model": record.get("model"),
            "model_kind": record.get("model_kind"),
            "eval_seconds": record.get("eval_seconds"),
            "cache_hit": (record.get("cache") or {}).get("hit"),
        }
    out["stages"] = {k: v.get("state") for k, v in manifest["stages"].items()}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dirs", nargs="+", type=Path)
    p.add_argument("--warmup", type=int, default=5, help="iterations left out of the steady value")
    p.add_argument("--json", type=Path, help="also write the list of results here")
    args = p.parse_args(argv)
    results = [run_stats(d, args.warmup) for d in args.run_dirs]
    for r in results:
        print("KD_RUN_STATS " + json.dumps(r))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
