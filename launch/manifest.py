"""``RUN/manifest.json``: resolved config, the login node's versions, git revision, job ids,
stage states.

It is rewritten atomically (temp file + rename) every time a job id becomes known or a stage
changes state, so ``status``/``cancel``/a relaunch work from any later shell. Secrets never
reach it: launch.shell refuses them (by key and by value) before a launch starts, ``write``
checks again, and the environment is not recorded.

``cost`` is the launch's prediction (launch/cost.py ``record``: per stage the estimated wall
time, GPUs, GPU-hours and time limit, the distill step, tokens/s/GPU and peak memory), written
by every launch before its first job is queued; ``status`` and the report compare it with what
the stages measured (kd/runcost.py).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any

from launch import shell
from launch.config import REPO
from launch.schema import ConfigError

VERSION = 1

PACKAGES = ("kdlaunch", "submitit", "torch", "megatron-core", "megatron-bridge", "nvidia-modelopt",
            "lm-eval", "transformers", "datasets", "numpy", "pandas")


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def config_hash(experiment: dict) -> str:
    """Identity of a run: the resolved experiment (WHAT). The cluster (WHERE) may change."""
    blob = json.dumps(experiment, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def package_versions() -> dict[str, str | None]:
    """Versions installed on this (login) node, read from package metadata (nothing heavy is
    imported); the stages' own versions are in their done markers (kd.provenance)."""
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def login_node() -> dict[str, Any]:
    """What the launcher saw installed on the login node: NOT what the stages ran (a pyxis
    container or another venv on the compute nodes has its own versions; each stage records
    those in its done marker, kd.provenance). Older manifests keep the same under ``versions``."""
    return {"note": "versions installed where the launcher ran; what each stage ran is under "
                    "provenance in RUN/stages/<stage>.done (status --provenance)",
            "host": socket.gethostname(), "python": platform.python_version(),
            "versions": package_versions()}


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
        return _check_night(data, path)
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
    for key in ("config_hash", "run_dir"):
        if key in data and not isinstance(data[key], str):
            raise ManifestError(f"{path}: {key}={_short(data[key])} is not a string; {fix}")
    return data


FIX = "restore it from a backup, or launch into a new --run-dir (the old one is kept)"


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:80] + "..."


def _check_night(data: dict, path: Path) -> dict:
    """A sweep night's ``sweep.json`` (``launch/sweep.py``): the keys ``check`` and a relaunch
    read, of the right type."""
    fix = ("restore it from a backup, or move it away: `sweep.py check` then plans the night's "
           "members from the sweep file again")
    if not isinstance(data.get("launches"), list):
        raise ManifestError(f"{path}: 'launches' is missing or not a list; {fix}")
    members = data.get("members", {})
    if not isinstance(members, dict):
        raise ManifestError(f"{path}: members={_short(members)} is not a mapping of member -> "
                            f"record; {fix}")
    for name, rec in members.items():
        if not isinstance(rec, dict):
            raise ManifestError(f"{path}: members.{name} is not a mapping; {fix}")
        for key in ("run_dir", "config_hash"):
            if not isinstance(rec.get(key), str) or not rec[key]:
                what = "missing" if key not in rec else f"{_short(rec[key])}, not a string"
                raise ManifestError(f"{path}: members.{name}.{key} is {what}; {fix}")
    return data


_ABSENT = object()


def experiment_value(manifest: dict, path: Path, dotted: str, ok, what: str,
                     default: object = _ABSENT) -> object:
    """A value of the run's recorded experiment (``train.train_iters``), checked by ``ok``;
    ``default`` when a key is absent (a manifest of an older kdlaunch), else a
    :class:`ManifestError` naming the file and the key."""
    node: object = manifest.get("experiment")
    walked = "experiment"
    for part in dotted.split("."):
        if not isinstance(node, dict):
            raise ManifestError(f"{path}: {walked}={_short(node)} is not a mapping; {FIX}")
        walked += f".{part}"
        if part not in node:
            if default is _ABSENT:
                raise ManifestError(f"{path}: {walked} is missing; {FIX}")
            return default
        node = node[part]
    if not ok(node):
        raise ManifestError(f"{path}: {walked}={_short(node)}: expected {what}; {FIX}")
    return node


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
        "login_node": login_node(),
        "launches": [],
        "stages": {},
    }
