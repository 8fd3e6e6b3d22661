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
from dataclasses import dataclass, field
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
    """The JSON form of a fresh manifest (:meth:`Manifest.create` wraps it)."""
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


@dataclass
class Manifest:
    """``RUN/manifest.json`` of one run, typed: a launch changes it only through these methods
    and writes it with :meth:`save` (atomically, secrets refused). :meth:`load` is the strict
    reader (:func:`read`: a bad file is a :class:`ManifestError`, exit 2); older manifests load
    too, keys this version does not know (``versions`` before ``login_node``) are kept as they
    were."""

    path: Path
    run_dir: str
    experiment: dict[str, Any]
    stages: dict[str, dict[str, Any]]  # stage -> record: module, deps, spec, folder, job_id, ...
    launches: list[dict[str, Any]]  # one entry per launch: submitted, skipped, adopted, ...
    config_hash: str | None = None
    cluster: dict[str, Any] = field(default_factory=dict)
    created: str | None = None
    updated: str | None = None
    git_revision: str | None = None
    login_node: dict[str, Any] | None = None
    cost: dict[str, Any] | None = None  # launch/cost.py record: the launch's prediction
    version: int = VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    _KEYS = ("run_dir", "created", "updated", "config_hash", "experiment", "cluster",
             "git_revision", "login_node", "launches", "stages", "cost")

    @classmethod
    def load(cls, path: Path) -> Manifest | None:
        """The run's manifest at ``path``, validated; None when there is none."""
        data = read(path)
        if data is None:
            return None
        if "kdlaunch_sweep" in data:
            raise ManifestError(f"{path} is a sweep night's manifest, not a run's; {FIX}")
        return cls.from_dict(data, Path(path))

    @classmethod
    def create(cls, path: Path, run_dir: Path, experiment: dict, cluster: dict) -> Manifest:
        """A new run's manifest (not written yet: :meth:`save`)."""
        return cls.from_dict(new(run_dir, experiment, cluster), Path(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: Path) -> Manifest:
        known = {k: data[k] for k in cls._KEYS if k in data}
        extra = {k: v for k, v in data.items() if k not in cls._KEYS and k != "kdlaunch_manifest"}
        known.setdefault("run_dir", str(Path(path).parent))
        known["cluster"] = known.get("cluster") or {}
        return cls(path=Path(path), version=data.get("kdlaunch_manifest", VERSION), extra=extra,
                   **known)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (the key order of :func:`new`, then ``cost``, then older keys)."""
        out: dict[str, Any] = {"kdlaunch_manifest": self.version}
        for key in self._KEYS:
            value = getattr(self, key)
            if key != "cost" or value is not None:
                out[key] = value
        out.update(self.extra)
        return out

    def save(self) -> None:
        """Write it atomically (temp file + rename); refuses a secret anywhere in it."""
        data = self.to_dict()
        write(self.path, data)
        self.updated = data["updated"]

    # ------------------------------------------------------------ a launch's changes
    def check_config(self, experiment: dict) -> None:
        """Refuse (ConfigError) a launch of another config into this run directory."""
        now_hash = config_hash(experiment)
        if self.config_hash != now_hash:
            raise ConfigError(f"--run-dir {self.path.parent} holds a run of a different config "
                              f"(hash {self.config_hash} there, {now_hash} now); use another "
                              f"--run-dir")

    def set_cluster(self, cluster: dict[str, Any]) -> None:
        """The profile of the latest launch (the cluster may change between launches)."""
        self.cluster = cluster

    def set_cost(self, record: dict[str, Any]) -> None:
        """The launch's cost prediction (launch/cost.py ``record``)."""
        self.cost = record

    def refresh(self) -> None:
        """Under the run's lock: take the job ids and launches a concurrent launch recorded."""
        disk = read(self.path)
        if disk and "kdlaunch_sweep" not in disk and disk.get("config_hash") == self.config_hash:
            self.stages, self.launches = disk["stages"], disk["launches"]

    def begin_launch(self, cluster_name: str, argv: list[str]) -> dict[str, Any]:
        """A new launch entry (filled in by the submit loop: submitted, skipped, adopted)."""
        entry: dict[str, Any] = {"time": now(), "cluster": cluster_name, "argv": list(argv),
                                 "submitted": [], "skipped": [], "adopted": []}
        self.launches.append(entry)
        return entry

    def stage(self, name: str) -> dict[str, Any]:
        """The record of stage ``name`` (an empty one for a stage not recorded yet)."""
        return self.stages.setdefault(name, {})

    def job_id(self, name: str) -> str | None:
        jid = self.stages.get(name, {}).get("job_id")
        return str(jid) if jid else None

    def state(self, name: str) -> str | None:
        return self.stages.get(name, {}).get("state")

    def plan_stage(self, name: str, **fields: Any) -> None:
        """What the graph says of a stage (module, deps, spec, folder)."""
        self.stage(name).update(fields)

    def record_job(self, name: str, job_id: str, log: str) -> None:
        """Stage ``name`` was just queued as ``job_id``: an earlier failure no longer applies."""
        rec = self.stage(name)
        rec.update(job_id=job_id, state="SUBMITTED", submitted=now(), log=log)
        rec.pop("error", None)
        rec.pop("finished", None)

    def mark(self, name: str, state: str, finished: bool = False, **fields: Any) -> None:
        """Stage ``name`` is in ``state`` (with ``finished``: ended now); ``fields``: job_id,
        log, error."""
        rec = self.stage(name)
        rec.update(state=state, **fields)
        if finished:
            rec["finished"] = now()
