"""A real torch process without CUDA (this machine): the provenance's CUDA fields are null with
the reason, torch's version is the installed one, and the compat set is what this process
activated (kd.compat.enabled, as a stage's call site does)."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import json, torch
from kd import compat, provenance
compat.enabled("bridge-export-rendezvous")
print(json.dumps(provenance.collect("export_hf", 0.0)))
"""


def test_cpu_torch_process_records_no_cuda_with_the_reason():
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True,
                         text=True, check=True, env={"PATH": "/usr/bin:/bin"}).stdout
    rec = json.loads(out.splitlines()[-1])
    assert rec["packages"]["torch"] == importlib.metadata.version("torch")
    assert "megatron-core" not in rec["packages"]  # not imported by this process: not listed
    cuda = rec["cuda"]
    assert cuda["available"] is False and cuda["gpus"] is None and cuda["driver"] is None
    assert cuda["reason"].startswith("CUDA not available")
    assert cuda["torch_cuda"] is None and "CPU build" in cuda["reason"]  # the +cpu wheel
    assert rec["compat"]["active"] == ["bridge-export-rendezvous"]
    assert rec["job"] is None and rec["rank"] == 0
