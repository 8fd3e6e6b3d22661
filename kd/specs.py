"""Stage specs: what crosses the login-node -> compute-node boundary (stdlib only).

Each spec is a thin envelope: the config sections it needs (declared once, with their checks,
in ``kd/sections.py``) plus the run's paths and what the launcher decided for this job (device,
role). The launcher builds one spec per job and pickles it (through submitit) together with a
reference to ``kd.<stage>.run``. Specs hold plain values only, so they pickle without torch and
read well in ``manifest.json`` (``dataclasses.asdict``); ``spec_from_dict`` reads that form back.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from kd import stages
from kd.sections import (
    KD,
    Checkpoint,
    Data,
    DataSource,
    Eval,
    Export,
    FieldError,
    KDOptions,
    Logging,
    Optimizer,
    Select,
    Train,
    data_parallel_size,
)

__all__ = ["STAGE_SPECS", "CandidateSpec", "DataSource", "DataSpec", "DistillSpec", "EvalSpec",
           "ExportSpec", "FieldError", "KDOptions", "ReportSpec", "SelectSpec", "replace_fields",
           "spec_from_dict", "stage_spec"]


@dataclass(frozen=True)
class DataSpec:
    data: Data  # sources with absolute paths, tokenizer resolved, workers capped at the job's CPUs
    out_dir: str  # RUN/data
    done_marker: str | None = None


@dataclass(frozen=True)
class DistillSpec:
    student: str  # HF checkpoint dir (standard or Puzzletron AnyModel)
    teacher: str  # HF checkpoint dir
    data_blend: tuple[tuple[float, str], ...]  # ((weight, megatron_prefix), ...)
    output_dir: str  # RUN/distill ; checkpoints under output_dir/checkpoints
    train: Train = field(default_factory=lambda: Train(tp=1, pp=1, micro_batch_size=1,
                                                       recompute="none"))  # resolved: no "auto"
    kd: KD = field(default_factory=KD)
    device: str = "auto"  # "auto" | "cuda" | "cpu"
    done_marker: str | None = None
    optimizer: Optimizer = field(default_factory=Optimizer)
    checkpoint: Checkpoint = field(default_factory=Checkpoint)
    logging: Logging = field(default_factory=Logging)
    student_megatron_checkpoint: str | None = None  # student.megatron_checkpoint (absolute)
    index_cache: str | None = None  # data.index_cache, resolved; None: output_dir/dataset_cache
    keep_iterations: tuple[int, ...] = ()  # never deleted by checkpoint.keep_last
    trust_remote_code: bool = False
    # the world size the launcher resolved the layout for (train: tp, pp, cp, micro-batch,
    # recompute, distributed optimizer and sequence parallelism, all definite): the stage refuses
    # to run on another (None: a spec written by hand, any world that divides)
    world_size: int | None = None

    @property
    def data_parallel_size(self) -> int:
        """DP ranks of the resolved layout (needs ``world_size``)."""
        if self.world_size is None:
            raise ValueError("DistillSpec.world_size is not set: the launcher resolves it")
        return data_parallel_size(self.world_size, self.train.tp, self.train.pp, self.train.cp)


@dataclass(frozen=True)
class ExportSpec:
    checkpoints: str  # RUN/distill/checkpoints
    out_dir: str  # RUN/export/hf
    student: str  # the original student HF dir (its config keeps AnyModel block_configs)
    export: Export  # export.hf_template set (absolute when local); iteration None = latest
    done_marker: str | None = None
    trust_remote_code: bool = False


@dataclass(frozen=True)
class EvalSpec:
    role: str  # "student_before" | "student_after" | "teacher"
    model: str  # HF checkpoint dir (AnyModel or standard)
    out_file: str  # RUN/eval/<role>.json
    eval: Eval = field(default_factory=Eval)  # dtype float32 on CPU; include_path absolute
    device: str = "auto"
    cache_dir: str | None = None  # teacher results cache (shared filesystem); None = no caching
    seed: int = 1234
    done_marker: str | None = None
    trust_remote_code: bool = False


@dataclass(frozen=True)
class ReportSpec:
    before: str
    after: str
    teacher: str
    out_dir: str  # RUN/report
    title: str = "Knowledge distillation: MMLU"
    selection: str | None = None  # RUN/select/selection.json: adds the checkpoint-selection section
    done_marker: str | None = None


@dataclass(frozen=True)
class CandidateSpec:
    """A checkpoint candidate (kd/selection.py): export one iteration, then (unless selection goes
    by validation loss) score it on the quick eval."""

    iteration: int
    export: ExportSpec  # out_dir RUN/select/iter_NNNNNNN/export/hf
    eval: EvalSpec | None = None  # the student-after eval, limited to select.limit
    done_marker: str | None = None


@dataclass(frozen=True)
class SelectSpec:
    candidates: tuple[tuple[int, str], ...]  # (iteration, candidate run dir), ascending
    out_dir: str  # RUN/export/hf
    selection_dir: str  # RUN/select
    select: Select = field(default_factory=Select)
    tensorboard: str | None = None  # RUN/distill/tensorboard (validation loss per iteration)
    done_marker: str | None = None


# ---------------------------------------------------------------- JSON form (standalone sbatch)
STAGE_SPECS = {s.name: (s.module, globals()[s.spec]) for s in stages.FIXED.values()}


def stage_spec(stage: str) -> tuple[str, type]:
    """(module, spec class) of a stage: the fixed ones, and ``candidate_<N>`` of selection."""
    found = stages.stage(stage)  # ValueError naming the known stages
    return found.module, globals()[found.spec]


def spec_from_dict(cls: type, data: dict):
    """Rebuild a spec dataclass from its JSON form (``--spec`` files of ``kd.job``, manifests).

    The project's one dict -> dataclass converter (``kd.sections.build``): lists come back as
    tuples, unknown keys and wrong types are refused naming the field, NaN/inf never pass as a
    number, and every section's checks run again.
    """
    from kd.sections import build

    return build(cls, data, cls.__name__)


def replace_fields(spec, **changes):
    """``dataclasses.replace`` that also reaches into the spec's sections, found by introspection:
    ``replace_fields(distill_spec, tp=2, device="cpu")`` sets ``spec.train.tp`` and ``spec.device``.
    For tests and benchmarks that think in flat knobs. A name that is neither a field of the
    envelope nor of exactly one of its sections is refused."""
    top = {f.name for f in dataclasses.fields(spec)}
    sections = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)
                if dataclasses.is_dataclass(getattr(spec, f.name))}
    direct, nested = {}, {name: {} for name in sections}
    for key, value in changes.items():
        owners = [name for name, sec in sections.items()
                  if key in {f.name for f in dataclasses.fields(sec)}]
        if key in top:
            direct[key] = value
        elif len(owners) == 1:
            nested[owners[0]][key] = value
        else:
            raise TypeError(f"{type(spec).__name__}: {key!r} is "
                            f"{'ambiguous' if owners else 'not a field of it or its sections'}")
    for name, kw in nested.items():
        if kw:
            direct[name] = dataclasses.replace(direct.get(name, sections[name]), **kw)
    return dataclasses.replace(spec, **direct)
