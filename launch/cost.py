"""What a run costs before it is queued: step time, stage wall times, GPU-hours, time limits.

Login-node side, stdlib only (like launch/memory.py beside it). ``predict(exp, cluster)`` gives a
``Prediction``: per stage the estimated wall time of its job, the GPUs it holds, its GPU-hours
and the time limit it asks for (``cluster.time_min`` / ``cluster.stages.*_min``: a pinned number,
or ``auto``, the default: the estimate times ``cluster.time_safety``, rounded up to 5 minutes,
never above ``cluster.time_max_min``, the partition's MaxTime / the QOS's MaxWall that
``with_site_facts`` asks SLURM for). ``stage_limits`` is what ``launch/plan.py`` puts on the
jobs; ``check_time_limits`` is the pre-flight's refusal of a pinned distill time that cannot
finish ``train.train_iters`` within ``cluster.max_requeues`` restarts.

The distill step (``step_time``), per training step of one rank::

    flops / (peak x e[family]) + micro_batches x layers / pp x o[family]
    + k x unfused-attention work + data-parallel gradient traffic / bandwidth   (x PP bubble)

* ``flops``: model FLOPs per GPU per step, ``tokens x (3 F_student + F_teacher) / GPUs``
  (``forward_flops_per_token``: the formula of benchmarks/kd_throughput.py, re-derived here so
  the launcher never imports the benchmark; tests/launch/test_cost.py holds them equal); full
  recomputation adds one student forward, selective its attention core;
* ``peak``: the GPU kind's dense bf16 datasheet peak (``GPU_KINDS``; the kind is
  ``cluster.gpu_kind``, else the GRES type of the partition's nodes, else ``DEFAULT_GPU_KIND``);
* ``family``: ``tp1`` (no tensor parallelism) or ``tp`` (TP > 1: without sequence
  parallelism every TP rank repeats the element-wise work and waits on two all-reduces per
  layer, so a step there is dominated by per-layer cost, not FLOPs). ``e`` is the efficiency of
  the FLOPs (the MFU the step would reach without overheads), ``o`` the cost of one layer of one
  micro-batch (kernel launches, element-wise kernels, TP collectives), layers = student +
  teacher layers;
* ``k``: megatron-core's unfused local attention (the guide's setting; the stage uses SDPA)
  costs ``k`` seconds per 1e9 of ``micro_batch x seq^2 x heads / tp x (teacher + 3 x student
  attention layers)``;
* gradient traffic: fp32 gradients (``2 (dp-1)/dp x 4 B`` per student parameter of the rank;
  with the distributed optimizer a reduce-scatter of them plus the bf16 parameter all-gather)
  over the kind's NVLink bus bandwidth inside a node, ``INTER_NODE_GBPS`` across nodes
  (datasheet-level constants, not fitted);
* PP > 1: the 1F1B bubble ``(pp - 1) / micro_batches`` (no PP run was measured).

The five coefficients (``FIT``) are a least-squares fit (relative error, ``e <= 1``) to the step
times of 14 measured layouts (benchmarks/results: ``h100x4_2026-11-28_issue8.json``, the
``kd_throughput`` run of ``h200x1_2026-11-28_issue14_8b.json`` and
``h200x2_2026-11-28_issue14_8b32.json``); tests/launch/test_cost.py refits them and judges the
model on 13 held-out layouts (error table in CONTRIBUTING.md, "Cost estimate"). Sequence
parallelism and the fusions of ``train.fuse`` were not in any measured run: the estimate does
not count their gain (it errs long, the safe side for a time limit), and the report's
measured / predicted ratio shows what they bought.

Stage wall time = process start (imports) + set-up + work. Distill: model build and load
(``DISTILL_SETUP_S`` + weights at ``LOAD_GBPS``), a first-step warm-up, ``train_iters`` steps,
validation (``eval_iters`` forward steps every ``eval_interval``) and checkpoint saves (the
student's 14 bytes per parameter at ``SAVE_GBPS`` per node). Evals: lm-eval set-up, model load
and per question ``choices x tokens x 2 x parameters`` FLOPs at ``EVAL_EFFICIENCY`` of the
peak, split over the eval's processes (one per GPU). Export, data preparation and the report
are start-up plus I/O. On CPU (no GPUs: the embedded demo) every rate is a constant measured on
this project's 2-core CI machine (``CPU_*``), not a FLOP model.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kd import stages as registry
from launch.gpus import GPU_KINDS

AUTO = "auto"
GIB = 1024**3

# ---------------------------------------------------------------- FLOPs


def layer_shapes(config: dict) -> list[dict]:
    """Per layer: hidden, heads, kv heads, head dim, FFN width (0 = no-op), attention on/off
    (AnyModel ``block_configs`` aware)."""
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or hidden // heads)
    kv = int(config.get("num_key_value_heads") or heads)
    blocks = config.get("block_configs")
    if not blocks:
        one = dict(hidden=hidden, heads=heads, kv=kv, head_dim=head_dim,
                   ffn=int(config.get("intermediate_size") or 0), attention=True)
        return [one] * int(config["num_hidden_layers"])
    out = []
    for block in blocks:
        attn, ffn = block.get("attention", {}), block.get("ffn", {})
        attention = not (attn.get("no_op") or attn.get("replace_with_linear"))
        width = 0 if ffn.get("no_op") else int(ffn.get("intermediate_size")
                                               or config.get("intermediate_size") or 0)
        out.append(dict(hidden=hidden, heads=heads, kv=int(attn.get("num_key_value_heads") or kv),
                        head_dim=head_dim, ffn=width, attention=attention))
    return out


def forward_flops_per_token(config: dict, seq: int) -> float:
    """2 x matmul weights + causal attention (QK^T and AV), per token, forward only: the
    formula of benchmarks/kd_throughput.py (its MFU column)."""
    total = 2.0 * config["hidden_size"] * config["vocab_size"]  # LM head
    for s in layer_shapes(config):
        if s["attention"]:
            q_width, kv_width = s["heads"] * s["head_dim"], s["kv"] * s["head_dim"]
            total += 2.0 * s["hidden"] * (2 * q_width + 2 * kv_width)  # q, o, k, v
            total += 2.0 * seq * q_width  # QK^T + AV with a causal mask (half of s x s)
        total += 2.0 * 3 * s["hidden"] * s["ffn"]  # SwiGLU: gate, up, down
    return total


def attention_core_flops_per_token(config: dict, seq: int) -> float:
    """The attention core alone (what selective recomputation of ``core_attn`` redoes)."""
    return sum(2.0 * seq * s["heads"] * s["head_dim"] for s in layer_shapes(config)
               if s["attention"])


def kd_flops_per_token(student: dict, teacher: dict, seq: int, recompute: str = "none") -> float:
    """Model FLOPs of one KD token: the student forward and backward (backward = 2 x forward),
    the frozen teacher's forward; recomputation adds what it redoes."""
    fs = forward_flops_per_token(student, seq)
    extra = fs if recompute == "full" else (
        attention_core_flops_per_token(student, seq) if recompute == "selective" else 0.0)
    return 3.0 * fs + forward_flops_per_token(teacher, seq) + extra


