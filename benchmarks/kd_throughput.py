"""KD throughput: the guide's settings vs ours, on the same models, data and GPUs.

Variants (each a fresh ``world``-process job of Megatron-Bridge's ``distill()`` built by
``kd.distill.build_config``; no checkpoint is written), one change at a time in the order
the gains are expected:

- ``guide``:     the guide's ``distill_hf.py`` settings: TP as given (``--tp``, all GPUs of the
  node as in the guide), micro-batch 1, megatron-core's local spec (unfused
  ``DotProductAttention``, the default without TE), no gradient-reduce overlap;
- ``sdpa``:      + attention through torch SDPA (``kd.layer_specs.SDPACoreAttention``);
- ``auto_tp``:   + the parallel layout ``launch.layout.choose`` picks (smallest TP that fits,
  the rest data parallel), micro-batch still 1;
- ``ours_plain``: + the micro-batch it picks (the largest that fits, at most 8): the distill
  stage's defaults before sequence parallelism and kd/fused.py (no sequence parallelism,
  megatron-core's own compiled SwiGLU and bias-dropout-add, unfused norms and RoPE);
- ``ours``:      + sequence parallelism at TP > 1 (``train.sequence_parallel: auto``) and every
  fusion of kd/fused.py (``train.fuse: auto``: compiled RMSNorm and RoPE too): exactly what the
  distill stage runs by default now (train.tp/pp/micro_batch_size/recompute = auto);
- ``ours_ct``:   ours + the compiled frozen teacher (``kd.compile_teacher: true``);
- ``ours_overlap``: ours + overlap of the data-parallel gradient all-reduce with backward
  (``train.overlap_grad_reduce``; off by default: it measured no gain on one 4 x H100 node);
- ``ours_chunked``: ours + kd/kd_loss.py's chunked KD loss, the layout chosen with its smaller
  logit memory;
- ``modelopt``: Model-Optimizer's ``examples/megatron_bridge/distill.py`` settings as its README
  runs it (TP as given, micro-batch 1, distributed optimizer, overlapped reduce and gather; SDPA).

Former names, still accepted by ``--variants`` (deprecated, so that recorded commands run):
``reference`` = ``guide``, ``anchor`` = ``modelopt``. Recorded results
(benchmarks/results/*.json) keep the names they were recorded under.

``guide``, ``sdpa``, ``auto_tp``, ``modelopt`` and ``ours_plain`` run the element-wise work as
the stage did before kd/fused.py (``fuse_before``: megatron-core's compiled SwiGLU and
bias-dropout-add on CUDA, which Megatron-Bridge's Llama provider switches on, nothing on CPU)
and without sequence parallelism, which megatron-core's torch norm refuses: the guide's and
Model-Optimizer's settings ask for it at TP > 1, but without TE they cannot have it. On one
GPU (TP 1) sequence parallelism changes nothing; the fusions and the compiled teacher do.

``--repeats N`` runs the variants N times interleaved (A B C A B C) and reports the median of
the repeats' medians and their spread; ``--gpu-memory-gib`` is the layout's memory and caps each
rank's CUDA allocator (an 80 GB budget on a larger card). Every run also prints where its step
time goes (``PhaseTimer``: teacher / student forward, KD loss, backward, grad reduce,
optimizer).

Measured per variant: step time (Megatron's "elapsed time per iteration", median after
``--warmup`` iterations), tokens/s/GPU, peak memory per rank, KD loss first/last, MFU.

MFU = model FLOP/s per GPU / peak dense bf16 FLOP/s per GPU (``--peak-tflops``; default 989,
the H100/H200 SXM datasheet value; KINDS.md measured ~790 for an 8192^3 bf16 matmul), with
model FLOPs per iteration = tokens * (3 * F_student + F_teacher): the student runs forward and
backward (backward = 2 x forward), the teacher forward only. Per token and per model,
``F = 2 * P_matmul + sum over attention layers of 2 * seq * n_heads * head_dim``:
P_matmul counts the weights of every linear layer (q, k, v, o, gate, up, down, LM head; not
embeddings or norms); the second term is QK^T plus AV under a causal mask (each
2 * (seq / 2) * n_heads * head_dim FLOPs per token). AnyModel
students are counted layer by layer from ``block_configs`` (no-op attention or FFN: 0).

    python benchmarks/kd_throughput.py --student S --teacher T --data PREFIX --world 4 --tp 4 \\
        --seq 4096 --gbs 16 --iters 10 --out bench.json

Each variant also records the peak memory ``launch.memory.estimate`` predicts for its layout,
next to the measured one (the planner's estimate, validated here).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

STEP = re.compile(
    r"iteration\s+(\d+)/\s*\d+ \|.*?elapsed time per iteration \(ms\): ([0-9.]+)"
    r".*?total loss: ([0-9.Ee+-]+)"
)


@dataclass(frozen=True)
class Variant:
    attention: str = "sdpa"  # "local" (megatron-core's DotProductAttention) | "sdpa"
    tp: str = "auto"  # "given" (--tp) | "auto" (launch.layout.choose)
    mbs: int | str = "auto"  # micro-batch: a number | "auto" (launch.layout.choose)
    overlap: bool = False  # train.overlap_grad_reduce
    sharded: str = "auto"  # train.distributed_optimizer: "true" | "false" | "auto"
    kd_loss: str = "full"  # "full" = ModelOpt's LogitsKLLoss | "chunked" = kd/kd_loss.py
    sequence_parallel: str = "auto"  # train.sequence_parallel: "off" | "auto" (on at TP > 1)
    fuse: str = "auto"  # train.fuse: "before" (fuse_before()) | "auto" (all on CUDA)
    compile_teacher: bool = False  # kd.compile_teacher


BEFORE = dict(sequence_parallel="off", fuse="before")  # the stage before kd/fused.py
VARIANTS = {
    "guide": Variant("local", "given", 1, False, "false", **BEFORE),
    "sdpa": Variant("sdpa", "given", 1, False, "false", **BEFORE),
    "auto_tp": Variant("sdpa", "auto", 1, False, "false", **BEFORE),
    # the distill stage's defaults before kd/fused.py: auto layout, distributed optimizer
    # whenever dp > 1, no SP, only megatron-core's own compiled SwiGLU / bias-dropout-add
    "ours_plain": Variant(**BEFORE),
    # the distill stage's defaults now: + sequence parallelism at TP > 1, every fusion
    "ours": Variant(),
    "ours_ct": Variant(compile_teacher=True),
    "ours_overlap": Variant(overlap=True),
    # + the chunked KD loss, the layout chosen with its smaller logit memory
    "ours_chunked": Variant(kd_loss="chunked"),
    # Model-Optimizer's examples/megatron_bridge/distill.py as its README runs it, without TE:
    # TP = all GPUs of the node (--tp), its default --mbs 1, distributed optimizer, overlapped
    # gradient reduce and parameter gather
    "modelopt": Variant("sdpa", "given", 1, True, "true", **BEFORE),
}
# former variant names (deprecated): still accepted by --variants, run as the new name
ALIASES = {"reference": "guide", "anchor": "modelopt"}


def fuse_before(device: str) -> tuple[str, ...]:
    """``train.fuse`` that reproduces the stage before kd/fused.py: Megatron-Bridge's Llama provider
    switched megatron-core's compiled SwiGLU and bias-dropout-add on (kd.distill disabled them on
    CPU only); norms and RoPE ran unfused."""
    return ("swiglu", "residual") if device == "cuda" else ()


def variant_fields(v: Variant, device: str) -> dict:
    """The spec fields (``kd.specs.replace_fields`` names) a variant sets beside the layout."""
    return {
        "overlap_grad_reduce": v.overlap,
        "distributed_optimizer": {"true": True, "false": False}.get(v.sharded, v.sharded),
        "sequence_parallel": False if v.sequence_parallel == "off" else v.sequence_parallel,
        "fuse": fuse_before(device) if v.fuse == "before" else v.fuse,
        "compile_teacher": v.compile_teacher,
    }


# --------------------------------------------------------------------------- FLOPs


def kd_flops_per_token(student: Path, teacher: Path, seq: int) -> float:
    """The MFU column's FLOPs: launch/cost.py's formula (one formula for the estimate and the
    measurement), on the models' config.json."""
    from launch.cost import kd_flops_per_token as flops

    s = json.loads((student / "config.json").read_text())
    t = json.loads((teacher / "config.json").read_text())
    return flops(s, t, seq)


