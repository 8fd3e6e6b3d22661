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

from kd.specs import DataSource, KDOptions
from launch.schema import ConfigError, apply_override, build, parse_override, read_yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTERS_DIR = REPO / "configs" / "clusters"
EXPERIMENTS_DIR = REPO / "configs" / "experiments"


# ---------------------------------------------------------------- experiment (WHAT)
@dataclass(frozen=True)
class ModelRef:
    path: str  # HF checkpoint directory (or, for export.hf_template only, a Hub id)


# One declaration, shared with the stage specs (kd/specs.py); each check sits beside its field.
Source = DataSource


@dataclass(frozen=True)
class Data:
    sources: tuple[Source, ...]
    tokenizer: str | None = None  # default: the student's checkpoint dir
    json_keys: tuple[str, ...] = ("text",)
    append_eod: bool = True
    workers: int = 8
    log_interval: int = 10000


@dataclass(frozen=True)
class Train:
    # tp, pp, micro_batch_size, recompute: "auto" lets launch/layout.py choose from the memory
    # estimate (smallest model parallelism that fits, then the largest micro-batch)
    tp: int | str = "auto"
    pp: int | str = "auto"
    cp: int = 1
    seq_length: int = 4096
    micro_batch_size: int | str = "auto"
    recompute: str = "auto"  # auto | none | full (activation recomputation of the student)
    # overlap the data-parallel gradient all-reduce with backward (GPU, dp > 1); off: no gain
    # measured on one 4 x H100 node (benchmarks/results/h100x4_2026-11-28_issue8.json)
    overlap_grad_reduce: bool = False
    # auto | true | false: Megatron's distributed optimizer (Adam states sharded over DP ranks);
    # auto = on whenever DP > 1 (launch/memory.py distributed_optimizer() resolves it)
    distributed_optimizer: bool | str = "auto"
    global_batch_size: int = 4
    train_iters: int = 100
    lr: float = 1e-4
    min_lr: float = 1e-5
    lr_warmup_iters: int = 10
    eval_interval: int = 10
    eval_iters: int = 10
    log_interval: int = 1
    save_interval: int | None = None  # None: at the end (and when SLURM signals a timeout)
    seed: int = 1234
    precision: str = "bf16"  # bf16 | fp32
    split: str = "99,1,0"


KD = KDOptions


@dataclass(frozen=True)
class Export:
    enabled: bool = True
    hf_template: str | None = None  # the seed's --hf-model: base architecture of the student
    iteration: int | None = None  # None: the last saved iteration


@dataclass(frozen=True)
class Eval:
    enabled: bool = True
    tasks: tuple[str, ...] = ("mmlu",)
    num_fewshot: int = 5
    limit: float | None = None  # per subject, as lm-eval defines it (int count or fraction < 1)
    batch_size: int | str = 1
    dtype: str = "bfloat16"
    include_path: str | None = None  # lm-eval task overrides (e.g. a local copy of cais/mmlu)


@dataclass(frozen=True)
class Experiment:
    name: str
    student: ModelRef
    teacher: ModelRef
    data: Data
    train: Train = field(default_factory=Train)
    kd: KD = field(default_factory=KD)
    export: Export = field(default_factory=Export)
    eval: Eval = field(default_factory=Eval)


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
    gpu_eval: bool = True  # evals ask for every GPU of a node (false: CPU evals)
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
PRECISIONS = ("bf16", "fp32")
EVAL_DTYPES = ("auto", "bfloat16", "float16", "float32", "half", "float")
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
    exp = build(Experiment, experiment_dict(ref, overrides), "")
    validate_experiment(exp)
    return exp


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


