"""Stage functions for the fake-scheduler tier (tests/fakesched/test_launcher_logic.py).

Each run of a stage records when it started and ended under RUN/stub/<stage>.<n>.json (n: the
restart count), then writes the stage's done marker like a real stage. In the job environment,
``KD_STUB_SLEEP`` is the time a stage takes, ``KD_STUB_FAIL=<stage>`` makes that stage raise and
``KD_STUB_REQUEUE=<stage>`` makes its first allocation requeue itself the way submitit does on
USR2 (``scontrol requeue``, then the allocation ends).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path


def run(spec):
    marker = Path(spec.done_marker)
    stage = marker.stem
    run_dir = marker.parents[1]
    restart = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    rec = {"stage": stage, "start": time.time(), "restart": restart,
           "slurm_job": os.environ.get("SLURM_JOB_ID")}
    out = run_dir / "stub"
    out.mkdir(exist_ok=True)
    if os.environ.get("KD_STUB_REQUEUE") == stage and restart == 0:
        rec["end"] = time.time()
        (out / f"{stage}.{restart}.json").write_text(json.dumps(rec))
        subprocess.run(["scontrol", "requeue", os.environ["SLURM_JOB_ID"]], check=True)
        time.sleep(60)  # ended by the requeue
    time.sleep(float(os.environ.get("KD_STUB_SLEEP", "0.2")))
    if os.environ.get("KD_STUB_FAIL") == stage:
        raise RuntimeError(f"stub stage {stage} failed on purpose")
    rec["end"] = time.time()
    (out / f"{stage}.{restart}.json").write_text(json.dumps(rec))
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("done\n")
    return rec