def parameters(config: dict) -> int:
    from launch.memory import parameters as count

    return count(config)


def attention_layers(config: dict) -> int:
    return sum(1 for s in layer_shapes(config) if s["attention"])


# ---------------------------------------------------------------- GPU kinds


# GpuKind and the GPU_KINDS table live in launch/gpus.py (leaf: launch/config.py checks
# cluster.gpu_kind against it without importing this module)
DEFAULT_GPU_KIND = "h100"  # where neither cluster.gpu_kind nor the partition's GRES says
INTER_NODE_GBPS = 40.0  # all-reduce bus bandwidth across nodes per GPU (400 Gb/s InfiniBand)
# a GRES type names the kind when one of these appears in it (gpu:h100:8, gpu:nvidia_h200:4,
# gpu:a100_80g:8); longest first, so that gh200 is not read as h200
_GRES_ORDER = sorted(GPU_KINDS, key=len, reverse=True)


def kind_from_gres_type(gres_type: str) -> str | None:
    text = gres_type.lower()
    return next((k for k in _GRES_ORDER if k in text), None)


# ---------------------------------------------------------------- the step model


@dataclass(frozen=True)
class StepModel:
    """Coefficients of ``step_time`` (see the module docstring)."""

    inv_eff_tp1: float  # 1 / e: seconds of one GPU per peak-second of FLOPs, no TP
    inv_eff_tp: float  # the same with TP > 1
    layer_s_tp1: float  # o: seconds per layer per micro-batch, no TP
    layer_s_tp: float  # o with TP > 1
    unfused_attention_s: float  # k: seconds per 1e9 units of unfused (local) attention work

    def as_list(self) -> list[float]:
        return [self.inv_eff_tp1, self.inv_eff_tp, self.layer_s_tp1, self.layer_s_tp,
                self.unfused_attention_s]


# fitted by tests/launch/test_cost.py::test_coefficients_are_the_fit_of_the_recorded_results
# (14 layouts; lower bounds: efficiency <= 1, overheads >= 0)
FIT = StepModel(inv_eff_tp1=2.0512, inv_eff_tp=1.0, layer_s_tp1=0.0015217, layer_s_tp=0.0038934,
                unfused_attention_s=0.0037828)
LOWER_BOUNDS = StepModel(1.0, 1.0, 0.0, 0.0, 0.0)
FIT_FILES = ("h100x4_2026-11-28_issue8.json", "h200x1_2026-11-28_issue14_8b.json",
             "h200x2_2026-11-28_issue14_8b32.json")

# CPU (no GPUs): rates measured on this project's 2-core CI machine (the tiny demo, 2026-12-07),
# not a FLOP model. Its step is Python overhead and varied 30x with the machine's load (67 ms
# alone, 1.7 s beside a parallel test run): the constants sit between the two
CPU_STEP_S = 0.1  # fixed cost of one optimizer step (Megatron's loop, Adam, logging)
CPU_LAYER_S = 0.03  # one layer of one micro-batch
CPU_FLOPS = 2.0e10  # what the matmuls reach on the machine's cores
CPU_STAGE_START_S = 22.0  # process start + torch / Megatron / lm-eval imports
CPU_DISTILL_SETUP_S = 12.0  # model build, load, data index (tiny models)
CPU_QUESTION_S = 0.016  # lm-eval per question (tiny models, batch 32)
CPU_SAVE_S = 2.0
CPU_REPORT_S = 10.0  # pandas + matplotlib


