"""``RUN/manifest.json``: resolved config, versions, git revision, job ids, stage states.

It is rewritten atomically (temp file + rename) every time a job id becomes known or a stage
changes state, so ``status``/``cancel``/a relaunch work from any later shell. Secrets never
reach it: launch.shell refuses them (by key and by value) before a launch starts, ``write``
checks again, and the environment is not recorded.
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

from launch import shell
from launch.config import REPO
from launch.schema import ConfigError

VERSION = 1

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


class ManifestError(ConfigError):
    """A manifest.json that cannot be trusted; the message names the file and the fix."""


def read(path: Path) -> dict | None:
    """The manifest at ``path`` (None when there is none), validated: kdlaunch's, this version,
    the expected shape. Anything else is a :class:`ManifestError`, never a traceback."""
    path = Path(path)
    fix = "restore it from a backup, or launch into a new --run-dir (the old one is kept)"
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise ManifestError(f"{path} is a directory, not a manifest file; {fix}") from None
    except OSError as e:
        raise ManifestError(f"cannot read {path}: {e.strerror}; check its permissions") from e
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ManifestError(f"{path} is not valid JSON (truncated or edited by hand?: "
                            f"{str(e)[:200]}); {fix}") from None
    if isinstance(data, dict) and "kdlaunch_sweep" in data:  # a sweep night's manifest
        if not isinstance(data.get("launches"), list):
            raise ManifestError(f"{path}: 'launches' is missing or not a list; {fix}")
        return data
    if not isinstance(data, dict) or "kdlaunch_manifest" not in data:
        raise ManifestError(f"{path} is not a kdlaunch manifest (no 'kdlaunch_manifest' key); "
                            f"this directory belongs to something else: use a new --run-dir")
    version = data["kdlaunch_manifest"]
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ManifestError(f"{path}: kdlaunch_manifest={version!r} is not a version number; {fix}")
    if version > VERSION:
        raise ManifestError(f"{path}: written by a newer kdlaunch (manifest version {version}, "
                            f"this one reads {VERSION}); update kdlaunch to use this run")
    for key, kind in (("stages", dict), ("launches", list), ("experiment", dict)):
        if not isinstance(data.get(key), kind):
            raise ManifestError(f"{path}: '{key}' is missing or not a {kind.__name__}; {fix}")
    for stage, rec in data["stages"].items():
        if not isinstance(rec, dict):
            raise ManifestError(f"{path}: stages.{stage} is not a mapping; {fix}")
        if rec.get("job_id") is not None and not isinstance(rec["job_id"], (str, int)):
            raise ManifestError(f"{path}: stages.{stage}.job_id={rec['job_id']!r} is not a "
                                f"job id; {fix}")
    return data


def write(path: Path, manifest: dict[str, Any]) -> None:
    path = Path(path)
    shell.refuse_secrets(manifest, "manifest")  # the last gate: checked before any job exists
    manifest["updated"] = now()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)


def new(run_dir: Path, experiment: dict, cluster: dict) -> dict[str, Any]:
    return {
        "kdlaunch_manifest": VERSION,
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