# --------------------------------------------------------------------------- one rank

def install_chunked_loss() -> bool:
    """Have the distillation provider build kd/kd_loss.py's chunked loss in place of ModelOpt's
    ``LogitsKLLoss`` (this benchmark's ``ours_chunked`` variant only: the distill stage keeps
    ModelOpt's loss, which measured faster). Wraps ``setup_distillation_config``, looked up by
    the provider at call time; idempotent. Returns True when newly installed."""
    import modelopt.torch.distill.plugins.megatron as mtd_mcore

    from kd.kd_loss import chunked_loss_class, log

    original = mtd_mcore.setup_distillation_config
    if getattr(original, "_kd_chunked", False):
        return False
    chunked = chunked_loss_class()

    def setup(config_or_path, student_cfg, teacher_cfg):
        cfg = original(config_or_path, student_cfg, teacher_cfg)
        for key, loss in list((cfg.criterion or {}).items()):
            if type(loss) is mtd_mcore.LogitsKLLoss and not loss._reverse:
                cfg.criterion[key] = chunked(student_cfg, temperature=loss._temperature)
                log.info("kd_loss: chunked logit KL loss for %s", key)
        return cfg

    setup._kd_chunked = True
    mtd_mcore.setup_distillation_config = setup
    return True



def worker(spec_file: Path, attention: str, kd_loss: str = "full") -> int:
    """One rank of one variant: kd.distill's config, ``attention`` spec, no checkpoints.

    Environment: ``KD_BENCH_MEMORY_GIB`` caps this process's GPU memory (the 80 GB budget on a
    larger card); ``KD_BENCH_WARMUP``: the phase timer's iterations left out."""
    import torch

    import kd.distill as kdd
    from kd import compat
    from kd.dist_env import export_env

    spec = kdd.spec_from_dict(json.loads(spec_file.read_text()))
    env = export_env()
    device = compat.resolve_device(spec.device)
    compat.activate(device)
    if device == "cpu":
        import torch.distributed as dist

        dist.init_process_group("gloo", rank=env.rank, world_size=env.world_size)
    budget = os.environ.get("KD_BENCH_MEMORY_GIB")
    if budget and device == "cuda":
        local = int(os.environ.get("LOCAL_RANK", env.rank))
        torch.cuda.set_device(local)
        total = torch.cuda.get_device_properties(local).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, float(budget) * 2**30 / total), local)
    if kd_loss == "chunked":
        from kd import kd_loss as chunked
        from kd.job import console_logger

        console_logger(chunked.log.name)  # its "chunked logit KL loss for ..." line: the proof
        install_chunked_loss()
    timer = PhaseTimer(device == "cuda", int(os.environ.get("KD_BENCH_WARMUP", "0")))
    timer.install()
    configure = kdd.configure_provider

    def configure_with_attention(provider, *args, **kwargs):
        configure(provider, *args, **{**kwargs, "attention": attention})
        spec = provider.transformer_layer_spec
        spec_fn = getattr(getattr(spec, "func", spec), "__name__", "te")  # a partial: fused norms
        print(f"KD_BENCH_SPEC rank {env.rank}: {spec_fn} {getattr(spec, 'keywords', {})} "
              f"sequence_parallel={provider.sequence_parallel} "
              f"rope/swiglu/residual fusion={provider.apply_rope_fusion}/"
              f"{provider.bias_activation_fusion}/{provider.bias_dropout_fusion}", flush=True)

    kdd.configure_provider = configure_with_attention
    config = kdd.build_config(spec, device)
    config.checkpoint.save = None
    config.checkpoint.load = None
    from megatron.bridge.training.distill import distill

    distill(config)
    if env.rank == 0:
        print("KD_PROFILE " + json.dumps(timer.report()), flush=True)
    if device == "cuda":
        line = {
            "rank": env.rank,
            "allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            "reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2),
        }
        print("KD_PEAK_MEMORY " + json.dumps(line), flush=True)
    return 0