def validate_experiment(exp: Experiment) -> None:
    t = exp.train
    for name in ("tp", "pp", "micro_batch_size"):
        value = getattr(t, name)
        if isinstance(value, str) and value != "auto":
            raise ConfigError(f"train.{name}={value!r}: expected a positive integer or 'auto'")
    if t.recompute not in ("auto", "none", "full"):
        raise ConfigError(f"train.recompute={t.recompute!r}: choose one of auto, none, full")
    if t.distributed_optimizer not in (True, False, "auto"):
        raise ConfigError(f"train.distributed_optimizer={t.distributed_optimizer!r}: choose one "
                          f"of auto, true, false")
    for name in ("tp", "pp", "cp", "seq_length", "micro_batch_size", "global_batch_size",
                 "train_iters", "eval_interval", "log_interval", "save_interval"):
        if getattr(t, name) != "auto":
            _positive(getattr(t, name), f"train.{name}")
    _positive(t.eval_iters, "train.eval_iters", allow_zero=True)
    _positive(t.lr_warmup_iters, "train.lr_warmup_iters", allow_zero=True)
    if t.lr <= 0 or t.min_lr < 0 or t.min_lr > t.lr:
        raise ConfigError(f"train.lr={t.lr}, train.min_lr={t.min_lr}: need lr > 0 and "
                          f"0 <= min_lr <= lr")
    if t.lr_warmup_iters >= t.train_iters:
        raise ConfigError(f"train.lr_warmup_iters={t.lr_warmup_iters} must be < train.train_iters="
                          f"{t.train_iters}: lower the warm-up or train longer")
    if t.micro_batch_size != "auto" and t.global_batch_size % t.micro_batch_size:
        raise ConfigError(f"train.global_batch_size={t.global_batch_size} is not a multiple of "
                          f"train.micro_batch_size={t.micro_batch_size}")
    if t.precision not in PRECISIONS:
        raise ConfigError(f"train.precision={t.precision!r}: choose one of {', '.join(PRECISIONS)}")
    if t.cp != 1:
        raise ConfigError(f"train.cp={t.cp}: context parallelism is not supported by the "
                          f"distill stage yet; set train.cp=1")
    parts = t.split.split(",")
    if len(parts) != 3 or not all(p.strip().replace(".", "", 1).isdigit() for p in parts):
        raise ConfigError(f"train.split={t.split!r}: write three numbers, e.g. '99,1,0'")
    weights = [float(p) for p in parts]
    if not sum(weights) > 0:
        raise ConfigError(f"train.split={t.split!r}: the train/valid/test weights sum to 0; give "
                          f"the training set a positive share, e.g. '99,1,0'")
    if not weights[0] > 0:
        raise ConfigError(f"train.split={t.split!r}: the training share (first number) must be > 0")
    # kd.*: checked beside each field (kd.specs.KDOptions.__post_init__)
    _validate_sources(exp.data)
    if exp.export.enabled and not exp.export.hf_template:
        raise ConfigError("export.hf_template is not set but export.enabled is true: give the HF "
                          "model (dir or id) of the student's base architecture, e.g. "
                          "export.hf_template=meta-llama/Llama-3.1-8B-Instruct, or set "
                          "export.enabled=false")
    _validate_export_iteration(exp)
    e = exp.eval
    _positive(e.num_fewshot, "eval.num_fewshot", allow_zero=True)
    _positive(e.limit, "eval.limit")
    if isinstance(e.batch_size, str):
        if not re.fullmatch(r"auto(:\d+)?", e.batch_size):
            raise ConfigError(f"eval.batch_size={e.batch_size!r}: a positive integer, 'auto' or "
                              f"'auto:N'")
    else:
        _positive(e.batch_size, "eval.batch_size")
    if e.enabled and not e.tasks:
        raise ConfigError("eval.tasks is empty: name at least one lm-eval task (e.g. [mmlu]) or "
                          "set eval.enabled=false")
    for i, task in enumerate(e.tasks):
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", task):
            raise ConfigError(f"eval.tasks[{i}]={task!r}: not an lm-eval task name (letters, "
                              f"digits, '_', '-', '.')")
    if e.dtype not in EVAL_DTYPES:
        raise ConfigError(f"eval.dtype={e.dtype!r}: choose one of {', '.join(EVAL_DTYPES)}")
    if e.enabled and not exp.export.enabled:
        raise ConfigError("eval.enabled needs export.enabled: the distilled student is evaluated "
                          "from its HF export; enable export or set eval.enabled=false")


def save_points(t: Train) -> list[int] | None:
    """Iterations a checkpoint is saved at (None: train_iters is not a number yet)."""
    if not isinstance(t.train_iters, int):
        return None
    points = set(range(t.save_interval, t.train_iters + 1, t.save_interval)) if t.save_interval \
        else set()
    return sorted(points | {t.train_iters})


def _validate_export_iteration(exp: Experiment) -> None:
    it, t = exp.export.iteration, exp.train
    if it is None:
        return
    _positive(it, "export.iteration")
    if it > t.train_iters:
        raise ConfigError(f"export.iteration={it} is beyond train.train_iters={t.train_iters}: "
                          f"no checkpoint will exist; lower export.iteration or leave it null "
                          f"(the last saved iteration)")
    points = save_points(t)
    if points is not None and it not in points:
        shown = ", ".join(map(str, points[:8])) + (", ..." if len(points) > 8 else "")
        raise ConfigError(f"export.iteration={it} is not a save point (train.save_interval="
                          f"{t.save_interval}, train.train_iters={t.train_iters}; saved at {shown}): "
                          f"pick one of those or leave export.iteration null")


def _validate_sources(data: Data) -> None:
    if not data.sources:
        raise ConfigError("data.sources is empty: add at least one dataset "
                          "(jsonl:, hf_name: or prefix:)")
    names = set()
    for i, s in enumerate(data.sources):
        where = f"data.sources[{i}]"
        given = [k for k in ("jsonl", "hf_name", "prefix") if getattr(s, k)]
        if len(given) != 1:
            raise ConfigError(f"{where}: set exactly one of jsonl, hf_name, prefix "
                              f"(got {', '.join(given) or 'none'})")
        if not s.name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise ConfigError(f"{where}.name={s.name!r}: use letters, digits, '-', '_', '.' only "
                              f"(it names files)")
        if s.name in names:
            raise ConfigError(f"{where}.name={s.name!r} is used twice: names must be unique")
        names.add(s.name)
    _positive(data.workers, "data.workers")
    if len(data.json_keys) != 1:
        raise ConfigError(f"data.json_keys={list(data.json_keys)}: give exactly one key (the text "
                          f"field to train on, e.g. [text])")


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
