"""Where jobs run: one small protocol (``base.py``), a SLURM implementation (``slurm.py``, the
only module that runs SLURM commands) and a local one (``local.py``).

``launch.submit`` (the one skip / adopt / record loop), ``launch.start``, ``launch.status``,
``launch.sweep`` and ``launch.preflight`` reach a scheduler only through a :class:`Backend`,
picked here by name (``cluster.executor``, or the executor a run's manifest recorded).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from launch.backends.base import (
    ACTIVE,
    COMPLETED,
    FAILED,
    REQUEUE_CAUSE,
    Backend,
    Launched,
    SubmitError,
    log_path,
)

__all__ = ["ACTIVE", "COMPLETED", "FAILED", "REQUEUE_CAUSE", "Backend", "Launched",
           "SubmitError", "log_path", "get", "for_cluster", "for_manifest"]

def get(executor: str, **kw: Any) -> Backend:
    """The backend of a cluster profile's ``executor`` (``slurm`` or ``local``). ``kw``
    (cluster, run_dir, run_name) binds it to one launch; status and cancel need none."""
    if executor == "slurm":
        from launch.backends.slurm import SlurmBackend

        return SlurmBackend(**kw)
    if executor == "local":
        from launch.backends.local import LocalBackend

        return LocalBackend(**kw)
    raise ValueError(f"cluster.executor={executor!r}: not a backend; use slurm or local")


def for_cluster(cluster, run_dir: Path | None = None, run_name: str = "") -> Backend:
    return get(cluster.executor, cluster=cluster, run_dir=run_dir, run_name=run_name)


def for_manifest(manifest: dict) -> Backend:
    """The backend a run was launched with, from its manifest (a local run's jobs ended with
    their launch, so its backend knows none of them: the manifest's states stand)."""
    executor = (manifest.get("cluster") or {}).get("executor")
    return get("slurm" if executor == "slurm" else "local")