# --------------------------------------------------------------------------- phase timer


class PhaseTimer:
    """Where one training step's time goes, from events recorded around its phases (CUDA events
    on GPU: no synchronisation inside the step; host clock on CPU):

    - ``step``: Megatron-Bridge's ``train_step`` (forward-backward of all micro-batches, the
      optimizer, the gradient reduction);
    - ``teacher_forward``: the teacher's forward (no_grad; ModelOpt's Megatron plugin runs it
      first, then ``DistillationModel.forward`` in student-only mode);
    - ``student_forward``: ``DistillationModel.forward`` (the student, its logits captured);
    - ``kd_loss_forward``: ``compute_kd_loss`` (the KL over the vocabulary, forward);
    - ``backward``: Megatron's ``backward_step`` (student backward incl. the KD loss's);
    - ``grad_reduce``: ``finalize_model_grads`` (the data-parallel reduction or the wait for it);
    - ``optimizer``: ``optimizer.step`` (incl. grad-norm clipping and the parameter gather).

    Milliseconds per step, averaged over the iterations after ``warmup``.
    """

    def __init__(self, cuda: bool, warmup: int):
        self.cuda, self.warmup, self.iteration, self.spans = cuda, warmup, 0, []

    def now(self):
        if not self.cuda:
            return time.perf_counter()
        import torch

        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def wrap(self, owner, name: str, phase: str) -> None:
        original = getattr(owner, name)
        timer = self

        def timed(*args, **kwargs):
            t0 = timer.now()
            try:
                return original(*args, **kwargs)
            finally:
                timer.add(phase, t0, timer.now())

        setattr(owner, name, timed)

    def add(self, phase: str, start, end) -> None:
        if self.iteration > self.warmup:
            self.spans.append((phase, start, end))

    def install(self) -> None:
        import megatron.bridge.training.setup as bridge_setup
        import megatron.bridge.training.train as bridge_train
        import megatron.core.pipeline_parallel.schedules as schedules
        from modelopt.torch.distill.distillation_model import DistillationModel

        timer = self
        train_step = bridge_train.train_step

        def counted_train_step(*args, **kwargs):
            timer.iteration += 1
            optimizer = args[3] if len(args) > 3 else kwargs.get("optimizer")
            if optimizer is not None and not getattr(optimizer, "_kd_timed", False):
                timer.wrap(optimizer, "step", "optimizer")
                optimizer._kd_timed = True
            t0 = timer.now()
            try:
                return train_step(*args, **kwargs)
            finally:
                timer.add("step", t0, timer.now())

        bridge_train.train_step = counted_train_step
        self.wrap(schedules, "backward_step", "backward")
        self.wrap(bridge_setup, "finalize_model_grads", "grad_reduce")
        self.wrap(DistillationModel, "compute_kd_loss", "kd_loss_forward")
        forward = DistillationModel.forward

        def timed_forward(model, *args, **kwargs):
            if not getattr(model, "_kd_timed", False):
                teacher = model._teacher_model
                teacher.register_forward_pre_hook(
                    lambda m, a: setattr(m, "_kd_t0", timer.now()))
                teacher.register_forward_hook(
                    lambda m, a, o: timer.add("teacher_forward", m._kd_t0, timer.now()))
                model._kd_timed = True
            t0 = timer.now()
            try:
                return forward(model, *args, **kwargs)
            finally:
                timer.add("student_forward", t0, timer.now())

        DistillationModel.forward = timed_forward

    def report(self) -> dict:
        steps = max(0, self.iteration - self.warmup)
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        totals: dict[str, float] = {}
        for phase, a, b in self.spans:
            ms = a.elapsed_time(b) if self.cuda else (b - a) * 1e3
            totals[phase] = totals.get(phase, 0.0) + ms
        per_step = {k: round(v / max(1, steps), 1) for k, v in totals.items()}
        return {"steps": steps, "ms_per_step": per_step}

