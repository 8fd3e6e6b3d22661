"""Simple stage functions for launcher tests on the real SLURM cluster.

Each records when it started and ended (and where it ran) under RUN/stub/, then writes the
stage's done marker like a real stage. ``KD_STUB_FAIL=<stage>`` in the job environment makes
that stage raise.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path


def run(spec):
    marker = Path(spec.done_marker)
    stage = marker.stem
    run_dir = marker.parents[1]
    rec = {"stage": stage, "start": time.time(), "host": socket.gethostname(),
           "slurm_job": os.environ.get("SLURM_JOB_ID"), "node": os.environ.get("SLURMD_NODENAME")}
    print(f"stub {stage} running on {rec['node']}", flush=True)
    time.sleep(float(os.environ.get("KD_STUB_SLEEP", "1")))
    if os.environ.get("KD_STUB_FAIL") == stage:
        raise RuntimeError(f"stub stage {stage} failed on purpose")
    rec["end"] = time.time()
    out = run_dir / "stub"
    out.mkdir(exist_ok=True)
    (out / f"{stage}.json").write_text(json.dumps(rec))
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("done\n")
    return rec
