"""Experiment (WHAT) and cluster (WHERE) configs: typed, validated at load time.

Experiments never name a partition; clusters never name a model. They meet in
``launch.plan``. Load with ``load_experiment(path, overrides)`` / ``load_cluster(name_or_path,
overrides)``; overrides are dotted ``key=value`` strings (``train.lr=3e-4``,
``cluster.partition=batch`` — the ``cluster.`` prefix is routed by the CLI).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kd.sections import (  # noqa: F401 - re-exported: the experiment schema
    EVAL_DTYPES,
    KD,
    Data,
    Eval,
    Experiment,
    Export,
    ModelRef,
    Source,
    Train,
)
from launch.schema import ConfigError, apply_override, build, parse_override, read_yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTERS_DIR = REPO / "configs" / "clusters"
EXPERIMENTS_DIR = REPO / "configs" / "experiments"


# ---------------------------------------------------------------- experiment (WHAT)
# Declared once, with each check beside its field, in the stdlib-only kd/sections.py (the stage
# specs of kd/specs.py hold the same section objects). Re-exported here for the launcher.
# ---------------------------------------------------------------- cluster (WHERE)
@dataclass(frozen=True)
class Container:
    image: str | None = None  # pyxis/enroot image, e.g. nvcr.io#nvidia/nemo:26.02
    mounts: tuple[str, ...] = ()  # "src:dst[:flags]"
    workdir: str | None = None


@dataclass(frozen=True)
class StageResources:
    """Time limits (minutes) and CPU memory for the non-training stages (one task each)."""

    prepare_data_min: int = 240
    export_min: int = 120
    eval_min: int = 240
    report_min: int = 15
    cpus_per_task: int = 8
    mem_gb: int | None = None


@dataclass(frozen=True)
class Cluster:
    name: str
    executor: str = "slurm"  # slurm | local
    partition: str | None = None  # None on the generic profile: $SBATCH_PARTITION or the site default
    account: str | None = None  # None: $SBATCH_ACCOUNT or the site default
    qos: str | None = None
    nodes: int = 1  # nodes of the distill job
    gpus_per_node: int = 8
    tasks_per_node: int | None = None  # default: one task per GPU (1 when there are no GPUs)
    cpus_per_task: int = 8
    mem_gb: int | None = None
    time_min: int = 240  # distill job time limit, per allocation (requeued on timeout)
    max_requeues: int = 5  # timeouts a distill job may be requeued for
    signal_delay_s: int = 300  # USR2 this long before the time limit: time to save a checkpoint
    save_time_s: int = 120  # how long one checkpoint save takes here (checked against the limit)
    gpu_eval: bool = True  # evals ask for one GPU (false: CPU evals)
    gpu_memory_gib: float | None = None  # per GPU; when set, pre-flight checks the KD estimate
    stages: StageResources = field(default_factory=StageResources)
    container: Container = field(default_factory=Container)
    env: dict[str, str] = field(default_factory=dict)
    setup: tuple[str, ...] = ()
    srun_args: tuple[str, ...] = ()
    additional_parameters: dict[str, str] = field(default_factory=dict)
    python: str | None = None  # command that starts Python on the nodes (default: this one)
    eval_cache_dir: str | None = None  # teacher-eval cache on the shared filesystem


EXECUTORS = ("slurm", "local")
SLURM_TIME = re.compile(r"(\d+|\d+:\d{1,2}|\d+:\d{1,2}:\d{1,2}|\d+-\d{1,2}|\d+-\d{1,2}:\d{1,2}"
                        r"|\d+-\d{1,2}:\d{1,2}:\d{1,2}|infinite|unlimited|UNLIMITED|INFINITE)")
SECRET_WORDS = {"TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIALS"}


def _looks_secret(env_key: str) -> bool:
    parts = set(env_key.upper().split("_"))
    return bool(parts & SECRET_WORDS) or env_key.upper().endswith("_KEY")


# ---------------------------------------------------------------- loading
def _read_yaml(path: Path) -> dict:
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def _with_overrides(data: dict, overrides: list[str]) -> dict:
    for text in overrides:
        keys, value = parse_override(text)
        apply_override(data, keys, value)
    return data


def named_yaml(ref: str, directory: Path) -> Path:
    """``ref`` as given when it is a file or ends in .yaml/.yml, else ``directory/<ref>.yaml``."""
    path = Path(ref)
    if path.exists() or path.suffix in (".yaml", ".yml"):
        return path
    return directory / f"{ref}.yaml"


def resolve_cluster_path(ref: str) -> Path:
    path = Path(ref)
    if path.suffix in (".yaml", ".yml") or os.sep in ref:
        return path
    candidate = CLUSTERS_DIR / f"{ref}.yaml"
    if not candidate.exists():
        names = sorted(p.stem for p in CLUSTERS_DIR.glob("*.yaml"))
        raise ConfigError(f"--cluster {ref!r}: no such profile; choose one of {', '.join(names)} "
                          f"or give a path to a cluster YAML")
    return candidate


def experiment_dict(ref: str, overrides: list[str] = ()) -> dict:
    return _with_overrides(_read_yaml(named_yaml(ref, EXPERIMENTS_DIR)), list(overrides))


def cluster_dict(ref: str, overrides: list[str] = ()) -> dict:
    return _with_overrides(_read_yaml(resolve_cluster_path(ref)), list(overrides))


def load_experiment(ref: str, overrides: list[str] = ()) -> Experiment:
    return build(Experiment, experiment_dict(ref, overrides), "")  # checks: kd/sections.py


def load_cluster(ref: str, overrides: list[str] = ()) -> Cluster:
    cl = build(Cluster, cluster_dict(ref, overrides), "cluster")
    validate_cluster(cl)
    return cl


# ---------------------------------------------------------------- value checks (no I/O)
def _positive(value: Any, path: str, allow_zero: bool = False) -> None:
    if value is None:
        return
    ok = value >= 0 if allow_zero else value > 0
    if not ok:
        raise ConfigError(f"{path}={value!r}: must be {'>= 0' if allow_zero else '> 0'}")


def validate_cluster(cl: Cluster) -> None:
    if cl.executor not in EXECUTORS:
        raise ConfigError(f"cluster.executor={cl.executor!r}: choose one of {', '.join(EXECUTORS)}")
    for name in ("nodes", "cpus_per_task", "time_min", "signal_delay_s"):
        _positive(getattr(cl, name), f"cluster.{name}")
    _positive(cl.gpus_per_node, "cluster.gpus_per_node", allow_zero=True)
    _positive(cl.tasks_per_node, "cluster.tasks_per_node")
    _positive(cl.max_requeues, "cluster.max_requeues", allow_zero=True)
    if cl.executor == "local" and cl.nodes != 1:
        raise ConfigError(f"cluster.nodes={cl.nodes}: the local executor runs on one machine; "
                          f"set cluster.nodes=1")
    if cl.signal_delay_s >= cl.time_min * 60:
        raise ConfigError(f"cluster.signal_delay_s={cl.signal_delay_s} must be shorter than the "
                          f"time limit cluster.time_min={cl.time_min} min")
    if cl.save_time_s > cl.signal_delay_s:
        raise ConfigError(f"cluster.signal_delay_s={cl.signal_delay_s} cannot hold one checkpoint "
                          f"save (cluster.save_time_s={cl.save_time_s}): raise signal_delay_s")
    _positive(cl.save_time_s, "cluster.save_time_s", allow_zero=True)
    _positive(cl.mem_gb, "cluster.mem_gb", allow_zero=True)  # 0: all of the node (--mem=0)
    _positive(cl.gpu_memory_gib, "cluster.gpu_memory_gib")
    st = cl.stages
    for name in ("prepare_data_min", "export_min", "eval_min", "report_min", "cpus_per_task"):
        _positive(getattr(st, name), f"cluster.stages.{name}")
    _positive(st.mem_gb, "cluster.stages.mem_gb", allow_zero=True)
    for key, value in cl.additional_parameters.items():
        if key.replace("_", "-") in ("time", "time-min", "t") and not SLURM_TIME.fullmatch(value):
            raise ConfigError(f"cluster.additional_parameters.{key}={value!r}: not a SLURM time "
                              f"(MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS); better, set "
                              f"cluster.time_min")
    for name in ("name", "partition", "account", "qos"):
        value = getattr(cl, name)
        if value is not None and not value.strip():
            raise ConfigError(f"cluster.{name} is empty: give a name or remove the key")
    for key in cl.env:
        if not key.replace("_", "").isalnum() or key[0].isdigit():
            raise ConfigError(f"cluster.env.{key}: not a valid environment variable name")
        if _looks_secret(key):
            raise ConfigError(f"cluster.env.{key}: looks like a secret; configs are copied into "
                              f"manifest.json and sbatch files. Export it in your shell instead "
                              f"(jobs inherit the submitting environment) and remove it here")
    for mount in cl.container.mounts:
        if ":" not in mount:
            raise ConfigError(f"cluster.container.mounts: {mount!r} is not SRC:DST[:FLAGS]")


def tasks_per_node(cl: Cluster) -> int:
    if cl.tasks_per_node:
        return cl.tasks_per_node
    return cl.gpus_per_node or 1
