"""The experiment schema (WHAT): every config section declared once, each check beside its field.

Stdlib only: the launcher (``launch/``, login node) and the stages (``kd/``, compute nodes) both
import it. The stage specs of ``kd/specs.py`` are thin envelopes that hold these section objects
plus run paths, so a knob travels YAML -> ``Experiment`` -> stage spec -> ``--spec`` JSON without
being named anywhere else.

Adding a knob::

    @dataclass(frozen=True)
    class Train(Section):
        ...
        warmup_style: str = knob("linear", one_of("linear", "cosine"))  # that's all

The one converter, ``build(cls, data, where)``, turns a dict (YAML, ``--set`` overrides, a
manifest, the ``--spec`` JSON of ``kd.job``) into these dataclasses: it checks each value's type
against the annotation, refuses unknown keys with the list of valid ones, refuses NaN/inf, and
turns a failed check into ``ConfigError`` naming the dotted field (``train.lr=...: fix``).

Checks:
- per field: ``knob(default, check, ...)``: ``check(value)`` returns None when good, else the
  fix (a sentence), or ``(sub_path, item, fix)`` to name one item of a list (see ``each``). Building blocks below: ``positive``, ``at_least``, ``one_of``, ...
- across fields of one section: override ``Section.check(self)`` and raise ``FieldError``.
- across sections: ``Experiment.check``.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Union

from kd.results import GROUPS as RESULT_GROUPS  # stdlib-only, like this module

Check = Callable[[Any], "str | tuple[str, Any, str] | None"]


# ---------------------------------------------------------------- errors
class ConfigError(ValueError):
    """A user mistake in a config file or override; the message says which field and the fix."""


class FieldError(ValueError):
    """A bad value in one field of a section. ``build`` prefixes the section's path, so the
    message names e.g. ``kd.logit_kl_temperature``. In ``text``, ``{s}`` marks where the section
    path goes (for messages that name sibling fields too)."""

    def __init__(self, field_name: str, value: object, fix: str, text: str | None = None):
        self.field, self.value, self.fix = field_name, value, fix
        self.text = text if text is not None else f"{{s}}{field_name}={value!r}: {fix}"
        super().__init__(self.render(""))

    def render(self, prefix: str) -> str:
        return self.text.replace("{s}", prefix)


# ---------------------------------------------------------------- declaring fields
def knob(default: Any = dataclasses.MISSING, check: Check | None = None, *,
         factory: Callable[[], Any] | None = None) -> Any:
    """A section field: its default (or ``factory``) and its check, in one place."""
    metadata = {"check": check} if check else {}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def positive(v: Any) -> str | None:
    """None (unset) or a number > 0."""
    return None if v is None or (_number(v) and v > 0) else "must be > 0"


def at_least(low: float) -> Check:
    return lambda v: None if v is None or (_number(v) and v >= low) else f"must be >= {low}"


def finite_positive(v: Any) -> str | None:
    return None if _number(v) and math.isfinite(v) and v > 0 else "must be a finite number > 0"


def positive_or_auto(v: Any) -> str | None:
    if v == "auto" or (_number(v) and isinstance(v, int) and v > 0):
        return None
    return "expected a positive integer or 'auto'"


def one_of(*choices: Any, shown: str | None = None) -> Check:
    text = shown or ", ".join(str(c).lower() if isinstance(c, bool) else str(c) for c in choices)

    def check(v: Any) -> str | None:
        ok = any(v is c if isinstance(c, bool) else (v == c and not isinstance(v, bool))
                 for c in choices)
        return None if ok else f"choose one of {text}"
    return check


def matches(pattern: str, fix: str) -> Check:
    rx = re.compile(pattern)
    return lambda v: None if v is None or (isinstance(v, str) and rx.fullmatch(v)) else fix


def each(check: Check) -> Check:
    """Apply ``check`` to every item of a list; the message names the item (``eval.tasks[1]``)."""
    def run(values: Any) -> str | tuple | None:
        for i, v in enumerate(values or ()):
            fix = check(v)
            if fix:
                return f"[{i}]", v, fix
        return None
    return run


def all_of(*checks: Check) -> Check:
    def run(v: Any) -> str | None:
        for c in checks:
            fix = c(v)
            if fix:
                return fix
        return None
    return run


@dataclass(frozen=True)
class Section:
    """Base of every section: runs each field's check, then ``check()`` (cross-field)."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            check = f.metadata.get("check")
            if check is None:
                continue
            value = getattr(self, f.name)
            fix = check(value)
            if isinstance(fix, tuple):  # (sub-path, value, fix): one item of a list
                sub, item, fix = fix
                raise FieldError(f"{f.name}{sub}", item, fix)
            if fix:
                raise FieldError(f.name, value, fix)
        self.check()

    def check(self) -> None:
        """Checks that involve several fields of this section (raise ``FieldError``)."""


