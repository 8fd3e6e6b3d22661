"""Stage specs: what crosses the login-node -> compute-node boundary (stdlib only).

The launcher builds one spec per job from the validated experiment + cluster config and
pickles it (through submitit) together with a reference to ``kd.<stage>.run``. Specs hold
plain values only (str paths, numbers, tuples), so they pickle without torch and read well
in ``manifest.json`` (``dataclasses.asdict``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


class FieldError(ValueError):
    """A bad value in one field of a spec/config section; the converter (``launch.schema.build``)
    prefixes the section's path, so the message names e.g. ``kd.logit_kl_temperature``."""

    def __init__(self, field_name: str, value: object, fix: str):
        super().__init__(f"{field_name}={value!r}: {fix}")
        self.field, self.value, self.fix = field_name, value, fix


def _require(ok: bool, name: str, value: object, fix: str) -> None:
    if not ok:
        raise FieldError(name, value, fix)


def _finite_positive(value: float, name: str) -> None:
    _require(isinstance(value, (int, float)) and math.isfinite(value) and value > 0, name, value,
             "must be a finite number > 0")


@dataclass(frozen=True)
class DataSource:
    """One dataset of a blend: a local JSONL file or a Hugging Face dataset."""

    name: str  # short name, used for file names under RUN/data/ (unique within a blend)
    weight: float = 1.0
    jsonl: str | None = None  # local JSONL file (one JSON object per line)
    hf_name: str | None = None  # e.g. "wikitext"
    hf_config: str | None = None  # e.g. "wikitext-103-v1"
    hf_split: str = "train"
    max_documents: int | None = None  # cap (None = all), handy for smoke runs
    prefix: str | None = None  # an already tokenized Megatron prefix (<prefix>.bin/.idx): used as is

    def __post_init__(self) -> None:
        _finite_positive(self.weight, "weight")
        _require(self.max_documents is None or self.max_documents > 0, "max_documents",
                 self.max_documents, "must be > 0 (or null for all documents)")


@dataclass(frozen=True)
class DataSpec:
    sources: tuple[DataSource, ...]
    tokenizer: str  # HF tokenizer dir or name
    out_dir: str  # RUN/data
    json_keys: tuple[str, ...] = ("text",)
    append_eod: bool = True
    workers: int = 1
    log_interval: int = 1000
    done_marker: str | None = None


@dataclass(frozen=True)
class KDOptions:
    logit_kl_temperature: float = 1.0
    logit_kl_topk: int | None = None
    intermediate_layer_pairs: tuple[tuple[str, str], ...] = ()
    skip_lm_loss: bool = True  # False mixes the student's CE loss in
    kd_loss_scale: float = 1.0

    def __post_init__(self) -> None:
        _finite_positive(self.logit_kl_temperature, "logit_kl_temperature")
        _require(self.logit_kl_topk is None or self.logit_kl_topk > 0, "logit_kl_topk",
                 self.logit_kl_topk, "must be > 0 (or null for the full vocabulary)")
        _finite_positive(self.kd_loss_scale, "kd_loss_scale")


@dataclass(frozen=True)
class DistillSpec:
    student: str  # HF checkpoint dir (standard or Puzzletron AnyModel)
    teacher: str  # HF checkpoint dir
    data_blend: tuple[tuple[float, str], ...]  # ((weight, megatron_prefix), ...)
    output_dir: str  # RUN/distill ; checkpoints under output_dir/checkpoints
    tp: int = 1
    pp: int = 1
    cp: int = 1
    seq_length: int = 4096
    micro_batch_size: int = 1
    global_batch_size: int = 4
    train_iters: int = 100
    lr: float = 1e-4
    min_lr: float = 1e-5
    lr_warmup_iters: int = 10
    eval_interval: int = 10
    eval_iters: int = 10
    log_interval: int = 1
    save_interval: int | None = None  # None: only at the end (and on exit signals)
    seed: int = 1234
    precision: str = "bf16"  # "bf16" | "fp32"
    device: str = "auto"  # "auto" | "cuda" | "cpu"
    kd: KDOptions = field(default_factory=KDOptions)
    split: str = "99,1,0"  # train/valid/test split of the blend
    done_marker: str | None = None
    recompute: str = "none"  # "none" | "full": activation recomputation of the student
    overlap_grad_reduce: bool = False  # overlap the DP gradient all-reduce with backward (GPU)
    distributed_optimizer: str = "auto"  # auto (= on when DP > 1) | true | false


@dataclass(frozen=True)
class ExportSpec:
    checkpoints: str  # RUN/distill/checkpoints
    out_dir: str  # RUN/export/hf
    hf_template: str  # the `--hf-model` of the seed: HF model dir/name whose config/tokenizer shape the export
    student: str  # the original student HF dir (its config keeps AnyModel block_configs)
    iteration: int | None = None  # None = latest
    done_marker: str | None = None


@dataclass(frozen=True)
class EvalSpec:
    role: str  # "student_before" | "student_after" | "teacher"
    model: str  # HF checkpoint dir (AnyModel or standard)
    out_file: str  # RUN/eval/<role>.json
    tasks: tuple[str, ...] = ("mmlu",)
    num_fewshot: int = 5
    limit: int | float | None = None  # per subject task, as lm-eval defines it
    batch_size: int | str = 1
    dtype: str = "bfloat16"
    device: str = "auto"
    include_path: str | None = None  # lm-eval --include_path (task overrides, e.g. a local MMLU copy)
    cache_dir: str | None = None  # teacher results cache (shared filesystem); None = no caching
    seed: int = 1234
    done_marker: str | None = None


@dataclass(frozen=True)
class ReportSpec:
    before: str
    after: str
    teacher: str
    out_dir: str  # RUN/report
    title: str = "Knowledge distillation: MMLU"
    done_marker: str | None = None


# ---------------------------------------------------------------- JSON form (standalone sbatch)
STAGE_SPECS = {
    "prepare_data": ("kd.data", DataSpec),
    "distill": ("kd.distill", DistillSpec),
    "export_hf": ("kd.export", ExportSpec),
    "eval_student_before": ("kd.evaluate", EvalSpec),
    "eval_teacher": ("kd.evaluate", EvalSpec),
    "eval_student_after": ("kd.evaluate", EvalSpec),
    "report": ("kd.report", ReportSpec),
}


def spec_from_dict(cls: type, data: dict):
    """Rebuild a spec dataclass from its JSON form (``--spec`` files of ``kd.job``, manifests).

    The one dict -> dataclass converter of the project (``launch.schema.build``, stdlib only at
    import): lists come back as tuples, unknown keys and wrong types are refused naming the
    field, and NaN/inf never pass as a number.
    """
    from launch.schema import build

    return build(cls, data, cls.__name__)
