"""``RUN/manifest.json``: resolved config, versions, git revision, job ids, stage states.

It is rewritten atomically (temp file + rename) every time a job id becomes known or a stage
changes state, so ``status``/``cancel``/a relaunch work from any later shell. Secrets never
reach it: configs cannot hold them (launch.config rejects secret-looking env keys) and the
environment is not recorded.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from launch.config import REPO

PACKAGES = ("kdlaunch", "submitit", "torch", "megatron-core", "megatron-bridge", "nvidia-modelopt",
            "lm-eval", "transformers", "pandas")


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def config_hash(experiment: dict) -> str:
    """Identity of a run: the resolved experiment (WHAT). The cluster (WHERE) may change."""
    blob = json.dumps(experiment, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def package_versions() -> dict[str, str | None]:
    """Installed versions, read from package metadata (nothing heavy is imported)."""
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_revision() -> str | None:
    try:
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("-dirty" if dirty else "")


def read(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); it was not written by kdlaunch or was "
                         f"edited by hand: restore it or use a new --run-dir") from e


def write(path: Path, manifest: dict[str, Any]) -> None:
    path = Path(path)
    manifest["updated"] = now()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)


def new(run_dir: Path, experiment: dict, cluster: dict) -> dict[str, Any]:
    return {
        "kdlaunch_manifest": 1,
        "run_dir": str(run_dir),
        "created": now(),
        "updated": now(),
        "config_hash": config_hash(experiment),
        "experiment": experiment,
        "cluster": cluster,
        "git_revision": git_revision(),
        "versions": package_versions(),
        "launches": [],
        "stages": {},
    }