# ---------------------------------------------------------------- sections of an experiment
@dataclass(frozen=True)
class ModelRef(Section):
    path: str  # HF checkpoint directory (or, for export.hf_template only, a Hub id)
    # student only: a Megatron checkpoint (a checkpoints/ dir or one iter_N dir) whose weights
    # replace the HF ones at the first start (pruned or QAD students); `path` still gives the
    # architecture, tokenizer and export template
    megatron_checkpoint: str | None = None


_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"


@dataclass(frozen=True)
class Source(Section):
    """One dataset of a blend: a local JSONL file, a Hugging Face dataset or a Megatron prefix."""

    name: str = knob(check=matches(_NAME, "use letters, digits, '-', '_', '.' only, starting "
                                          "with a letter or digit (it names files)"))  # file names under RUN/data/; unique in a blend
    weight: float = knob(1.0, finite_positive)
    jsonl: str | None = None  # local JSONL file (one JSON object per line)
    hf_name: str | None = None  # e.g. "wikitext"
    hf_config: str | None = None  # e.g. "wikitext-103-v1"
    hf_split: str = "train"
    max_documents: int | None = knob(None, lambda v: None if v is None or (_number(v) and v > 0)
                                     else "must be > 0 (or null for all documents)")
    prefix: str | None = None  # an already tokenized Megatron prefix (<prefix>.bin/.idx): used as is


DataSource = Source  # the name the data stage uses


def _one_key(v: Any) -> str | None:
    if len(v) == 1:
        return None
    return "give exactly one key (the text field to train on, e.g. [text])"


@dataclass(frozen=True)
class Data(Section):
    sources: tuple[Source, ...]
    tokenizer: str | None = None  # default: the student's checkpoint dir
    json_keys: tuple[str, ...] = knob(("text",), _one_key)
    append_eod: bool = True
    workers: int = knob(8, positive)  # the launcher caps it at the CPUs of the job
    log_interval: int = knob(10000, positive)
    # Megatron's dataset index cache (path_to_cache). Default: RUN/data/index_cache of the run
    # that prepares the data, so sweep members sharing prepare_data (the same blend) share it.
    # Index files are named by a hash of blend, split, sequence length and seed: one directory
    # can serve many blends.
    index_cache: str | None = None

    def check(self) -> None:
        if not self.sources:
            raise FieldError("sources", (), "", "{s}sources is empty (no sources): add at least "
                             "one dataset (jsonl:, hf_name: or prefix:)")
        names: set[str] = set()
        for i, s in enumerate(self.sources):
            given = [k for k in ("jsonl", "hf_name", "prefix") if getattr(s, k)]
            if len(given) != 1:
                raise FieldError(f"sources[{i}]", s.name, "", f"{{s}}sources[{i}]: set exactly "
                                 f"one of jsonl, hf_name, prefix (got {', '.join(given) or 'none'})")
            if s.name in names:
                raise FieldError(f"sources[{i}].name", s.name,
                                 "is used twice: names must be unique",
                                 f"{{s}}sources[{i}].name={s.name!r} is used twice: names must be "
                                 f"unique")
            names.add(s.name)