# --------------------------------------------------------------------------- driver


def run_variant(
    name: str, attention: str, spec_file: Path, world: int, logs: Path, timeout: int,
    kd_loss: str = "full", extra_env: dict | None = None,
) -> tuple[list[str], float, int]:
    from kd.dist_env import free_port, local_job_env

    port, procs = free_port(), []
    logs.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    for rank in range(world):
        env = {
            **os.environ,
            **local_job_env(rank, world, port),
            "PYTHONPATH": str(REPO),
            "PYTHONUNBUFFERED": "1",
            "CUDA_DEVICE_MAX_CONNECTIONS": "1",
            **(extra_env or {}),
        }
        log = (logs / f"{name}_rank{rank}.log").open("w")
        cmd = [sys.executable, __file__, "--worker", str(spec_file), "--attention", attention,
               "--kd-loss", kd_loss]
        procs.append(
            (subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT), log)
        )
    code = 0
    for proc, log in procs:
        try:
            code = code or proc.wait(timeout=max(1, timeout - (time.time() - t0)))
        except subprocess.TimeoutExpired:
            for p, _ in procs:
                p.kill()
            code = 124
        log.close()
    texts = [(logs / f"{name}_rank{r}.log").read_text() for r in range(world)]
    return texts, time.time() - t0, code