@dataclass(frozen=True)
class StepShape:
    """What the step time depends on: the pair, the layout and the hardware."""

    student: dict
    teacher: dict
    seq: int
    global_batch_size: int
    micro_batch_size: int
    tp: int = 1
    pp: int = 1
    dp: int = 1
    cp: int = 1
    attention: str = "sdpa"  # the distill stage's; "local" = megatron-core's unfused one
    recompute: str = "none"
    sharded_optimizer: bool = False
    kind: str = DEFAULT_GPU_KIND  # a GPU_KINDS key, or "cpu"
    nodes: int = 1

    @property
    def world(self) -> int:
        return self.tp * self.pp * self.dp * self.cp

    @property
    def micro_batches(self) -> int:
        """Micro-batches each rank runs per step."""
        return max(1, self.global_batch_size // (self.micro_batch_size * self.dp))

    @property
    def layers(self) -> int:
        return int(self.student["num_hidden_layers"]) + int(self.teacher["num_hidden_layers"])

    @property
    def tokens(self) -> int:
        return self.global_batch_size * self.seq

    def flops_per_gpu(self) -> float:
        return (kd_flops_per_token(self.student, self.teacher, self.seq, self.recompute)
                * self.tokens / self.world)

    def model_flops_per_gpu(self) -> float:
        """Without recomputation: what MFU counts."""
        return kd_flops_per_token(self.student, self.teacher, self.seq) * self.tokens / self.world


def features(shape: StepShape) -> list[float]:
    """The terms ``FIT`` multiplies, in its order (seconds at coefficient 1)."""
    kind = GPU_KINDS[shape.kind]
    compute = shape.flops_per_gpu() / (kind.peak_tflops * 1e12)
    layer_mb = shape.micro_batches * shape.layers / shape.pp
    tp1 = shape.tp == 1
    unfused = 0.0
    if shape.attention == "local":
        heads = int(shape.student["num_attention_heads"])
        per_mb = (shape.micro_batch_size * shape.seq ** 2 * heads / shape.tp
                  * (attention_layers(shape.teacher) + 3 * attention_layers(shape.student)))
        unfused = shape.micro_batches * per_mb / shape.pp * 1e-9
    return [compute if tp1 else 0.0, 0.0 if tp1 else compute,
            layer_mb if tp1 else 0.0, 0.0 if tp1 else layer_mb, unfused]


def grad_sync_s(shape: StepShape) -> float:
    """Data-parallel gradient traffic per step (not overlapped: overlap measured no gain)."""
    if shape.dp <= 1:
        return 0.0
    params = parameters(shape.student) / (shape.tp * shape.pp)
    share = (shape.dp - 1) / shape.dp
    volume = share * (4 + 2) * params if shape.sharded_optimizer else 2 * share * 4 * params
    bw = GPU_KINDS[shape.kind].bus_gbps if shape.nodes <= 1 else INTER_NODE_GBPS
    return volume / (bw * 1e9)


@dataclass(frozen=True)
class StepTime:
    compute_s: float  # the FLOPs at the family's efficiency
    layers_s: float  # per-layer, per-micro-batch cost
    attention_s: float  # unfused attention
    grad_sync_s: float
    bubble_s: float
    model_flops_per_gpu: float
    peak_tflops: float | None

    @property
    def total(self) -> float:
        return self.compute_s + self.layers_s + self.attention_s + self.grad_sync_s + self.bubble_s

    @property
    def mfu(self) -> float | None:
        if not self.peak_tflops or not self.total:
            return None
        return self.model_flops_per_gpu / self.total / (self.peak_tflops * 1e12)


def step_time(shape: StepShape, model: StepModel = FIT) -> StepTime:
    if shape.kind == "cpu":
        compute = shape.flops_per_gpu() / CPU_FLOPS
        layers = shape.micro_batches * shape.layers / shape.pp * CPU_LAYER_S + CPU_STEP_S
        return StepTime(compute, layers, 0.0, 0.0, 0.0, shape.model_flops_per_gpu(), None)
    f = features(shape)
    c = model.as_list()
    compute = f[0] * c[0] + f[1] * c[1]
    layers = f[2] * c[2] + f[3] * c[3]
    attention = f[4] * c[4]
    bubble = ((compute + layers + attention) * (shape.pp - 1) / shape.micro_batches
              if shape.pp > 1 else 0.0)
    return StepTime(compute, layers, attention, grad_sync_s(shape), bubble,
                    shape.model_flops_per_gpu(), GPU_KINDS[shape.kind].peak_tflops)


def fit(points: list[tuple[StepShape, float]], lower: StepModel = LOWER_BOUNDS) -> StepModel:
    """Least squares of the relative error of ``step_time`` over ``points`` ((shape, measured
    step seconds)), each coefficient at least its ``lower`` bound: every subset of coefficients
    held at its bound, the others solved by the normal equations; the best feasible one."""
    rows = [(features(s), t - grad_sync_s(s), t) for s, t in points]
    lo = lower.as_list()
    n = len(lo)
    best: tuple[float, list[float]] | None = None
    for mask in range(2 ** n):
        fixed = [bool(mask >> i & 1) for i in range(n)]
        free = [i for i in range(n) if not fixed[i]]
        x = list(lo)
        if free:
            a = [[r[0][i] / r[2] for i in free] for r in rows]
            b = [(r[1] - sum(r[0][i] * lo[i] for i in range(n) if fixed[i])) / r[2]
                 for r in rows]
            solved = _least_squares(a, b)
            if solved is None:
                continue
            for i, v in zip(free, solved, strict=True):
                x[i] = v
        if any(x[i] < lo[i] - 1e-12 for i in range(n)):
            continue
        res = sum(((sum(f * c for f, c in zip(r[0], x, strict=True)) - r[1]) / r[2]) ** 2
                  for r in rows)
        if best is None or res < best[0] - 1e-15:
            best = (res, x)
    if best is None:
        raise ValueError("no feasible fit")
    return StepModel(*best[1])


def _least_squares(a: list[list[float]], b: list[float]) -> list[float] | None:
    """Normal equations by Gauss-Jordan with partial pivoting; None when singular."""
    n = len(a[0])
    m = [[sum(r[i] * r[j] for r in a) for j in range(n)] + [sum(r[i] * y for r, y in zip(a, b, strict=True))]
         for i in range(n)]
    for col in range(n):
        piv = max(range(col, n), key=lambda r: abs(m[r][col]))
        if abs(m[piv][col]) < 1e-18:
            return None
        m[col], m[piv] = m[piv], m[col]
        for r in range(n):
            if r != col:
                k = m[r][col] / m[col][col]
                m[r] = [x - k * y for x, y in zip(m[r], m[col], strict=True)]
    return [m[i][n] / m[i][i] for i in range(n)]


# ---------------------------------------------------------------- stage constants
# GPU nodes. Distill set-up and the first-step warm-up: the two launcher runs
# (h100x4_2026-11-28.json, distill_wall_s against their steps); eval: lm-eval set-up from the
# same runs' evals, efficiency from benchmarks/eval_throughput.py's run
# (h100x4_2026-11-28_issue8.json); I/O rates and the process start are stated assumptions.
STAGE_START_S = 30.0  # process start + torch / Megatron / lm-eval imports on a compute node
DISTILL_SETUP_S = 40.0  # model build, teacher and student load, data index, first save set-up
WARMUP_S = 10.0  # first iteration beyond a steady one (allocator, kernel selection)
LOAD_GBPS = 2.0  # HF checkpoint read, GB/s per node
SAVE_GBPS = 2.0  # Megatron checkpoint write, GB/s per node (shared filesystem)
CHECKPOINT_BYTES = 14  # per student parameter: bf16 weights + fp32 main weights + Adam moments
EVAL_SETUP_S = 25.0  # lm-eval task building and dataset load inside the eval stage
EVAL_EFFICIENCY = {"batched": 0.125, "batch1": 0.08}  # of the peak, per eval process
MMLU_QUESTIONS, MMLU_SUBJECTS = 14042, 57  # cais/mmlu test split
UNKNOWN_TASK_QUESTIONS = 1000  # a task whose size the launcher cannot know (local, others)
TOKENS_PER_SHOT = 92  # MMLU: ~550 prompt tokens at 5-shot (benchmarks/eval_throughput.py)
CHOICES = 4  # loglikelihood requests per multiple-choice question
TOKENIZE_MBPS = 5.0  # data preparation, MB of JSONL per second per worker
REPORT_S = 30.0  # the report stage: pandas + matplotlib
# time limits
SAFETY_DEFAULT = 1.5  # cluster.time_safety's default
ROUND_MIN = 5  # auto limits are whole multiples of this
FLOOR_MIN = 15  # and never below (submitit counts a USR2 as a timeout under 10 min)
FALLBACK_MIN = {"prepare_data": 240, "distill": 240, "export_hf": 120, "eval": 240,
                "report": 15}  # auto without an estimate: the former defaults
FIELDS = registry.TIME_FIELDS  # time kind -> the cluster field that sets it (kd/stages.py)
EVAL_STAGES = registry.EVAL_STAGES  # stage -> eval role


def kind_of_stage(stage: str) -> str:
    """The cluster time field a stage reads: prepare_data, distill, export_hf, eval, report."""
    found = registry.get(stage)
    return found.time if found else stage


# ---------------------------------------------------------------- estimates


@dataclass(frozen=True)
class DistillEstimate:
    step_s: float
    parts: dict[str, float]  # compute, layers, attention, grad_sync, bubble
    iterations: int
    tokens_per_step: int
    world: int
    tokens_per_s_per_gpu: float
    mfu: float | None
    start_s: float  # process start + set-up + warm-up (paid again by every restart)
    train_s: float
    validation_s: float
    saves: int
    save_s: float  # one save
    peak_memory_gib: float | None
    layout: str
    family: str

    @property
    def seconds(self) -> float:
        return self.start_s + self.train_s + self.validation_s + self.saves * self.save_s

    @property
    def per_iteration_s(self) -> float:
        """Training, validation and saves, per iteration (what an allocation is filled with)."""
        return (self.train_s + self.validation_s + self.saves * self.save_s) / self.iterations


@dataclass(frozen=True)
class StageEstimate:
    stage: str
    seconds: float | None  # estimated wall time of the job; None: no estimate (``why``)
    gpus: int  # GPUs the job holds
    limit_min: int  # the time limit it asks for
    how: str  # "auto", "auto, capped by ...", "pinned", "auto (no estimate: ...)"
    field: str  # the cluster field that sets it
    pinned: bool = False
    restarts: int = 0  # allocations beyond the first that the estimate says it takes
    why: str = ""  # why there is no estimate
    detail: str = ""  # what the estimate is made of

    @property
    def gpu_hours(self) -> float | None:
        return None if self.seconds is None else self.seconds * self.gpus / 3600


@dataclass(frozen=True)
class Prediction:
    kind: str  # GPU_KINDS key or "cpu"
    kind_name: str
    kind_source: str
    gpus_per_node: int
    safety: float
    stages: dict[str, StageEstimate]
    distill: DistillEstimate | None = None
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The manifest's ``cost`` record (what status, the report and the trend compare)."""
        d = self.distill
        return {
            "schema": 1,
            "gpu_kind": self.kind, "gpu_name": self.kind_name, "gpu_kind_source": self.kind_source,
            "safety": self.safety,
            "distill": None if d is None else {
                "step_s": round(d.step_s, 4), "tokens_per_s_per_gpu": round(d.tokens_per_s_per_gpu, 1),
                "mfu": None if d.mfu is None else round(d.mfu, 4),
                "peak_memory_gib": d.peak_memory_gib, "iterations": d.iterations,
                "tokens_per_step": d.tokens_per_step, "world": d.world, "layout": d.layout,
                "start_s": round(d.start_s, 1), "train_s": round(d.train_s, 1),
                "validation_s": round(d.validation_s, 1), "saves": d.saves,
                "save_s": round(d.save_s, 1), "family": d.family},
            "stages": {s: {"seconds": None if e.seconds is None else round(e.seconds, 1),
                           "gpus": e.gpus, "gpu_hours": None if e.gpu_hours is None
                           else round(e.gpu_hours, 4), "limit_min": e.limit_min, "how": e.how,
                           "restarts": e.restarts, "why": e.why}
                       for s, e in self.stages.items()},
            "notes": list(self.notes),
        }


def _shape_of(exp, cluster, student: dict, teacher: dict, kind: str) -> StepShape:
    from launch.config import tasks_per_node

    t = exp.train
    world = cluster.nodes * tasks_per_node(cluster)
    dp = max(1, world // (t.tp * t.pp * t.cp))
    return StepShape(student=student, teacher=teacher, seq=t.seq_length,
                     global_batch_size=t.global_batch_size, micro_batch_size=t.micro_batch_size,
                     tp=t.tp, pp=t.pp, dp=dp, cp=t.cp,
                     recompute=t.recompute if t.recompute in ("full", "selective") else "none",
                     sharded_optimizer=t.sharded_optimizer(dp) if hasattr(t, "sharded_optimizer")
                     else False, kind=kind, nodes=cluster.nodes)


def _read_config(path: str | None) -> tuple[dict | None, str]:
    if not path:
        return None, "no path"
    f = Path(os.path.expanduser(path)) / "config.json"
    try:
        stat = f.stat()
    except OSError:
        return None, f"{f} does not exist"
    key = (str(f), stat.st_mtime_ns, stat.st_size)
    if key not in _CONFIGS:
        try:
            cfg = json.loads(f.read_text(encoding="utf-8"))
            ok = isinstance(cfg, dict) and all(
                isinstance(cfg.get(k), int) and cfg[k] > 0
                for k in ("hidden_size", "num_attention_heads", "num_hidden_layers", "vocab_size"))
            _CONFIGS[key] = (cfg, "") if ok else (None, f"{f} lacks the model's sizes")
        except (OSError, ValueError) as e:
            _CONFIGS[key] = (None, f"{f} is not readable JSON ({e.__class__.__name__})")
    return _CONFIGS[key]


_CONFIGS: dict[tuple, tuple[dict | None, str]] = {}


def _is_auto(v: object) -> bool:
    return v == AUTO


def distill_estimate(exp, cluster, student: dict, teacher: dict, kind: str) -> DistillEstimate:
    t = exp.train
    shape = _shape_of(exp, cluster, student, teacher, kind)
    st = step_time(shape)
    step = st.total
    iters = t.train_iters
    cpu = kind == "cpu"
    p_s, p_t = parameters(student), parameters(teacher)
    if cpu:
        start = CPU_STAGE_START_S + CPU_DISTILL_SETUP_S
        save = CPU_SAVE_S
    else:
        start = (STAGE_START_S + DISTILL_SETUP_S + WARMUP_S
                 + 2 * (p_s + p_t) / (LOAD_GBPS * 1e9 * cluster.nodes))
        save = 2.0 + CHECKPOINT_BYTES * p_s / (SAVE_GBPS * 1e9 * cluster.nodes)
        if exp.checkpoint.async_save:
            save = 2.0 + 0.1 * (save - 2.0)
    # validation: eval_iters forward-only steps (teacher + student, no backward) at every
    # eval_interval and once at the end
    fwd = forward_flops_per_token(student, t.seq_length)
    share = (fwd + forward_flops_per_token(teacher, t.seq_length)) / kd_flops_per_token(
        student, teacher, t.seq_length, shape.recompute)
    rounds = iters // t.eval_interval + (1 if iters % t.eval_interval else 0) if t.eval_iters else 0
    validation = rounds * t.eval_iters * (st.compute_s * share + (step - st.compute_s) / 2)
    saves = (iters // t.save_interval if t.save_interval else 0) + (
        0 if t.save_interval and iters % t.save_interval == 0 else 1)
    peak = None
    if cluster.gpus_per_node and not cpu:
        import inspect

        from launch.memory import estimate

        kw: dict[str, Any] = {}  # the pre-flight's estimate, with what this tree's memory.py knows
        if "sequence_parallel" in inspect.signature(estimate).parameters and hasattr(
                t, "sequence_parallel_on"):
            kw["sequence_parallel"] = t.sequence_parallel_on(t.tp)
        peak = round(estimate(student, teacher, tp=t.tp, pp=t.pp, seq=t.seq_length,
                              mbs=t.micro_batch_size, recompute=t.recompute == "full",
                              dp=shape.dp, sharded_optimizer=shape.sharded_optimizer,
                              **kw).total, 2)
    parts = {"compute": st.compute_s, "layers": st.layers_s, "attention": st.attention_s,
             "grad_sync": st.grad_sync_s, "bubble": st.bubble_s}
    layout = (f"tp{t.tp} pp{t.pp} dp{shape.dp}{f' cp{t.cp}' if t.cp > 1 else ''}, "
              f"{shape.micro_batches} micro-batch(es) of {t.micro_batch_size} x {t.seq_length}"
              + (f", recompute {shape.recompute}" if shape.recompute != "none" else ""))
    return DistillEstimate(
        step_s=step, parts=parts, iterations=iters, tokens_per_step=shape.tokens,
        world=shape.world, tokens_per_s_per_gpu=shape.tokens / step / shape.world,
        mfu=st.mfu, start_s=start, train_s=iters * step, validation_s=validation, saves=saves,
        save_s=save, peak_memory_gib=peak, layout=layout,
        family="cpu" if cpu else ("tp1" if shape.tp == 1 else "tp"))


def questions(ev, local_tasks: set[str] | None = None) -> tuple[int, str]:
    """Questions an eval asks (all tasks, ``eval.limit`` applied) and how that was counted."""
    total, notes = 0, []
    limit = ev.limit
    for task in ev.tasks:
        known = task == "mmlu" and not (local_tasks and "mmlu" in local_tasks)
        if known:
            n = MMLU_QUESTIONS
            if limit is not None:
                n = min(n, MMLU_SUBJECTS * int(limit)) if limit >= 1 else int(n * limit)
        else:
            n = UNKNOWN_TASK_QUESTIONS
            if limit is not None:
                n = min(n, int(limit)) if limit >= 1 else int(n * limit)
            notes.append(task)
        total += n
    how = f"{total:,} questions"
    if notes:
        how += f" (size of {', '.join(notes)} unknown: {UNKNOWN_TASK_QUESTIONS:,} assumed each)"
    return total, how


def _local_tasks(ev) -> set[str]:
    if not ev.include_path:
        return set()
    names: set[str] = set()
    folder = Path(os.path.expanduser(ev.include_path))
    if folder.is_dir():
        for f in folder.rglob("*.yaml"):
            try:
                text = f.read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
            names.update(re.findall(r"^(?:task|group)\s*:\s*['\"]?([A-Za-z0-9_.\-]+)", text, re.M))
    return names


def eval_seconds(ev, model: dict, kind: str, processes: int, local: set[str]) -> tuple[float, str]:
    n, how = questions(ev, local)
    shots = ev.num_fewshot or 0
    flops_q = CHOICES * (shots + 1) * TOKENS_PER_SHOT * 2.0 * parameters(model)
    if kind == "cpu":
        work = n * (CPU_QUESTION_S + flops_q / CPU_FLOPS)
        return CPU_STAGE_START_S + work, f"{how}, {shots}-shot"
    e = EVAL_EFFICIENCY["batch1" if ev.batch_size == 1 else "batched"]
    work = n * flops_q / (GPU_KINDS[kind].peak_tflops * 1e12 * e * max(1, processes))
    load = 2 * parameters(model) / (LOAD_GBPS * 1e9)
    return (STAGE_START_S + EVAL_SETUP_S + load + work,
            f"{how}, {shots}-shot, {max(1, processes)} process(es)")


def export_seconds(student: dict, kind: str) -> float:
    if kind == "cpu":
        return CPU_STAGE_START_S + 5.0
    return STAGE_START_S + (CHECKPOINT_BYTES + 2) * parameters(student) / (LOAD_GBPS * 1e9)


def data_seconds(exp, kind: str, workers: int) -> tuple[float | None, str]:
    start = CPU_STAGE_START_S if kind == "cpu" else STAGE_START_S
    size = 0
    for s in exp.data.sources:
        if s.prefix:
            continue
        if not s.jsonl:
            return None, f"the size of data source {s.name!r} (a Hub dataset) is unknown"
        try:
            size += Path(os.path.expanduser(s.jsonl)).stat().st_size
        except OSError:
            return None, f"data source {s.name!r}: {s.jsonl} is not readable"
    return start + size / (TOKENIZE_MBPS * 1e6 * max(1, workers)), f"{size / 1e6:,.1f} MB of JSONL"


def resolve_kind(cluster) -> tuple[str, str]:
    """(kind, where it came from) for the cluster as given (``with_site_facts`` fills
    ``gpu_kind`` from the partition's GRES first, when SLURM answers)."""
    if not cluster.gpus_per_node:
        return "cpu", "no GPUs (cluster.gpus_per_node=0)"
    kind = getattr(cluster, "gpu_kind", None)
    if kind:
        return kind.lower(), "cluster.gpu_kind"
    return DEFAULT_GPU_KIND, ("default: neither cluster.gpu_kind nor the partition's GRES "
                              "names it; set cluster.gpu_kind")


def predict(exp, cluster) -> Prediction:
    """Every standard stage of ``exp`` on ``cluster``: estimate and time limit. Never raises for
    a missing model or dataset: that stage then has no estimate (and ``auto`` falls back to
    ``FALLBACK_MIN``); the pre-flight refuses the missing file itself."""
    from launch.config import tasks_per_node

    kind, source = resolve_kind(cluster)
    kind_name = "CPU" if kind == "cpu" else GPU_KINDS[kind].name
    student, why_s = _read_config(exp.student.path)
    teacher, why_t = _read_config(exp.teacher.path)
    safety = float(getattr(cluster, "time_safety", SAFETY_DEFAULT))
    res = cluster.stages
    gpus = cluster.gpus_per_node
    eval_gpus = gpus if (gpus and cluster.gpu_eval) else 0
    notes: list[str] = []
    stages: dict[str, StageEstimate] = {}
    distill: DistillEstimate | None = None

    layout_auto = [f for f in ("tp", "pp", "micro_batch_size") if _is_auto(getattr(exp.train, f))]
    if layout_auto:
        why_d = f"train.{layout_auto[0]} is still auto"
    elif student is None or teacher is None:
        why_d = f"no model sizes: {why_s or why_t}"
    else:
        why_d = ""
        try:
            distill = distill_estimate(exp, cluster, student, teacher, kind)
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:
            # a config the pre-flight refuses with its own message: no estimate here
            why_d = f"the models' config.json do not give their sizes ({e.__class__.__name__})"
            student = teacher = None
            why_s = why_t = why_d

    def add(stage: str, seconds: float | None, n_gpus: int, why: str = "", detail: str = "",
            pinned_value: object = None, kind_key: str | None = None) -> None:
        key = kind_key or kind_of_stage(stage)
        value = pinned_value if pinned_value is not None else _pinned(cluster, key)
        stages[stage] = _limit(stage, key, value, seconds, n_gpus, why, detail, cluster, safety,
                               distill if key == "distill" else None)

    if any(not s.prefix for s in exp.data.sources):
        sec, how = data_seconds(exp, kind, min(exp.data.workers, res.cpus_per_task))
        add("prepare_data", sec, 0, why="" if sec is not None else how,
            detail=how if sec is not None else "")
    world_gpus = cluster.nodes * gpus
    if distill is not None:
        d = distill
        detail = (f"{d.iterations} iterations x {d.tokens_per_step:,} tokens, step "
                  f"{_dur(d.step_s, precise=True)} ({d.layout})")
        add("distill", d.seconds, world_gpus, detail=detail)
    else:
        add("distill", None, world_gpus, why=why_d)
    if exp.export.enabled:
        add("export_hf", export_seconds(student, kind) if student else None, 0,
            why="" if student else f"no model sizes: {why_s}")
    if exp.eval.enabled:
        local = _local_tasks(exp.eval)
        procs = eval_gpus or 1
        for stage, model, why in (("eval_student_before", student, why_s),
                                  ("eval_teacher", teacher, why_t),
                                  ("eval_student_after", student, why_s)):
            if model is None:
                add(stage, None, eval_gpus, why=f"no model sizes: {why}")
                continue
            sec, detail = eval_seconds(exp.eval, model, kind, procs, local)
            add(stage, sec, eval_gpus, detail=detail)
        add("report", REPORT_S if kind != "cpu" else CPU_REPORT_S, 0)
    unmodelled = _unmodelled(exp, kind)
    if distill is not None and unmodelled:
        notes.append(f"{' and '.join(unmodelled)} on: no measured run had them, so the step "
                     f"estimate does not count their gain (it errs long)")
    if exp.eval.enabled and cluster.eval_cache_dir:
        notes.append("eval_teacher: a hit in cluster.eval_cache_dir takes only its start-up")
    if cluster.gpus_per_node and tasks_per_node(cluster) != cluster.gpus_per_node:
        notes.append("tasks_per_node differs from gpus_per_node: the step model assumes one "
                     "task per GPU")
    return Prediction(kind, kind_name, source, gpus, safety, stages, distill, tuple(notes))


def _unmodelled(exp, kind: str) -> list[str]:
    """The distill settings that no recorded result measured (they change the step time)."""
    t, out = exp.train, []
    if hasattr(t, "sequence_parallel_on") and not _is_auto(t.tp) and t.sequence_parallel_on(t.tp):
        out.append("train.sequence_parallel")
    if hasattr(t, "fusions") and kind != "cpu" and t.fusions("cuda"):
        out.append("train.fuse (" + ", ".join(t.fusions("cuda")) + ")")
    return out


def _pinned(cluster, key: str) -> object:
    """The value of the cluster field that sets time kind ``key`` (``cluster.stages.eval_min``)."""
    value = cluster
    for part in FIELDS[key].split(".")[1:]:
        value = getattr(value, part)
    return value


def _round_up(minutes: float) -> int:
    return max(FLOOR_MIN, int(math.ceil(minutes / ROUND_MIN - 1e-9)) * ROUND_MIN)


def _limit(stage: str, key: str, value: object, seconds: float | None, gpus: int, why: str,
           detail: str, cluster, safety: float, distill: DistillEstimate | None) -> StageEstimate:
    fld = FIELDS[key]
    cap = getattr(cluster, "time_max_min", None)
    pinned = not _is_auto(value)
    delay = cluster.signal_delay_s if key == "distill" else 0
    if pinned:
        limit, how = int(value), f"pinned ({fld})"
    elif seconds is None:
        limit, how = FALLBACK_MIN[key], "auto, no estimate: the former default"
    else:
        want = _round_up(seconds * safety / 60 + delay / 60)
        limit, how = want, "auto"
    if not pinned and cap is not None and limit > cap:
        limit, how = int(cap), f"{how}, capped by cluster.time_max_min"
    restarts = 0
    if distill is not None and seconds is not None:
        restarts = allocations(distill, limit, cluster.signal_delay_s) - 1
    return StageEstimate(stage, seconds, gpus, limit, how, fld, pinned, restarts, why, detail)


def allocations(d: DistillEstimate, limit_min: float, signal_delay_s: float) -> int:
    """Allocations of ``limit_min`` minutes the distill stage takes: each pays the start-up,
    trains until ``signal_delay_s`` before its limit, then saves (within the delay) and is
    requeued. A limit that leaves no time to train is ``math.inf``-like: returns a huge count."""
    usable = limit_min * 60 - signal_delay_s - d.start_s
    per = d.per_iteration_s
    if usable <= per:
        return 10 ** 6
    total = d.iterations * per
    if total <= usable:
        return 1
    return 1 + math.ceil((total - usable) / usable)


def stage_limits(exp, cluster) -> dict[str, int]:
    """{stage: minutes} the plan puts on the standard stages (pinned or auto). Without any
    ``auto`` time this reads nothing."""
    if not any(_is_auto(_pinned(cluster, k)) for k in FIELDS):
        return {st.name: int(_pinned(cluster, st.time)) for st in registry.PIPELINE}
    pred = predict(exp, cluster)
    out = {s: e.limit_min for s, e in pred.stages.items()}
    for st in registry.PIPELINE:
        if st.name not in out:  # a stage this experiment leaves out: any sane number
            value = _pinned(cluster, st.time)
            out[st.name] = FALLBACK_MIN[st.time] if _is_auto(value) else int(value)
    return out


# ---------------------------------------------------------------- the pre-flight's refusal


def check_time_limits(exp, cluster, echo=print) -> Prediction:
    """Refuse (ConfigError) a distill time limit the estimate says cannot finish
    ``train.train_iters`` within ``cluster.max_requeues`` restarts (a pinned
    ``cluster.time_min``, or ``auto`` capped by ``cluster.time_max_min``); say how many restarts
    it takes otherwise. A pinned limit of another stage below its estimate is a warning (those
    stages start over when requeued)."""
    from launch.schema import ConfigError

    pred = predict(exp, cluster)
    d, est = pred.distill, pred.stages.get("distill")
    if d is not None and est is not None:
        need = est.restarts
        if need > cluster.max_requeues:
            total = _dur(d.seconds)
            one = d.start_s + d.per_iteration_s  # the least an allocation must hold
            minimum = _round_up(d.seconds / 60 + cluster.signal_delay_s / 60)
            if need >= 10 ** 6 - 1:
                raise ConfigError(
                    f"{est.field}={est.limit_min} min ({est.how}): the estimate leaves no time to "
                    f"train in an allocation (start-up {_dur(d.start_s)} + one iteration "
                    f"{_dur(d.per_iteration_s, precise=True)} + cluster.signal_delay_s="
                    f"{cluster.signal_delay_s} s > {est.limit_min} min): raise {est.field} to at "
                    f"least {_round_up((one + cluster.signal_delay_s) / 60)} (or auto)")
            source = ("" if est.pinned else f" (auto, capped by cluster.time_max_min="
                      f"{cluster.time_max_min}: the partition/QOS limit)")
            fix = (f"raise {est.field} to at least {minimum} (or set it to auto), or "
                   if est.pinned else "")
            raise ConfigError(
                f"{est.field}={est.limit_min} min{source}: the estimate for distill is {total} "
                f"({d.iterations} iterations at {_dur(d.step_s, precise=True)} per step, "
                f"{d.layout}), so train.train_iters={d.iterations} cannot finish before the limit "
                f"without requeue: it takes {need + 1} allocations, i.e. {need} restart(s), more "
                f"than cluster.max_requeues={cluster.max_requeues}; {fix}raise "
                f"cluster.max_requeues to at least {need}")
        if need:
            echo(f"pre-flight: distill needs {need} restart(s) at {est.limit_min} min per "
                 f"allocation (estimate {_dur(d.seconds)}); cluster.max_requeues="
                 f"{cluster.max_requeues} allows it")
    for stage, e in pred.stages.items():
        if stage != "distill" and e.pinned and e.seconds is not None \
                and e.seconds > e.limit_min * 60:
            echo(f"pre-flight: warning: stage {stage}: {e.field}={e.limit_min} min is below its "
                 f"estimate {_dur(e.seconds)}; a requeued {stage} starts over: raise it or set "
                 f"it to auto")
    return pred


# ---------------------------------------------------------------- the site's facts (SLURM)


def with_site_facts(cluster, echo=print):
    """``cluster`` with ``gpu_kind`` (from the GRES type of the partition's nodes) and
    ``time_max_min`` (the partition's MaxTime, the QOS's MaxWall) filled in from SLURM where
    the profile leaves them unset. Unchanged for the local executor, or when SLURM cannot be
    asked (then the stated defaults apply)."""
    if cluster.gpu_kind and cluster.time_max_min is not None:
        return cluster
    from launch import backends

    info = backends.for_cluster(cluster).cluster_info()  # None: nothing to ask (local)
    if info is None or info.reachable() is not None:
        return cluster
    parts, nodes = info.partitions(), info.nodes()
    if not parts:
        return cluster
    name = cluster.partition or next((p for p, v in parts.items() if v["default"]), None)
    part = parts.get(name or "")
    if part is None:
        return cluster  # the pre-flight refuses an unknown partition
    changes: dict[str, Any] = {}
    if not cluster.gpu_kind and cluster.gpus_per_node and nodes:
        types = [t for n in nodes.values() if name in n["partitions"]
                 for t in n.get("gpu_types", ())]
        kinds = {kind_from_gres_type(t) for t in types} - {None}
        if len(kinds) == 1:
            changes["gpu_kind"] = kinds.pop()
        elif kinds:
            echo(f"cost: partition {name} mixes GPU kinds ({', '.join(sorted(kinds))}); the "
                 f"estimate takes the slowest; set cluster.gpu_kind")
            changes["gpu_kind"] = min(kinds, key=lambda k: GPU_KINDS[k].peak_tflops)
    if cluster.time_max_min is None:
        caps = [part["max_time_min"]] if part.get("max_time_min") else []
        if cluster.qos:
            acct, _ = info.accounting()
            wall = acct.qos_max_wall_min.get(cluster.qos) if acct else None
            if wall:
                caps.append(wall)
        if caps:
            changes["time_max_min"] = int(min(caps))
    return dataclasses.replace(cluster, **changes) if changes else cluster


# ---------------------------------------------------------------- text


def _dur(seconds: float | None, precise: bool = False) -> str:
    if seconds is None:
        return "-"
    if precise and seconds < 60:
        return f"{seconds:.3g} s" if seconds >= 0.01 else f"{seconds * 1e3:.2g} ms"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def graph_stages(pred: Prediction, graph, exp=None) -> list[tuple[Any, StageEstimate]]:
    """(job, estimate) for every job of ``graph``, the limit being the job's own (what sbatch
    gets): standard stages from ``pred``; a selection candidate as its export plus its quick
    eval (the student-after eval scaled to the candidate's questions); ``select`` as a start."""
    out = []
    start = CPU_STAGE_START_S if pred.kind == "cpu" else STAGE_START_S
    for job in graph.jobs:
        e = pred.stages.get(job.stage)
        if e is not None:
            out.append((job, dataclasses.replace(e, limit_min=job.time_min)))
            continue
        seconds = None
        if job.stage.startswith("candidate_"):
            export, after = pred.stages.get("export_hf"), pred.stages.get("eval_student_after")
            seconds = export.seconds if export else None
            spec = getattr(job.spec, "eval", None)
            if seconds is not None and spec is not None:
                if after is None or after.seconds is None or exp is None:
                    seconds = None
                else:
                    full, _ = questions(exp.eval)
                    quick, _ = questions(spec.eval)
                    fixed = start + (0.0 if pred.kind == "cpu" else EVAL_SETUP_S)
                    seconds += fixed + max(0.0, after.seconds - fixed) * quick / max(1, full)
        elif job.stage == "select":
            seconds = start
        e = StageEstimate(job.stage, seconds, job.gpus_per_node * job.nodes, job.time_min,
                          "its export's and eval's limits", registry.time_field(job.stage),
                          why="" if seconds is not None else "its export or eval has none")
        out.append((job, e))
    return out


def critical_path(rows: list[tuple[Any, StageEstimate]]) -> tuple[float, list[str]]:
    """End-to-end wall time when every job starts as soon as its dependencies end (SLURM with
    free nodes), and the chain that sets it."""
    finish: dict[str, tuple[float, list[str]]] = {}
    for job, e in rows:
        before = max((finish[d] for d in job.deps if d in finish), default=(0.0, []),
                     key=lambda x: x[0])
        finish[job.stage] = (before[0] + (e.seconds or 0.0), before[1] + [job.stage])
    return max(finish.values(), default=(0.0, []), key=lambda x: x[0])


def text(pred: Prediction, graph, exp=None) -> str:
    """The estimate as the dry run and the launch print it."""
    rows = graph_stages(pred, graph, exp)
    head = (f"cost estimate on {pred.kind_name}"
            + (f" ({pred.gpus_per_node} per node, {pred.kind_source})" if pred.kind != "cpu"
               else f" ({pred.kind_source}; CPU rates measured on the CI machine)"))
    lines = [head]
    d = pred.distill
    if d is not None:
        mfu = "" if d.mfu is None else f", MFU {d.mfu:.0%}"
        mem = "" if d.peak_memory_gib is None else f", peak {d.peak_memory_gib:.1f} GiB/GPU"
        lines.append(f"  distill: {d.iterations} iterations x {d.tokens_per_step:,} tokens, "
                     f"step {_dur(d.step_s, precise=True)} ({d.layout}), "
                     f"{d.tokens_per_s_per_gpu:,.0f} tokens/s/GPU{mfu}{mem}")
        lines.append(f"           start-up {_dur(d.start_s)}, training {_dur(d.train_s)}, "
                     f"validation {_dur(d.validation_s)}, {d.saves} save(s) of "
                     f"{_dur(d.save_s)}")
    lines.append(f"  {'stage':<22} {'estimate':>9} {'GPUs':>5} {'GPU-hours':>10} "
                 f"{'time limit':>11}  set by")
    total_s = total_gh = 0.0
    missing: dict[str, list[str]] = {}
    for job, e in rows:
        gh = "-" if e.gpu_hours is None or not e.gpus else f"{e.gpu_hours:.2f}"
        note = e.how + (f"; {e.restarts} restart(s)" if e.restarts else "")
        if e.seconds is None:
            missing.setdefault(e.why or "unknown", []).append(job.stage)
        lines.append(f"  {job.stage:<22} {_dur(e.seconds):>9} {e.gpus:>5} {gh:>10} "
                     f"{str(e.limit_min) + ' min':>11}  {note}")
        total_s += e.seconds or 0.0
        total_gh += e.gpu_hours or 0.0
    for stage, owner in graph.external.items():
        lines.append(f"  {stage:<22} {'shared':>9} {'':>5} {'':>10} {'':>11}  runs in {owner}")
    end, chain = critical_path(rows)
    unknown = [s for stages in missing.values() for s in stages]
    partial = f" (without {', '.join(unknown)})" if unknown else ""
    at_least = "at least " if unknown else ""
    lines.append(f"  total{partial}: {_dur(total_s)} of stage time, {total_gh:.2f} GPU-hours; "
                 f"end to end {at_least}{_dur(end)} ({' > '.join(chain)})")
    lines += [f"  no estimate for {', '.join(stages)}: {why}" for why, stages in missing.items()]
    if any(not e.pinned for _, e in rows):
        lines.append(f"  auto = estimate x {pred.safety:g} (cluster.time_safety; distill: + "
                     f"cluster.signal_delay_s), rounded up to {ROUND_MIN} min, at least "
                     f"{FLOOR_MIN} min, at most cluster.time_max_min; requeue covers the rest")
    lines += [f"  note: {n}" for n in pred.notes]
    return "\n".join(lines)


def summary(pred: Prediction, graph, exp=None) -> dict[str, Any]:
    """Totals of one graph (a sweep member): stage seconds, GPU-hours, end to end."""
    rows = graph_stages(pred, graph, exp)
    end, chain = critical_path(rows)
    return {"seconds": sum(e.seconds or 0.0 for _, e in rows),
            "gpu_hours": sum(e.gpu_hours or 0.0 for _, e in rows), "end_to_end_s": end,
            "chain": chain, "unknown": [j.stage for j, e in rows if e.seconds is None]}


def record(pred: Prediction, graph, exp=None) -> dict[str, Any]:
    """The manifest's ``cost`` entry: the prediction and this graph's limits and totals."""
    out = pred.to_dict()
    rows = graph_stages(pred, graph, exp)
    out["stages"] = {job.stage: {**out["stages"].get(job.stage, {}),
                                 "seconds": None if e.seconds is None else round(e.seconds, 1),
                                 "gpus": e.gpus, "limit_min": job.time_min,
                                 "gpu_hours": None if e.gpu_hours is None
                                 else round(e.gpu_hours, 4)}
                     for job, e in rows}
    if exp is not None and out["distill"] is not None:
        out["distill"]["unmodelled"] = _unmodelled(exp, pred.kind)
    s = summary(pred, graph, exp)
    out["total"] = {"seconds": round(s["seconds"], 1), "gpu_hours": round(s["gpu_hours"], 4),
                    "end_to_end_s": round(s["end_to_end_s"], 1)}
    from launch.manifest import now

    out["predicted"] = now()
    return out


def night_lines(plans, cluster) -> list[str]:
    """A sweep night's cost: one line per member (its own stages: shared ones are counted with
    the member that runs them), tonight's total and the longest member."""
    rows = []
    for p in plans:
        pred = predict(p.experiment, cluster)
        s = summary(pred, p.graph, p.experiment)
        distill = next((j.time_min for j in p.graph.jobs if j.stage == "distill"), None)
        rows.append((p.name, s, distill, pred))
    if not rows:
        return []
    kind = rows[0][3]
    lines = [f"cost tonight on {kind.kind_name} ({kind.kind_source}):",
             f"  {'member':<24} {'stage time':>10} {'GPU-hours':>10} {'end to end':>11} "
             f"{'distill limit':>14}"]
    for name, s, distill, _ in rows:
        unknown = f"  (no estimate: {', '.join(s['unknown'])})" if s["unknown"] else ""
        lines.append(f"  {name:<24} {_dur(s['seconds']):>10} {s['gpu_hours']:>10.2f} "
                     f"{_dur(s['end_to_end_s']):>11} {str(distill) + ' min':>14}{unknown}")
    longest = max(rows, key=lambda r: r[1]["end_to_end_s"])
    total_s = sum(r[1]["seconds"] for r in rows)
    total_gh = sum(r[1]["gpu_hours"] for r in rows)
    lines.append(f"  tonight: {len(rows)} member(s), {total_gh:.2f} GPU-hours, "
                 f"{_dur(total_s)} of stage time; longest member {longest[0]} (end to end "
                 f"{_dur(longest[1]['end_to_end_s'])}); a member's stage time includes the "
                 f"shared stages it runs for the others")
    return lines