# megatron-core 0.16.1 TransformerConfig.recompute_modules: the dense ones apply to every student
# here ("layernorm" needs Transformer Engine: checked where distill runs); the others need MoE or
# multi-latent-attention layers, which no model of this project has.
RECOMPUTE_MODULES = ("core_attn", "mlp", "layernorm")
RECOMPUTE_MODULES_UNSUPPORTED = {
    "moe": "needs MoE layers",
    "moe_act": "needs MoE layers with grouped GEMM",
    "shared_experts": "needs MoE shared experts",
    "mla_up_proj": "needs multi-latent attention",
}


def _recompute_module(v: Any) -> str | None:
    choose = f"choose from {', '.join(RECOMPUTE_MODULES)}"
    if v in RECOMPUTE_MODULES_UNSUPPORTED:
        return f"{RECOMPUTE_MODULES_UNSUPPORTED[v]}; the students here are dense: {choose}"
    return None if v in RECOMPUTE_MODULES else f"not a megatron-core recompute module: {choose}"


def _split(v: Any) -> str | None:
    parts = str(v).split(",")
    if len(parts) != 3 or not all(p.strip().replace(".", "", 1).isdigit() for p in parts):
        return "write three numbers, e.g. '99,1,0'"
    weights = [float(p) for p in parts]
    if not sum(weights) > 0:
        return ("the train/valid/test weights sum to 0; give the training set a positive share, "
                "e.g. '99,1,0'")
    if not weights[0] > 0:
        return "the training share (first number) must be > 0"
    return None


def data_parallel_size(world: int, tp: int, pp: int, cp: int = 1) -> int:
    """Data-parallel ranks of a layout: ``world / (tp x pp x cp)`` (the one formula: the
    layout, the pre-flight and the distill stage all ask this). ValueError when the model-
    parallel size does not divide the world."""
    model_parallel = int(tp) * int(pp) * int(cp)
    if int(world) < 1 or int(world) % model_parallel:
        raise ValueError(f"world size {world} is not a multiple of tp x pp x cp = {tp} x {pp} x "
                         f"{cp} = {model_parallel}")
    return int(world) // model_parallel


def sharded_optimizer(value: object, dp: int) -> bool:
    """``train.distributed_optimizer`` resolved: ``auto`` shards the optimizer whenever dp > 1
    (the launcher also follows a resumed run's checkpoints: launch/layout.py)."""
    text = str(value).strip().lower()
    if text == "auto":
        return dp > 1
    if text in ("true", "on", "yes", "1"):
        return True
    if text in ("false", "off", "no", "0"):
        return False
    raise ValueError(f"train.distributed_optimizer={value!r}: choose auto, true or false")


FUSIONS = ("norm", "rope", "swiglu", "residual")  # train.fuse: what kd/fused.py compiles without TE


def _fuse(v: Any) -> str | None:
    if v == "auto":
        return None
    if isinstance(v, (list, tuple)) and all(x in FUSIONS for x in v) and len(set(v)) == len(v):
        return None
    return (f"write auto or a list of distinct names from {', '.join(FUSIONS)} "
            f"(e.g. [norm, rope]; [] for none)")


def sequence_parallel(value: object, tp: int) -> bool:
    """``train.sequence_parallel`` resolved: ``auto`` is on whenever tp > 1."""
    text = str(value).strip().lower()
    if text == "auto":
        return int(tp) > 1
    if text in ("true", "on", "yes", "1"):
        return True
    if text in ("false", "off", "no", "0"):
        return False
    raise ValueError(f"train.sequence_parallel={value!r}: choose auto, true or false")


def fusions(value: object, device: str) -> tuple[str, ...]:
    """``train.fuse`` resolved: ``auto`` is every fusion on GPU and none on CPU (there
    torch.compile costs tens of seconds per kernel and buys nothing worth it)."""
    if value == "auto":
        return FUSIONS if device == "cuda" else ()
    return tuple(value)