def summarize(
    texts: list[str],
    warmup: int,
    tokens: int,
    world: int,
    flops_per_token: float,
    peak_tflops: float,
) -> dict:
    text = "\n".join(texts)
    steps = {int(m.group(1)): (float(m.group(2)), float(m.group(3))) for m in STEP.finditer(text)}
    memory = sorted(
        (
            json.loads(line.split(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("KD_PEAK_MEMORY ")
        ),
        key=lambda m: m["rank"],
    )
    profiles = [json.loads(line.split(" ", 1)[1]) for line in text.splitlines()
                if line.startswith("KD_PROFILE ")]
    steady = [ms for it, (ms, _) in sorted(steps.items()) if it > warmup]
    if not steady:
        return {"iterations": len(steps)}
    step_s = statistics.median(steady) / 1e3
    tflops_per_gpu = tokens * flops_per_token / step_s / world / 1e12
    its = sorted(steps)
    return {
        "iterations": len(steps),
        "step_ms_median": round(step_s * 1e3, 1),
        "step_ms_mean": round(statistics.fmean(steady), 1),
        "tokens_per_s_per_gpu": round(tokens / step_s / world),
        "model_tflops_per_gpu": round(tflops_per_gpu, 1),
        "mfu": round(tflops_per_gpu / peak_tflops, 4),
        "peak_allocated_gib_per_rank": [m["allocated_gib"] for m in memory],
        "peak_reserved_gib_per_rank": [m["reserved_gib"] for m in memory],
        "loss_first": steps[its[0]][1],
        "loss_last": steps[its[-1]][1],
        "measured_iterations": len(steady),
        "step_ms_all": steady,
        "phases_ms_per_step_rank0": profiles[0]["ms_per_step"] if profiles else None,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--attention", default="sdpa", help=argparse.SUPPRESS)
    p.add_argument("--kd-loss", default="full", help=argparse.SUPPRESS)
    p.add_argument("--student", type=Path)
    p.add_argument("--teacher", type=Path)
    p.add_argument("--data", help="Megatron dataset prefix (<prefix>.bin/.idx)")
    p.add_argument("--world", type=int, default=1, help="processes (GPUs)")
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--gbs", type=int, default=16)
    p.add_argument("--recompute", default="auto", choices=("auto", "none", "full"),
                   help="activation recomputation for every variant (auto: the layout's choice)")
    p.add_argument("--gpu-memory-gib", type=float, default=None,
                   help="memory per GPU for the layout choice (default: what torch reports); "
                   "also caps each rank's CUDA allocator at it (an 80 GB budget on an H200)")
    p.add_argument("--repeats", type=int, default=1,
                   help="runs of every variant, interleaved (A B C A B C): median and spread")
    p.add_argument("--iters", type=int, default=15)
    p.add_argument("--warmup", type=int, default=4, help="iterations left out of the median")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help="comma-separated, from: " + ", ".join(VARIANTS) + " (deprecated "
                   "names: reference = guide, anchor = modelopt)")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--peak-tflops",
        type=float,
        default=989.0,
        help="dense bf16 peak per GPU (H100/H200 SXM: 989)",
    )
    p.add_argument("--timeout", type=int, default=300, help="seconds per variant")
    p.add_argument("--dry-run", action="store_true",
                   help="print each variant's layout and settings (KD_BENCH_PLAN lines) for "
                   "--device, run nothing")
    p.add_argument("--work", type=Path, default=Path("runs/bench"))
    p.add_argument("--out", type=Path, default=Path("runs/bench/kd_throughput.json"))
    args = p.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.attention, args.kd_loss)

    from kd.distill import spec_to_json
    from kd.specs import DistillSpec, replace_fields

    flops = kd_flops_per_token(args.student, args.teacher, args.seq)
    tokens = args.gbs * args.seq
    result = {
        "student": str(args.student),
        "teacher": str(args.teacher),
        "world": args.world,
        "tp": args.tp,
        "seq": args.seq,
        "gbs": args.gbs,
        "iters": args.iters,
        "warmup": args.warmup,
        "peak_tflops": args.peak_tflops,
        "device": device_name(),
        "kd_flops_per_token": flops,
        "mfu_formula": "tokens*(3*F_student+F_teacher)/step_s/world/peak; "
        "F=2*P_matmul+sum_attn_layers 2*seq*n_heads*head_dim (causal)",
        "variants": {},
    }
    from kd.sections import sequence_parallel
    from launch.layout import Layout, choose
    from launch.memory import distributed_optimizer, estimate

    s_cfg = json.loads((args.student / "config.json").read_text())
    t_cfg = json.loads((args.teacher / "config.json").read_text())
    memory = args.gpu_memory_gib or gpu_memory_gib()
    result["gpu_memory_gib"] = memory

    device = bench_device(args.device)
    result["fuse_before"] = list(fuse_before(device))

    def layout_of(v: Variant, fields: dict):
        if v.tp == "given" and v.mbs != "auto":  # the guide's / Model-Optimizer's own settings
            rc = "none" if args.recompute == "auto" else args.recompute
            return Layout(args.tp, 1, args.world // args.tp, v.mbs, rc, 0.0, 0.0, (),
                          sequence_parallel=sequence_parallel(fields["sequence_parallel"],
                                                              args.tp))
        return choose(s_cfg, t_cfg, world=args.world, gpus_per_node=args.world,
                      gpu_memory_gib=memory, global_batch_size=args.gbs, seq_length=args.seq,
                      tp=args.tp if v.tp == "given" else "auto", pp=1, micro_batch_size=v.mbs,
                      recompute=args.recompute, sharded=v.sharded, kd_loss=v.kd_loss,
                      sequence_parallel=fields["sequence_parallel"])

    names = args.variants.split(",")
    for old in [n for n in names if n in ALIASES]:
        print(f"--variants: {old!r} is now {ALIASES[old]!r} (the old name is deprecated)",
              file=sys.stderr)
    names = [ALIASES.get(n, n) for n in names]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        p.error(f"--variants: unknown {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    runs: dict[str, list[dict]] = {name: [] for name in names}
    extra_env = {"KD_BENCH_WARMUP": str(args.warmup)}
    if args.gpu_memory_gib:
        extra_env["KD_BENCH_MEMORY_GIB"] = str(args.gpu_memory_gib)
    for repeat in range(args.repeats):
        for name in names:
            v = VARIANTS[name]
            attention, overlap, sharded, kd_loss = v.attention, v.overlap, v.sharded, v.kd_loss
            fields = variant_fields(v, device)
            lay = layout_of(v, fields)
            fields["sequence_parallel"] = lay.sequence_parallel  # resolved, as the launcher does
            spec = replace_fields(
                DistillSpec(student=str(args.student.absolute()),
                            teacher=str(args.teacher.absolute()),
                            data_blend=((1.0, str(Path(args.data).absolute())),),
                            output_dir=str((args.work / f"{name}_{repeat}").absolute())),
                tp=lay.tp,
                seq_length=args.seq,
                micro_batch_size=lay.micro_batch_size,
                global_batch_size=args.gbs,
                train_iters=args.iters,
                lr=1e-4,
                min_lr=1e-5,
                lr_warmup_iters=2,
                eval_interval=10**6,
                eval_iters=0,
                log_interval=1,
                device=args.device,
                split="100,0,0",
                recompute=lay.recompute,
                **fields,
            )
            if args.dry_run:  # what each variant would run, nothing started
                print("KD_BENCH_PLAN " + json.dumps({
                    "variant": name, "device": device, "attention": attention, "tp": lay.tp,
                    "dp": lay.dp, "micro_batch_size": lay.micro_batch_size,
                    "recompute": lay.recompute, "overlap_grad_reduce": overlap,
                    "distributed_optimizer": distributed_optimizer(sharded, lay.dp),
                    "kd_loss": kd_loss, "sequence_parallel": spec.train.sequence_parallel,
                    "fuse": list(spec.train.fusions(device)),
                    "compile_teacher": spec.kd.compile_teacher}), flush=True)
                continue
            args.work.mkdir(parents=True, exist_ok=True)
            spec_file = spec_to_json(spec, args.work / f"{name}.json")
            texts, wall, code = run_variant(
                f"{name}_{repeat}", attention, spec_file, args.world, args.work / "logs",
                args.timeout, kd_loss, extra_env,
            )
            stats = summarize(texts, args.warmup, tokens, args.world, flops, args.peak_tflops)
            est = estimate(s_cfg, t_cfg, tp=lay.tp, seq=args.seq, mbs=lay.micro_batch_size,
                           attention=attention, recompute=lay.recompute == "full", dp=lay.dp,
                           sharded_optimizer=distributed_optimizer(sharded, lay.dp),
                           kd_loss=kd_loss, sequence_parallel=lay.sequence_parallel).total
            measured = max(stats.get("peak_allocated_gib_per_rank") or [0])
            run = {
                "attention": attention,
                "tp": lay.tp,
                "dp": lay.dp,
                "micro_batch_size": lay.micro_batch_size,
                "recompute": lay.recompute,
                "overlap_grad_reduce": overlap,
                "distributed_optimizer": distributed_optimizer(sharded, lay.dp),
                "kd_loss": kd_loss,
                "sequence_parallel": lay.sequence_parallel,
                "fuse": list(spec.train.fusions(device)),
                "compile_teacher": v.compile_teacher,
                "rc": code,
                "wall_s": round(wall, 1),
                **stats,
                "estimated_peak_gib": round(est, 2),
                "estimate_error": round((est - measured) / measured, 3) if measured else None,
            }
            runs[name].append(run)
            print(f"KD_BENCH {name} repeat {repeat} " + json.dumps(run), flush=True)
            # what is measured so far survives a run cut short
            result["variants"] = {n: combine(r) for n, r in runs.items() if r}
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({**result, "partial": True}, indent=2) + "\n")
    if args.dry_run:
        return 0
    for name in names:
        result["variants"][name] = combine(runs[name])
    v = result["variants"]
    base = v.get("guide", {}).get("step_ms_median")
    for name in v:
        if name != "guide" and base and v[name].get("step_ms_median"):
            result[f"speedup_{name}_vs_guide"] = round(base / v[name]["step_ms_median"], 3)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    return 0 if all(x.get("rc") == 0 for x in v.values()) else 1


