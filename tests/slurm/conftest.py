"""Fixtures for tests against the real local SLURM cluster (scripts/slurm/start_cluster.sh).

`slurm_cluster` starts the cluster when `sinfo` does not answer, so
`python -m pytest tests/slurm` works on a machine where it is not running yet (as root; the
first start installs the Debian packages, about 25 s).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
START_SCRIPT = REPO / "scripts" / "slurm" / "start_cluster.sh"


def _sinfo_answers() -> bool:
    try:
        proc = subprocess.run(["sinfo", "-h"], capture_output=True, text=True, timeout=15)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0 and bool(proc.stdout.strip())


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    """A running local SLURM cluster; returns the start script's one-line summary."""
    if _sinfo_answers():
        return "already running"
    if os.geteuid() != 0:
        pytest.skip(f"no SLURM cluster and not root: run `sudo {START_SCRIPT.relative_to(REPO)}`")
    proc = subprocess.run(
        ["bash", str(START_SCRIPT)], capture_output=True, text=True, timeout=600
    )
    if proc.returncode != 0:
        pytest.fail(
            f"{START_SCRIPT.name} failed (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}",
            pytrace=False,
        )
    return proc.stdout.strip()


@pytest.fixture
def submitit_folder(slurm_cluster: str, tmp_path: Path) -> str:
    """A fresh submitit folder per test.

    Never reuse one across cluster rebuilds: a wiped StateSaveLocation restarts job ids at 1 and
    submitit would return the stale `<id>_0_result.pkl` of an earlier job.
    """
    return str(tmp_path / "submitit" / "%j")


@pytest.fixture
def slurm_executor(submitit_folder: str):
    """An AutoExecutor on the `debug` partition with small defaults; update_parameters() freely."""
    import submitit

    executor = submitit.AutoExecutor(folder=submitit_folder, cluster="slurm")
    executor.update_parameters(
        slurm_partition="debug",
        timeout_min=5,
        cpus_per_task=1,
        # torch on 4 virtual nodes x 4 CPUs overcommits the real cores: one thread per task
        slurm_setup=["export OMP_NUM_THREADS=1"],
    )
    return executor