@dataclass(frozen=True)
class Train(Section):
    # tp, pp, micro_batch_size, recompute: "auto" lets launch/layout.py choose from the memory
    # estimate (smallest model parallelism that fits, then the largest micro-batch); the stage
    # spec always holds the resolved values
    tp: int | str = knob("auto", positive_or_auto)
    pp: int | str = knob("auto", positive_or_auto)
    cp: int = knob(1, lambda v: None if v == 1 else "context parallelism is not supported by "
                   "the distill stage yet; set train.cp=1")
    seq_length: int = knob(4096, positive)
    micro_batch_size: int | str = knob("auto", positive_or_auto)
    # activation recomputation of the student: auto | none | full | selective (only the
    # recompute_modules; Megatron's default [core_attn] when the list is empty)
    recompute: str = knob("auto", one_of("auto", "none", "full", "selective"))
    recompute_modules: tuple[str, ...] = knob((), each(_recompute_module))
    # overlap the data-parallel gradient all-reduce with backward (GPU, dp > 1); off: no gain
    # measured on one 4 x H100 node (benchmarks/results/h100x4_2026-11-28_issue8.json)
    overlap_grad_reduce: bool = False
    # auto | true | false: Megatron's distributed optimizer (Adam states sharded over DP ranks);
    # auto = on whenever DP > 1, or as the run's checkpoints were saved when it resumes (the
    # launcher resolves it to true/false: launch/layout.py, rule in sharded_optimizer())
    distributed_optimizer: bool | str = knob("auto", one_of("auto", True, False))
    # auto | true | false: sequence parallelism (norms, residuals, dropout split along the
    # sequence over the TP ranks; kd.fused.Norm without TE); auto = on whenever tp > 1
    sequence_parallel: bool | str = knob("auto", one_of("auto", True, False))
    # auto | [norm, rope, swiglu, residual]: element-wise work through torch.compile without TE
    # (kd/fused.py); auto = all on GPU, none on CPU
    fuse: tuple[str, ...] | str = knob("auto", _fuse)
    global_batch_size: int = knob(4, positive)
    train_iters: int = knob(100, positive)
    lr: float = knob(1e-4, finite_positive)
    min_lr: float = knob(1e-5, at_least(0))
    lr_warmup_iters: int = knob(10, at_least(0))
    eval_interval: int = knob(10, positive)
    eval_iters: int = knob(10, at_least(0))
    log_interval: int = knob(1, positive)
    save_interval: int | None = knob(None, positive)  # None: at the end (and on timeout signals)
    seed: int = 1234
    precision: str = knob("bf16", one_of("bf16", "fp32"))  # the launcher uses fp32 without GPUs
    split: str = knob("99,1,0", _split)  # train/valid/test split of the blend

    def sharded_optimizer(self, dp: int) -> bool:
        """``distributed_optimizer`` resolved for ``dp`` data-parallel ranks (the one rule)."""
        return sharded_optimizer(self.distributed_optimizer, dp)

    def sequence_parallel_on(self, tp: int | None = None) -> bool:
        """``sequence_parallel`` resolved for ``tp`` (default: this section's resolved tp)."""
        return sequence_parallel(self.sequence_parallel, self.tp if tp is None else tp)

    def fusions(self, device: str) -> tuple[str, ...]:
        """``fuse`` resolved for ``device`` ("cuda" or "cpu")."""
        return fusions(self.fuse, device)

    def check(self) -> None:
        if self.min_lr > self.lr:
            raise FieldError("min_lr", self.min_lr, "", f"{{s}}lr={self.lr}, {{s}}min_lr="
                             f"{self.min_lr}: need lr > 0 and 0 <= min_lr <= lr")
        if self.lr_warmup_iters >= self.train_iters:
            raise FieldError("lr_warmup_iters", self.lr_warmup_iters, "",
                             f"{{s}}lr_warmup_iters={self.lr_warmup_iters} must be < {{s}}"
                             f"train_iters={self.train_iters}: lower the warm-up or train longer")
        if self.recompute_modules and self.recompute != "selective":
            raise FieldError("recompute_modules", list(self.recompute_modules), "",
                             f"{{s}}recompute_modules={list(self.recompute_modules)} is only used "
                             f"with {{s}}recompute=selective (got {self.recompute!r}): remove it or "
                             f"set {{s}}recompute=selective")
        if len(set(self.recompute_modules)) != len(self.recompute_modules):
            raise FieldError("recompute_modules", list(self.recompute_modules),
                             "a module is named twice")
        if self.sequence_parallel is True and self.tp == 1:
            raise FieldError("sequence_parallel", True, "", "{s}sequence_parallel=true needs "
                             "tensor parallelism: set {s}tp > 1 (or auto), or "
                             "{s}sequence_parallel=auto")
        mbs = self.micro_batch_size
        if isinstance(mbs, int) and self.global_batch_size % mbs:
            raise FieldError("global_batch_size", self.global_batch_size, "",
                             f"{{s}}global_batch_size={self.global_batch_size} is not a multiple "
                             f"of {{s}}micro_batch_size={mbs}")

    def save_points(self) -> list[int]:
        """Iterations a checkpoint is saved at."""
        s = self.save_interval
        points = set(range(s, self.train_iters + 1, s)) if s else set()
        return sorted(points | {self.train_iters})