def combine(runs: list[dict]) -> dict:
    """One variant over its repeats: the last run's fields, the median of the repeats' median
    step times (tokens/s, TFLOP/s and MFU follow it) and the spread (max - min) / median."""
    out = dict(runs[-1])
    medians = [r["step_ms_median"] for r in runs if r.get("step_ms_median")]
    out["repeats"] = len(runs)
    out["rc"] = next((r["rc"] for r in runs if r["rc"]), 0)
    if not medians:
        return out
    mid = statistics.median(medians)
    scale = out["step_ms_median"] / mid if out.get("step_ms_median") else 1.0
    out["step_ms_median_per_repeat"] = medians
    out["step_ms_median"] = round(mid, 1)
    out["step_ms_spread"] = round((max(medians) - min(medians)) / mid, 4)
    for key in ("tokens_per_s_per_gpu", "model_tflops_per_gpu"):
        if out.get(key) is not None:
            out[key] = round(out[key] * scale, 1)
    if out.get("mfu") is not None:
        out["mfu"] = round(out["mfu"] * scale, 4)
    out["peak_allocated_gib_per_rank"] = [max(v) for v in zip(
        *(r.get("peak_allocated_gib_per_rank") or [] for r in runs), strict=False)]
    phases = [r["phases_ms_per_step_rank0"] for r in runs if r.get("phases_ms_per_step_rank0")]
    if phases:
        out["phases_ms_per_step_rank0"] = {
            k: round(statistics.median(p.get(k, 0.0) for p in phases), 1) for k in phases[0]}
    return out


