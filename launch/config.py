"""Experiment (WHAT) and cluster (WHERE) configs: typed, validated at load time.

Experiments never name a partition; clusters never name a model. They meet in
``launch.plan``. Load with ``load_experiment(path, overrides)`` / ``load_cluster(name_or_path,
overrides)``; overrides are dotted ``key=value`` strings (``train.lr=3e-4``,
``cluster.partition=batch`` — the ``cluster.`` prefix is routed by the CLI).
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kd.sections import (  # noqa: F401 - the experiment schema, re-exported
    EVAL_DTYPES,
    KD,
    Data,
    Eval,
    Experiment,
    Export,
    FieldError,
    ModelRef,
    Section,
    Source,
    Train,
    at_least,
    each,
    knob,
    one_of,
    positive,
)
from launch import shell
from launch.schema import ConfigError, apply_override, build, parse_override, read_yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTERS_DIR = REPO / "configs" / "clusters"
EXPERIMENTS_DIR = REPO / "configs" / "experiments"


# ---------------------------------------------------------------- experiment (WHAT)
# Declared once, with each check beside its field, in the stdlib-only kd/sections.py (the stage
# specs of kd/specs.py hold the same section objects). Re-exported here for the launcher.


# ---------------------------------------------------------------- cluster (WHERE)
# Login-node only (no stage reads it), declared the same way: each check beside its field.
EXECUTORS = ("slurm", "local")
SLURM_TIME = re.compile(r"(\d+|\d+:\d{1,2}|\d+:\d{1,2}:\d{1,2}|\d+-\d{1,2}|\d+-\d{1,2}:\d{1,2}"
                        r"|\d+-\d{1,2}:\d{1,2}:\d{1,2}|infinite|unlimited|UNLIMITED|INFINITE)")
SECRET_WORDS = {"TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIALS"}


def _looks_secret(env_key: str) -> bool:
    parts = set(env_key.upper().split("_"))
    return bool(parts & SECRET_WORDS) or env_key.upper().endswith("_KEY")


def _gpu_kind(v: Any) -> str | None:
    from launch.gpus import GPU_KINDS

    if isinstance(v, str) and v.lower() in GPU_KINDS:
        return None
    return f"choose one of {', '.join(GPU_KINDS)} (the cost estimate's GPU peak), or remove it"


def _not_blank(v: Any) -> str | None:
    return None if v is None or v.strip() else "is empty: give a name or remove the key"


@dataclass(frozen=True)
class Container(Section):
    # pyxis/enroot image, e.g. nvcr.io#nvidia/nemo:26.02 (srun --container-image=...)
    image: str | None = knob(None, lambda v: None if v is None
                             else shell.container_image_problem(v))
    # "src:dst[:flags]" each (srun --container-mounts=..., joined by ','); the run directory is
    # mounted too (checked where the flag is built: launch/executors.py)
    mounts: tuple[str, ...] = knob((), each(shell.container_mount_problem))
    workdir: str | None = None


def minutes_or_auto(v: Any) -> str | None:
    """A time limit: whole minutes > 0, or ``auto`` (launch/cost.py: the estimate times
    ``time_safety``, rounded up, capped at ``time_max_min``)."""
    if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v > 0):
        return None
    return "expected whole minutes > 0 or auto (the estimate x time_safety, launch/cost.py)"


@dataclass(frozen=True)
class StageResources(Section):
    """Time limits (minutes, or auto: from the cost estimate) and CPU memory for the
    non-training stages (one task each)."""

    prepare_data_min: int | str = knob("auto", minutes_or_auto)
    export_min: int | str = knob("auto", minutes_or_auto)
    eval_min: int | str = knob("auto", minutes_or_auto)
    report_min: int | str = knob("auto", minutes_or_auto)
    cpus_per_task: int = knob(8, positive)
    mem_gb: int | None = knob(None, at_least(0))  # 0: all of the node (--mem=0)


@dataclass(frozen=True)
class Cluster(Section):
    name: str = knob(check=_not_blank)
    executor: str = knob("slurm", one_of(*EXECUTORS))
    # None on the generic profile: $SBATCH_PARTITION or the site default
    partition: str | None = knob(None, _not_blank)
    account: str | None = knob(None, _not_blank)  # None: $SBATCH_ACCOUNT or the site default
    qos: str | None = knob(None, _not_blank)
    nodes: int = knob(1, positive)  # nodes of the distill job
    gpus_per_node: int = knob(8, at_least(0))
    tasks_per_node: int | None = knob(None, positive)  # default: one per GPU (1 without GPUs)
    cpus_per_task: int = knob(8, positive)
    mem_gb: int | None = knob(None, at_least(0))  # 0: all of the node (--mem=0)
    # distill job time limit per allocation (requeued), minutes or auto: the cost estimate
    # (launch/cost.py) x time_safety, rounded up to 5 min, at most time_max_min
    time_min: int | str = knob("auto", minutes_or_auto)
    time_safety: float = knob(1.5, at_least(1))  # auto limits: the estimate times this
    # the longest limit the partition / QOS allows (auto limits stay below it); None: asked
    # from SLURM at launch (partition MaxTime, QOS MaxWall)
    time_max_min: int | None = knob(None, positive)
    # GPU model for the cost estimate: a100, h100, h200, gh200, b200, l40s; None: the GRES type
    # of the partition's nodes (gpu:h100:8), else h100
    gpu_kind: str | None = knob(None, lambda v: None if v is None else _gpu_kind(v))
    max_requeues: int = knob(5, at_least(0))  # timeouts a distill job may be requeued for
    signal_delay_s: int = knob(300, positive)  # USR2 this long before the limit: time to save
    save_time_s: int = knob(120, at_least(0))  # one checkpoint save here (checked against it)
    gpu_eval: bool = True  # evals ask for every GPU of a node (false: CPU evals)
    gpu_memory_gib: float | None = knob(None, positive)  # per GPU; pre-flight checks the estimate
    stages: StageResources = knob(factory=StageResources)
    container: Container = knob(factory=Container)
    env: dict[str, str] = knob(factory=dict)
    setup: tuple[str, ...] = ()
    srun_args: tuple[str, ...] = ()
    additional_parameters: dict[str, str] = knob(factory=dict)
    python: str | None = None  # command that starts Python on the nodes (default: this one)
    eval_cache_dir: str | None = None  # teacher-eval cache on the shared filesystem

    def check(self) -> None:
        if self.executor == "local" and self.nodes != 1:
            raise FieldError("nodes", self.nodes, "the local executor runs on one machine; set "
                             "cluster.nodes=1")
        if isinstance(self.time_min, int) and self.signal_delay_s >= self.time_min * 60:
            raise FieldError("signal_delay_s", self.signal_delay_s, "", f"{{s}}signal_delay_s="
                             f"{self.signal_delay_s} must be shorter than the time limit {{s}}"
                             f"time_min={self.time_min} min")
        if self.save_time_s > self.signal_delay_s:
            raise FieldError("signal_delay_s", self.signal_delay_s, "", f"{{s}}signal_delay_s="
                             f"{self.signal_delay_s} cannot hold one checkpoint save ({{s}}"
                             f"save_time_s={self.save_time_s}): raise signal_delay_s")
        for key, value in self.additional_parameters.items():
            if key.replace("_", "-") in ("time", "time-min", "t") and not SLURM_TIME.fullmatch(value):
                raise FieldError(f"additional_parameters.{key}", value, "not a SLURM time (MM, "
                                 "MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS); better, set "
                                 "cluster.time_min")
        for key in self.env:  # never echo the value: it may be a secret
            if not key.replace("_", "").isalnum() or key[0].isdigit():
                raise FieldError(f"env.{key}", None, "", f"{{s}}env.{key}: not a valid "
                                 f"environment variable name")
            if _looks_secret(key):
                raise FieldError(f"env.{key}", None, "", f"{{s}}env.{key}: looks like a secret; "
                                 f"configs are copied into manifest.json and sbatch files. Export "
                                 f"it in your shell instead (jobs inherit the submitting "
                                 f"environment) and remove it here")


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


# Former names of shipped experiments: still loaded, with a one-line notice on stderr, so that
# recorded commands keep running.
RENAMED_EXPERIMENTS = {"seed_llama31_8b": "guide_llama31_8b"}


def experiment_path(ref: str) -> Path:
    """``named_yaml`` in configs/experiments, following ``RENAMED_EXPERIMENTS`` (as a name or
    as the shipped file's former path)."""
    path = named_yaml(ref, EXPERIMENTS_DIR)
    old = path.stem if path.suffix in (".yaml", ".yml") else None
    shipped = path.parent.parts[-2:] == ("configs", "experiments")
    if not path.exists() and old in RENAMED_EXPERIMENTS and shipped:
        new = RENAMED_EXPERIMENTS[old]
        print(f"kdlaunch: experiment {old!r} is now {new!r} (configs/experiments/{new}.yaml); "
              f"the old name is deprecated", file=sys.stderr)
        return EXPERIMENTS_DIR / f"{new}.yaml"
    return path


def experiment_dict(ref: str, overrides: list[str] = ()) -> dict:
    return _with_overrides(_read_yaml(experiment_path(ref)), list(overrides))


def cluster_dict(ref: str, overrides: list[str] = ()) -> dict:
    return _with_overrides(_read_yaml(resolve_cluster_path(ref)), list(overrides))


def load_experiment(ref: str, overrides: list[str] = ()) -> Experiment:
    return build(Experiment, experiment_dict(ref, overrides), "")  # checks: kd/sections.py


def load_cluster(ref: str, overrides: list[str] = ()) -> Cluster:
    return build(Cluster, cluster_dict(ref, overrides), "cluster")  # checks: beside the fields


def tasks_per_node(cl: Cluster) -> int:
    if cl.tasks_per_node:
        return cl.tasks_per_node
    return cl.gpus_per_node or 1