@dataclass(frozen=True)
class KD(Section):
    logit_kl_temperature: float = knob(1.0, finite_positive)
    logit_kl_topk: int | None = knob(None, lambda v: None if v is None or v > 0 else
                                     "must be > 0 (or null for the full vocabulary)")
    intermediate_layer_pairs: tuple[tuple[str, str], ...] = ()
    skip_lm_loss: bool = True  # False mixes the student's CE loss in
    kd_loss_scale: float = knob(1.0, finite_positive)
    # torch.compile the frozen teacher's whole forward (no autograd, static shapes; kd/fused.py)
    compile_teacher: bool = False


KDOptions = KD  # the name the distill stage uses


@dataclass(frozen=True)
class Export(Section):
    enabled: bool = True
    hf_template: str | None = None  # the guide's --hf-model: base architecture of the student
    iteration: int | None = knob(None, positive)  # None: the last saved iteration


LR_DECAY_STYLES = ("cosine", "linear", "constant", "inverse-square-root", "WSD")


def _below_one(v: Any) -> str | None:
    return None if _number(v) and 0 <= v < 1 else "must be a number >= 0 and < 1"


@dataclass(frozen=True)
class Optimizer(Section):
    """Adam and the learning-rate schedule of distill (peak/min lr and warm-up are in train)."""

    adam_beta1: float = knob(0.9, _below_one)
    adam_beta2: float = knob(0.95, _below_one)
    adam_eps: float = knob(1e-8, finite_positive)
    weight_decay: float = knob(0.01, at_least(0))  # constant over the run
    clip_grad: float = knob(1.0, at_least(0))  # global gradient-norm clip; 0 turns it off
    lr_decay_style: str = knob("cosine", one_of(*LR_DECAY_STYLES))


@dataclass(frozen=True)
class Checkpoint(Section):
    """How distill saves (the interval is train.save_interval)."""

    # keep the newest k complete checkpoints (kd.checkpoints.prune); null keeps all. Never
    # deleted: the latest complete one (what a rerun resumes from), export.iteration and sweep
    # checkpoint candidates.
    keep_last: int | None = knob(None, lambda v: None if v is None or (_number(v) and v >= 1) else
                                 "must be >= 1 (the latest complete checkpoint is what a rerun "
                                 "resumes from), or null to keep every checkpoint")
    # Megatron's async save (torch_dist): training goes on while a background worker writes.
    # Needs CUDA (megatron-core's worker calls torch.cuda.set_device): refused without GPUs.
    async_save: bool = False


def _secret_field(v: Any) -> str | None:
    return None if v is None else (
        "a W&B key is never read from a config (configs are copied into manifest.json and job "
        "files): remove it and export WANDB_API_KEY in the shell that launches")