def bench_device(device: str) -> str:
    """``--device`` resolved as the workers resolve it (kd.compat.resolve_device)."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def gpu_memory_gib() -> float:
    import torch

    if not torch.cuda.is_available():
        return 80.0  # CPU runs: any value, the layout is only exercised
    return round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)


def device_name() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    except Exception:  # noqa: BLE001  (a name only)
        pass
    return "cpu"


def table(result: dict) -> str:
    rows = [
        f"KD throughput on {result['device']}, TP={result['tp']}, world {result['world']}, "
        f"seq {result['seq']}, gbs {result['gbs']}",
        "| variant | attention | TP | DP | mbs | overlap | KD loss | SP | fused | compiled teacher "
        "| step ms (spread, repeats) "
        "| tokens/s/GPU | TFLOP/s/GPU | MFU | x guide | peak alloc GiB (max rank) "
        "| estimate GiB | loss first -> last |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, v in result["variants"].items():
        peak = max(v.get("peak_allocated_gib_per_rank") or [0])
        rows.append(
            f"| {name} | {v['attention']} | {v['tp']} | {v['dp']} | {v['micro_batch_size']} | "
            f"{'on' if v['overlap_grad_reduce'] else 'off'} | {v.get('kd_loss')} | "
            f"{'on' if v.get('sequence_parallel') else 'off'} | "
            f"{'+'.join(v.get('fuse') or []) or 'none'} | "
            f"{'yes' if v.get('compile_teacher') else 'no'} | "
            f"{v.get('step_ms_median')} ({v.get('step_ms_spread')}, {v.get('repeats')}) | "
            f"{v.get('tokens_per_s_per_gpu')} | "
            f"{v.get('model_tflops_per_gpu')} | {v.get('mfu')} | "
            f"{result.get(f'speedup_{name}_vs_guide', 1.0 if name == 'guide' else '-')} "
            f"| {peak} | {v.get('estimated_peak_gib')} | "
            f"{v.get('loss_first')} -> {v.get('loss_last')} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