@dataclass(frozen=True)
class Logging(Section):
    """TensorBoard timers and the optional Weights & Biases logger of distill.

    W&B: set wandb_project to turn it on (``pip install wandb`` where distill runs).
    ``wandb_mode: offline`` (default: compute nodes rarely reach the internet) writes under
    RUN/distill/wandb for a later ``wandb sync``; ``online`` takes the key from WANDB_API_KEY in
    the launching environment only: no config field holds it."""

    timers: int = knob(0, one_of(0, 1, 2, shown="0 (iteration time only), 1 or 2 (finer "
                                                "timers, also written to TensorBoard)"))
    wandb_project: str | None = knob(None, matches(r"\S.*", "give a non-empty name or remove it"))
    wandb_entity: str | None = knob(None, matches(r"\S.*", "give a non-empty name or remove it"))
    wandb_name: str | None = knob(None, matches(r"\S.*", "give a non-empty name or remove it"))
    wandb_mode: str = knob("offline", one_of("offline", "online", "disabled"))
    wandb_api_key: str | None = None  # never set: refused (value not echoed) with the way

    def check(self) -> None:
        if self.wandb_api_key is not None:
            raise FieldError("wandb_api_key", "<hidden>", "", "{s}wandb_api_key: "
                             + _secret_field(self.wandb_api_key))


EVAL_DTYPES = ("auto", "bfloat16", "float16", "float32", "half", "float")


def _batch_size(v: Any) -> str | None:
    if isinstance(v, str):
        return None if re.fullmatch(r"auto(:\d+)?", v) else "a positive integer, 'auto' or 'auto:N'"
    return positive(v)


MMLU_SHOTS = 5  # dev examples per MMLU subject: the most shots the eval stage can give


def _num_fewshot(v: Any) -> str | None:
    if _number(v) and 0 <= v <= MMLU_SHOTS:
        return None
    return (f"MMLU has {MMLU_SHOTS} dev examples per subject, so the eval stage takes "
            f"0..{MMLU_SHOTS} shots: set eval.num_fewshot to 0..{MMLU_SHOTS}")


@dataclass(frozen=True)
class Eval(Section):
    enabled: bool = True
    # mmlu first: the eval stage and the report read the mmlu group and its 4 categories
    # (kd/results.py GROUPS); extra lm-eval tasks (multiple-choice or generative) follow it
    tasks: tuple[str, ...] = knob(("mmlu",), each(matches(
        r"[A-Za-z0-9][A-Za-z0-9_.\-]*", "not an lm-eval task name (letters, digits, '_', '-', '.')")))
    num_fewshot: int = knob(MMLU_SHOTS, _num_fewshot)
    limit: int | float | None = knob(None, positive)  # per subject, as lm-eval defines it: N or a fraction < 1
    batch_size: int | str = knob(1, _batch_size)
    dtype: str = knob("bfloat16", one_of(*EVAL_DTYPES))  # the launcher uses float32 without GPUs
    include_path: str | None = None  # lm-eval task overrides (e.g. a local copy of cais/mmlu)

    def check(self) -> None:
        if self.enabled and not self.tasks:
            raise FieldError("tasks", (), "", "{s}tasks is empty: name at least one lm-eval task "
                             "(e.g. [mmlu]) or set eval.enabled=false")
        if self.enabled and self.tasks[0] != "mmlu":
            shown = list(dict.fromkeys(("mmlu", *self.tasks)))
            raise FieldError("tasks", list(self.tasks), "", f"{{s}}tasks={list(self.tasks)}: "
                             f"start with 'mmlu' (the eval stage and the report read the mmlu "
                             f"group and its 4 categories); extra tasks follow it, e.g. "
                             f"{{s}}tasks={shown}")
        twice = sorted({t for t in self.tasks if self.tasks.count(t) > 1})
        if self.enabled and twice:
            raise FieldError("tasks", list(self.tasks), "", f"{{s}}tasks={list(self.tasks)} "
                             f"names {', '.join(twice)} more than once: list each task once")


VAL_LOSS = "val_loss"  # select.by: the student's validation loss that distill logs
MMLU_GROUPS = tuple(RESULT_GROUPS)  # mmlu and its 4 categories, as every results file holds them


@dataclass(frozen=True)
class Select(Section):
    """Checkpoint selection (kd/selection.py): which saved iteration becomes ``export/hf``. Off
    unless ``iterations`` or ``every_save`` names candidates; the last iteration always is one."""

    iterations: tuple[int, ...] = knob((), each(positive))  # saved iterations to consider
    every_save: bool = False  # consider every saved iteration
    # what decides: a results group (mmlu, mmlu_stem, ..., a task of eval.tasks) or val_loss
    by: str = knob("mmlu", matches(r"[A-Za-z0-9][A-Za-z0-9_.\-]*",
                                   "a results group (mmlu, mmlu_stem, a task of eval.tasks) or "
                                   "val_loss"))
    limit: int | float | None = knob(20, positive)  # the quick eval: questions per subject
    keep_candidates: bool = True  # false: delete the other candidates' exports once one is chosen
    noise_z: float = knob(2.0, finite_positive)  # overfitting flag: last worse than best by > z stderrs

    @property
    def enabled(self) -> bool:
        return bool(self.iterations) or self.every_save

    def candidates(self, train: Train) -> list[int]:
        """The candidate iterations, ascending (the last one always among them)."""
        points = train.save_points()
        chosen = set(points) if self.every_save else set(self.iterations)
        return sorted(chosen | {train.train_iters})


@dataclass(frozen=True)
class Experiment(Section):
    name: str
    student: ModelRef
    teacher: ModelRef
    data: Data
    train: Train = knob(factory=Train)
    kd: KD = knob(factory=KD)
    export: Export = knob(factory=Export)
    eval: Eval = knob(factory=Eval)
    optimizer: Optimizer = knob(factory=Optimizer)
    checkpoint: Checkpoint = knob(factory=Checkpoint)
    logging: Logging = knob(factory=Logging)
    select: Select = knob(factory=Select)
    # every Hugging Face load (distill's AutoBridge, export, lm-eval's model and tokenizer) may
    # run code shipped with the model; only for models you trust
    trust_remote_code: bool = False

    def check(self) -> None:  # across sections
        ex, t = self.export, self.train
        if self.teacher.megatron_checkpoint is not None:
            raise FieldError("teacher.megatron_checkpoint", self.teacher.megatron_checkpoint, "",
                             "teacher.megatron_checkpoint: only the student can start from a "
                             "Megatron checkpoint (the teacher is loaded from teacher.path); "
                             "remove it")
        if ex.enabled and not ex.hf_template:
            raise FieldError("export.hf_template", None, "", "export.hf_template is not set but "
                             "export.enabled is true: give the HF model (dir or id) of the "
                             "student's base architecture, e.g. export.hf_template=meta-llama/"
                             "Llama-3.1-8B-Instruct, or set export.enabled=false")
        it = ex.iteration
        if it is not None and it > t.train_iters:
            raise FieldError("export.iteration", it, "", f"export.iteration={it} is beyond "
                             f"train.train_iters={t.train_iters}: no checkpoint will exist; lower "
                             f"export.iteration or leave it null (the last saved iteration)")
        if it is not None and it not in (points := t.save_points()):
            shown = ", ".join(map(str, points[:8])) + (", ..." if len(points) > 8 else "")
            raise FieldError("export.iteration", it, "", f"export.iteration={it} is not a save "
                             f"point (train.save_interval={t.save_interval}, train.train_iters="
                             f"{t.train_iters}; saved at {shown}): pick one of those or leave "
                             f"export.iteration null")
        if self.eval.enabled and not ex.enabled:
            raise FieldError("eval.enabled", True, "", "eval.enabled needs export.enabled: the "
                             "distilled student is evaluated from its HF export; enable export or "
                             "set eval.enabled=false")
        if self.select.enabled:
            self._check_select()

    def _check_select(self) -> None:
        sel, t, ev = self.select, self.train, self.eval
        if not self.export.enabled or self.export.iteration is not None:
            raise FieldError("select", None, "", "select needs export.enabled=true and "
                             "export.iteration unset (selection decides the exported iteration): "
                             "change export or drop select.iterations/select.every_save")
        points = t.save_points()
        bad = [it for it in sel.iterations if it not in points]
        if bad:
            shown = ", ".join(map(str, points[:8])) + (", ..." if len(points) > 8 else "")
            raise FieldError("select.iterations", list(sel.iterations), "",
                             f"select.iterations={list(sel.iterations)}: {bad[0]} is not a save "
                             f"point (train.save_interval={t.save_interval}, train.train_iters="
                             f"{t.train_iters}; saved at {shown}): pick saved iterations or set "
                             f"select.every_save=true")
        if sel.by == VAL_LOSS:
            unlogged = [it for it in sel.candidates(t)
                        if it != t.train_iters and it % t.eval_interval]
            if unlogged or not t.eval_iters:
                raise FieldError("select.by", sel.by, "", f"select.by=val_loss: distill logs the "
                                 f"validation loss every train.eval_interval={t.eval_interval} "
                                 f"iterations (train.eval_iters={t.eval_iters}), not at "
                                 f"{unlogged or 'any'}: make eval_interval divide the candidate "
                                 f"iterations and eval_iters > 0, or select by a task")
            return
        if not ev.enabled:
            raise FieldError("select.by", sel.by, "", f"select.by={sel.by}: scoring candidates "
                             f"needs the eval stage (eval.enabled=true), or select by val_loss")
        if sel.by in ev.tasks or sel.by in MMLU_GROUPS:
            return
        groups = ", ".join(MMLU_GROUPS)
        if sel.by.startswith("mmlu"):
            raise FieldError("select.by", sel.by, "", f"select.by={sel.by}: no such MMLU group "
                             f"(the results hold {groups}) and not in eval.tasks "
                             f"{list(ev.tasks)}: use one of those groups, one of eval.tasks, "
                             f"or val_loss")
        raise FieldError("select.by", sel.by, "", f"select.by={sel.by}: not an MMLU group and "
                         f"not in eval.tasks {list(ev.tasks)}: use mmlu, an MMLU category "
                         f"({groups}), one of eval.tasks, or val_loss")


# ---------------------------------------------------------------- the one converter
def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return "mapping"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def build(cls: type, data: Any, where: str) -> Any:
    """Build dataclass ``cls`` from ``data`` (a dict), checking every field."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown key(s) {', '.join(prefix + str(k) for k in unknown)}; "
            f"valid keys{' of ' + where if where else ''}: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, f in fields.items():
        path = f"{where}.{name}" if where else name
        if name in data:
            kwargs[name] = convert(hints[name], data[name], path)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{path} is required but missing: add `{name}: ...` to the config "
                              f"or pass {path}=VALUE on the command line")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except FieldError as e:  # a check beside its field
        raise ConfigError(e.render(f"{where}." if where else "")) from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where or 'config'}: {e}") from e


def convert(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return convert(arg, value, path)
            except ConfigError:
                continue
        raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        return build(tp, value, path)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r} "
                              f"(write a YAML list, e.g. [a, b])")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{path}: expected {len(args)} items, got {value!r}")
            return tuple(convert(a, v, f"{path}[{i}]")
                         for i, (a, v) in enumerate(zip(args, value, strict=True)))
        item = args[0] if args else Any
        return tuple(convert(item, v, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        _, vt = typing.get_args(tp) or (str, Any)
        return {str(k): convert(vt, v, f"{path}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected an integer, got {value!r}")
    if tp is float:
        out = None
        if _number(value):
            out = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                out = float(value)
            except ValueError:
                pass
        if out is None:
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        if not math.isfinite(out):
            raise ConfigError(f"{path}={value!r}: must be a finite number (not NaN or infinity)")
        return out
    if tp is str:
        if isinstance(value, str):
            return value
        if _number(value):
            return str(value)
        raise ConfigError(f"{path}: expected a string, got {value!r}")
    raise AssertionError(f"unsupported annotation {tp!r} at {path}")


def to_dict(obj: Any) -> Any:
    """Plain (YAML/JSON-able) form of a config dataclass; ``build`` reads it back."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj
