"""Distillation stage: Megatron-Bridge's own KD trainer on a student/teacher pair of HF dirs.

``run(spec)`` is called once per SLURM task (one task per GPU) or per local process. It builds
the student and teacher providers with ``AutoBridge`` (standard Llama or Puzzletron AnyModel
with ``block_configs``), wraps them with ``convert_to_distillation_provider`` and ModelOpt's KD
config, and calls ``megatron.bridge.training.distill.distill``. Checkpoints go to
``output_dir/checkpoints`` (``iter_NNNNNNN`` + ``latest_checkpointed_iteration.txt``), and a
rerun resumes from the latest one. Heavy imports stay inside functions: the login node pickles
a reference to ``run`` without importing torch.

CLI (one process of a job; tests and manual runs)::

    python -m kd.distill --spec spec.json [--exit-signal USR2]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

from kd import checkpoints as ckpts
from kd import sections
from kd.dist_env import export_env
from kd.job import console_logger
from kd.paths import latest_iteration
from kd.results import write_json_atomic
from kd.specs import DistillSpec, KDOptions

log = logging.getLogger("kd.distill")
PRECISIONS = ("bf16", "fp32")


class DistillInterrupted(RuntimeError):
    """Training stopped before ``train_iters`` (exit signal or time limit) after saving."""

    def __init__(self, iteration: int | None, train_iters: int):
        super().__init__(
            f"distill: stopped at iteration {iteration} of {train_iters} "
            "(checkpoint saved; a rerun resumes from it)"
        )
        self.iteration = iteration


def checkpoints_dir(spec: DistillSpec) -> Path:
    return Path(spec.output_dir) / "checkpoints"


def tensorboard_dir(spec: DistillSpec) -> Path:
    return Path(spec.output_dir) / "tensorboard"


def run(spec: DistillSpec, exit_signal: int | None = None) -> dict:
    """Distil ``spec.student`` from ``spec.teacher``; returns a summary dict.

    ``exit_signal`` (e.g. ``signal.SIGUSR2`` from SLURM/submitit before a time limit): Megatron
    traps it, saves a checkpoint at the next iteration boundary and stops; ``run`` then raises
    ``DistillInterrupted`` so the job does not count as finished and a rerun resumes.
    """
    console_logger(log.name)
    env = export_env()
    validate(spec, env.world_size)
    done = completed_iteration(spec)
    if done is not None:
        log.info("distill: already complete at iteration %d, skipping", done)
        summary = _summary(spec, env, "skipped", done)
        if env.rank == 0:
            _write_marker(spec, summary)
        return summary
    return _train(spec, env, exit_signal)


def validate(spec: DistillSpec, world_size: int) -> None:
    """Raise ValueError (with the fix) for settings that cannot work."""
    if spec.train.precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {spec.train.precision!r}")
    if spec.world_size is not None and world_size != spec.world_size:
        raise ValueError(
            f"this job has {world_size} ranks, but the launcher resolved the layout (tp "
            f"{spec.train.tp}, pp {spec.train.pp}, dp {spec.data_parallel_size}) for "
            f"{spec.world_size}: relaunch with launch/distill.py, which resolves it again for "
            f"the nodes the job gets")
    try:
        dp = sections.data_parallel_size(world_size, spec.train.tp, spec.train.pp, spec.train.cp)
    except ValueError as err:
        raise ValueError(f"{err}: change the number of GPUs or the parallel sizes") from None
    if spec.train.global_batch_size % (spec.train.micro_batch_size * dp):
        raise ValueError(
            f"global_batch_size={spec.train.global_batch_size} must be a multiple of "
            f"micro_batch_size*data_parallel={spec.train.micro_batch_size * dp}"
        )
    if spec.train.train_iters < 1 or not 0 <= spec.train.lr_warmup_iters < spec.train.train_iters:
        raise ValueError(
            "need train_iters >= 1 and 0 <= lr_warmup_iters < train_iters, got "
            f"{spec.train.train_iters} and {spec.train.lr_warmup_iters}"
        )
    for role, path in (("student", spec.student), ("teacher", spec.teacher)):
        if not (Path(path) / "config.json").is_file():
            raise ValueError(f"{role} {path!r} is not a Hugging Face model dir (no config.json)")
    if not spec.data_blend:
        raise ValueError("data_blend is empty: give ((weight, megatron_prefix), ...)")
    for _, prefix in spec.data_blend:
        missing = [s for s in (".bin", ".idx") if not Path(prefix + s).is_file()]
        if missing:
            raise ValueError(
                f"data prefix {prefix!r} has no {'/'.join(missing)} file: run the "
                "prepare_data stage first, or pass the prefix without extension"
            )


def completed_iteration(spec: DistillSpec) -> int | None:
    """The finished iteration when the done marker or the final checkpoint exists, else None."""
    latest = ckpts.latest_complete(checkpoints_dir(spec))
    if spec.done_marker and Path(spec.done_marker).is_file():
        return latest if latest is not None else spec.train.train_iters
    if latest is not None and latest >= spec.train.train_iters:
        return latest
    return None


def _train(spec: DistillSpec, env, exit_signal: int | None) -> dict:
    from kd import compat

    device = compat.resolve_device(spec.device)
    compat.activate(device)
    check_options(spec, device)
    wandb_environment(spec)
    compat.scoped.start_cpu_process_group(device, env.rank, env.world_size)
    quarantine_incomplete_checkpoints(spec, env.rank)
    check_saved_layout(spec, env.world_size, uses_distributed_optimizer(spec, env.world_size))
    config = build_config(spec, device, exit_signal=exit_signal)
    prune_checkpoints(spec, env.rank)
    compat.scoped.lock_index_builds(index_cache_dir(spec), env.rank)
    if exit_signal is not None:
        compat.scoped.shield_checkpoint_writer(exit_signal)
    guard_saves_against_termination(signal.SIGTERM)
    log.info("%s", compat.summary())  # after the scoped workarounds above were decided

    start = latest_iteration(checkpoints_dir(spec)) or 0
    if env.rank == 0:
        ckpts.record_layout(checkpoints_dir(spec), start, tp=spec.train.tp, pp=spec.train.pp,
                            dp=data_parallel_size(spec, env.world_size),
                            distributed_optimizer=config.ddp.use_distributed_optimizer)
    student = config.model  # the distillation provider is the student's provider
    log.info(
        "distill: %s from iteration %d to %d (world %d, tp %d, pp %d, micro-batch %d, "
        "recompute %s, overlap grad reduce %s, distributed optimizer %s, sequence parallel %s, "
        "fuse %s, compiled teacher %s, device %s)",
        "resuming" if start else "starting",
        start,
        spec.train.train_iters,
        env.world_size,
        spec.train.tp,
        spec.train.pp,
        spec.train.micro_batch_size,
        getattr(student, "recompute_granularity", None) or "none",
        config.ddp.overlap_grad_reduce,
        config.ddp.use_distributed_optimizer,
        student.sequence_parallel,
        ",".join(spec.train.fusions(device)) or "none",
        spec.kd.compile_teacher,
        device,
    )
    t0 = time.time()
    try:
        distill_with_callbacks(config, training_callbacks(spec, env.rank))
    except SystemExit as stop:  # Megatron exits(0) after an exit signal or time limit
        if stop.code not in (0, None):
            raise
    wall = time.time() - t0
    peak = _peak_memory_gib(device)
    if peak is not None:  # every rank: Bridge has already destroyed the process group on GPU
        _log_rank_memory(env.rank, peak)
    _barrier()
    prune_checkpoints(spec, env.rank)
    iteration = latest_iteration(checkpoints_dir(spec))
    if iteration is None or iteration < spec.train.train_iters:
        raise DistillInterrupted(iteration, spec.train.train_iters)
    summary = _summary(
        spec,
        env,
        "completed",
        iteration,
        device=device,
        wall_s=round(wall, 1),
        start_iteration=start,
        peak_memory_gib=peak,
    )
    if env.rank == 0:
        _write_marker(spec, summary)
    log.info("distill: complete at iteration %d in %.1fs", iteration, wall)
    _destroy_process_group(device)
    return summary


def build_config(spec: DistillSpec, device: str, exit_signal: int | None = None):
    """The ConfigContainer for ``distill()``: providers, KD, optimizer, data, checkpoints."""
    from megatron.bridge.models.distillation_provider import convert_to_distillation_provider
    from megatron.bridge.training.config import (
        ConfigContainer,
        DistributedInitConfig,
        RNGConfig,
        TrainingConfig,
    )
    from megatron.bridge.training.tokenizers.config import TokenizerConfig

    on_gpu = device == "cuda"
    bf16 = on_gpu and spec.train.precision == "bf16"
    sharded = uses_distributed_optimizer(spec)
    student = build_provider(spec.student, spec, device,
                             load_weights=student_init_checkpoint(spec) is None)
    # the teacher runs without autograd: nothing to recompute
    for name, value in recompute_settings(spec).items():
        setattr(student, name, value)
    teacher = build_provider(spec.teacher, spec, device)
    if spec.kd.compile_teacher:  # after the hook that loads its HF weights
        from kd import fused

        teacher.register_pre_wrap_hook(fused.compile_teacher)
    if student.vocab_size != teacher.vocab_size:
        raise ValueError(
            f"student vocab {student.vocab_size} != teacher vocab "
            f"{teacher.vocab_size}: KD on logits needs the same tokenizer"
        )
    model = convert_to_distillation_provider(student, teacher, kd_config(spec.kd))
    resume = latest_iteration(checkpoints_dir(spec)) is not None
    train = TrainingConfig(
        train_iters=spec.train.train_iters,
        global_batch_size=spec.train.global_batch_size,
        micro_batch_size=spec.train.micro_batch_size,
        eval_interval=spec.train.eval_interval,
        eval_iters=spec.train.eval_iters,
        manual_gc=True,
        manual_gc_interval=100,
    )
    if exit_signal is not None:
        set_exit_signal(train, exit_signal)
    optimizer, scheduler = optimizer_configs(spec, bf16, sharded)
    return ConfigContainer(
        model=model,
        train=train,
        optimizer=optimizer,
        scheduler=scheduler,
        ddp=ddp_config(spec, on_gpu, sharded),
        dataset=dataset_config(spec, on_gpu),
        logger=logger_config(spec),
        tokenizer=TokenizerConfig(tokenizer_type="NullTokenizer", vocab_size=student.vocab_size),
        checkpoint=checkpoint_config(spec, on_gpu, resume),
        rng=RNGConfig(seed=spec.train.seed),
        dist=DistributedInitConfig(distributed_backend="nccl" if on_gpu else "gloo"),
        mixed_precision="bf16_mixed" if bf16 else None,
    )


def check_saved_layout(spec: DistillSpec, world_size: int, sharded: bool) -> None:
    """Refuse, before loading, a checkpoint this layout cannot load (the launcher refuses it
    before queueing; this covers a spec run by hand): another tp/pp, or the distributed
    optimizer switched on or off (the two optimizers save different state). Another dp is
    fine: the distributed optimizer's dp_reshardable format reshards over data parallelism."""
    saved = ckpts.saved_layout(checkpoints_dir(spec))
    if saved is None:
        return
    now = (f"tp={spec.train.tp} pp={spec.train.pp} dp={data_parallel_size(spec, world_size)} "
           f"distributed optimizer {'on' if sharded else 'off'}")
    if (saved.tp, saved.pp, saved.distributed_optimizer) != (spec.train.tp, spec.train.pp, sharded):
        raise ValueError(
            f"the checkpoint at iteration {saved.iteration} in {checkpoints_dir(spec)} was saved "
            f"at {saved.describe()}; this start has {now}: resume with train.tp={saved.tp} "
            f"train.pp={saved.pp} train.distributed_optimizer="
            f"{str(saved.distributed_optimizer).lower()}, or start a new run directory")


def quarantine_incomplete_checkpoints(spec: DistillSpec, rank: int) -> list[Path]:
    """Rank 0 moves saves that a kill interrupted out of ``checkpoints/`` (kd.checkpoints) before
    training, so neither Megatron nor any reader of ``iter_*`` names can pick them; the others
    wait for it."""
    moved = ckpts.quarantine_incomplete(checkpoints_dir(spec)) if rank == 0 else []
    for path in moved:
        log.warning("distill: incomplete checkpoint (a save that was killed) moved to %s", path)
    _barrier()
    return moved


# The kill path (scancel, node failure, preemption without a grace signal): SLURM sends SIGTERM,
# then SIGKILL after KillWait. A save started in between would be cut by SIGKILL, so after
# SIGTERM no new save starts: outside a save the process exits at once (the last complete
# checkpoint stands); inside one, the save finishes and the process exits right after it.
_kill = {"terminating": False, "saving": False}


def _terminate_now(signum: int) -> None:
    log.warning("distill: termination signal %d: exiting without starting a save", signum)
    logging.shutdown()
    os._exit(128 + signum)


def _on_termination(signum, frame) -> None:  # noqa: ARG001
    _kill["terminating"] = True
    if not _kill["saving"]:
        _terminate_now(signum)
    log.warning("distill: termination signal %d during a save: finishing it, then exiting", signum)


def guard_saves_against_termination(sig: int = signal.SIGTERM) -> None:
    """Trap ``sig`` (main thread) and run Megatron-Bridge's saves so that none starts after it
    (the save hook itself is a compat workaround: ``bridge-save-hook``)."""
    from kd import compat

    signal.signal(sig, _on_termination)
    compat.scoped.around_bridge_saves(lambda: _no_save_after_termination(sig))


@contextlib.contextmanager
def _no_save_after_termination(sig: int):
    if _kill["terminating"]:
        _terminate_now(sig)
    _kill["saving"] = True
    try:
        yield
    finally:
        _kill["saving"] = False
        if _kill["terminating"]:
            _terminate_now(sig)


def data_parallel_size(spec: DistillSpec, world_size: int | None = None) -> int:
    """DP ranks of this run: world / (tp x pp x cp)."""
    if world_size is None:
        import torch.distributed as dist

        world_size = dist.get_world_size() if dist.is_initialized() else 1
    return sections.data_parallel_size(world_size, spec.train.tp, spec.train.pp, spec.train.cp)


def uses_distributed_optimizer(spec: DistillSpec, world_size: int | None = None) -> bool:
    """Megatron's distributed optimizer (Adam states sharded over DP). The launcher resolves
    ``train.distributed_optimizer`` to true/false (following a resumed run's checkpoints); a
    spec written by hand may still say ``auto``: on when DP > 1."""
    return spec.train.sharded_optimizer(data_parallel_size(spec, world_size))


def ddp_config(spec: DistillSpec, on_gpu: bool, sharded: bool):
    """DDP settings: gradient buckets reduced (scattered with the distributed optimizer) in fp32
    on GPU; overlaps with backward / forward only where asked (``train.overlap_grad_reduce``, on
    CPU too: gloo runs it, and the layout matrix resumes it), the parameter all-gather overlap
    only together with the distributed optimizer."""
    from megatron.bridge.training.config import DistributedDataParallelConfig

    overlap = spec.train.overlap_grad_reduce
    return DistributedDataParallelConfig(
        use_distributed_optimizer=sharded,
        grad_reduce_in_fp32=on_gpu,
        overlap_grad_reduce=overlap,
        overlap_param_gather=overlap and sharded,
        average_in_collective=sharded,
        check_for_nan_in_grad=True,
    )


def set_exit_signal(train_config, sig: int = signal.SIGUSR2) -> None:
    """Let Megatron trap ``sig``: checkpoint at the next iteration boundary, then stop."""
    train_config.exit_signal_handler = True
    train_config.exit_signal = sig


def build_provider(hf_dir: str, spec: DistillSpec, device: str, load_weights: bool = True):
    """A GPT provider (HF weights loaded when the model is built, unless ``load_weights`` is off:
    ``student.megatron_checkpoint`` overwrites them) set up for ``spec``."""
    import modelopt.torch.puzzletron.plugins  # noqa: F401  registers the AnyModel bridges
    import torch
    from megatron.bridge import AutoBridge

    bf16 = device == "cuda" and spec.train.precision == "bf16"
    dtype = torch.bfloat16 if bf16 else torch.float32
    bridge = AutoBridge.from_hf_pretrained(
        hf_dir, torch_dtype=dtype, trust_remote_code=spec.trust_remote_code
    )
    provider = bridge.to_megatron_provider(load_weights=load_weights)
    configure_provider(provider, spec.train.tp, spec.train.pp, spec.train.cp, spec.train.seq_length, device, bf16,
                       sequence_parallel=spec.train.sequence_parallel_on(),
                       fuse=spec.train.fusions(device))
    return provider


def configure_provider(
    provider,
    tp: int,
    pp: int,
    cp: int,
    seq_length: int,
    device: str,
    bf16: bool,
    attention: str = "sdpa",
    sequence_parallel: bool | None = None,
    fuse: tuple[str, ...] = (),
) -> None:
    """Parallel sizes, dtype, and (without Transformer Engine) the local specs and fusions.
    ``sequence_parallel``: None = on whenever tp > 1; ``fuse``: names of kd.sections.FUSIONS
    (train.fuse resolved), what runs through torch.compile without TE (kd/fused.py)."""
    import torch

    from kd import compat, fused

    provider.tensor_model_parallel_size = tp
    provider.pipeline_model_parallel_size = pp
    provider.context_parallel_size = cp
    provider.seq_length = seq_length
    provider.pipeline_dtype = torch.bfloat16 if bf16 else torch.float32
    # without TE too: kd.fused.Norm (the local specs' norm) marks its weights for Megatron's
    # all-reduce over TP, which is all that sequence parallelism needs from a norm
    provider.sequence_parallel = tp > 1 if sequence_parallel is None else sequence_parallel
    if not compat.have_te():
        if cp > 1:
            raise ValueError("context parallelism needs Transformer Engine: set cp=1")
        from kd import layer_specs

        provider.transformer_layer_spec = layer_specs.pick(provider, attention,
                                                           fuse_norm="norm" in fuse)
        _disable(
            provider,
            "persist_layer_norm",
            "masked_softmax_fusion",
            "gradient_accumulation_fusion",
        )
        for name, value in fused.provider_flags(fuse, provider).items():  # rope, swiglu, residual
            setattr(provider, name, value)
    if device == "cpu":
        _disable(
            provider,
            "cross_entropy_loss_fusion",
            "bf16",
            "fp16",
        )
        provider.params_dtype = torch.float32


def kd_config(options: KDOptions):
    from megatron.bridge.training.post_training.distillation import ModelOptDistillConfig

    return ModelOptDistillConfig(
        logit_layers=["output_layer", "output_layer"],
        intermediate_layer_pairs=[list(pair) for pair in options.intermediate_layer_pairs],
        skip_lm_loss=options.skip_lm_loss,
        kd_loss_scale=options.kd_loss_scale,
        logit_kl_temperature=options.logit_kl_temperature,
        logit_kl_topk=options.logit_kl_topk,
    )


def dataset_config(spec: DistillSpec, on_gpu: bool):
    from megatron.bridge.training.config import GPTDatasetConfig

    prefixes = [prefix for _, prefix in spec.data_blend]
    weights = [float(weight) for weight, _ in spec.data_blend]
    return GPTDatasetConfig(
        blend=(prefixes, weights if len(weights) > 1 else None),
        split=spec.train.split,
        seq_length=spec.train.seq_length,
        path_to_cache=index_cache_dir(spec),
        random_seed=spec.train.seed,
        reset_attention_mask=False,
        reset_position_ids=False,
        eod_mask_loss=False,
        num_dataset_builder_threads=1,
        data_sharding=True,
        dataloader_type="single",
        num_workers=2 if on_gpu else 0,
        skip_getting_attention_mask_from_dataset=True,
    )


# ----------------------------------------- the options of Model-Optimizer's distill.py
# Model-Optimizer's examples/megatron_bridge/distill.py offers these; each is declared and
# checked once in kd/sections.py (Train.recompute*, Optimizer, Checkpoint, Logging, ...) and
# reaches this stage through the spec; here they become Megatron-Bridge config objects.
def recompute_settings(spec: DistillSpec) -> dict:
    """The student provider's activation-recomputation fields for ``train.recompute``: ``full``
    (each layer, one at a time) or ``selective`` (only ``train.recompute_modules``)."""
    mode = spec.train.recompute
    if mode == "none":
        return {}
    if mode == "full":
        return {"recompute_granularity": "full", "recompute_method": "uniform",
                "recompute_num_layers": 1}
    if mode == "selective":
        modules = spec.train.recompute_modules or ("core_attn",)  # Megatron's default
        return {"recompute_granularity": "selective", "recompute_method": None,
                "recompute_num_layers": None, "recompute_modules": list(modules)}
    raise ValueError(f"recompute={mode!r}: choose none, full or selective")


def optimizer_configs(spec: DistillSpec, bf16: bool, sharded: bool):
    """Adam + the learning-rate schedule from the ``optimizer`` section (and ``train``'s lr,
    min_lr, warm-up); weight decay is constant over the run."""
    import torch
    from megatron.bridge.training.config import OptimizerConfig, SchedulerConfig

    o = spec.optimizer
    optimizer = OptimizerConfig(
        optimizer="adam",
        lr=spec.train.lr,
        min_lr=spec.train.min_lr,
        weight_decay=o.weight_decay,
        adam_beta1=o.adam_beta1,
        adam_beta2=o.adam_beta2,
        adam_eps=o.adam_eps,
        clip_grad=o.clip_grad,
        bf16=bf16,
        fp16=False,
        params_dtype=torch.bfloat16 if bf16 else torch.float32,
        use_distributed_optimizer=sharded,
    )
    scheduler = SchedulerConfig(
        lr_decay_style=o.lr_decay_style,
        lr_warmup_iters=spec.train.lr_warmup_iters,
        lr_decay_iters=spec.train.train_iters,
        start_weight_decay=o.weight_decay,
        end_weight_decay=o.weight_decay,
        weight_decay_incr_style="constant",
        override_opt_param_scheduler=True,
    )
    return optimizer, scheduler


def student_init_checkpoint(spec: DistillSpec) -> tuple[str, int] | None:
    """``student.megatron_checkpoint`` as (checkpoints root, iteration): a ``checkpoints/`` dir
    (its latest complete save) or one ``iter_N`` dir, complete by kd.checkpoints' rule."""
    path = spec.student_megatron_checkpoint
    if not path:
        return None
    root, it = ckpts.resolve_checkpoint(path)
    return str(root), it


def checkpoint_config(spec: DistillSpec, on_gpu: bool, resume: bool):
    """Saves to ``output_dir/checkpoints`` (torch_dist), resume from there; a first start takes
    the student's weights from ``student.megatron_checkpoint`` when set (Bridge's
    ``pretrained_checkpoint`` + ``ckpt_step``: weights only, iteration 0, fresh optimizer)."""
    from megatron.bridge.training.config import CheckpointConfig

    ckpt = str(checkpoints_dir(spec))
    init = None if resume else student_init_checkpoint(spec)
    return CheckpointConfig(
        save=ckpt,
        # Bridge needs load set whenever ckpt_step is; it loads from `load` once a save exists
        load=ckpt if (resume or init) else None,
        pretrained_checkpoint=init[0] if init else None,
        ckpt_step=init[1] if init else None,
        save_interval=spec.train.save_interval,
        ckpt_format="torch_dist",
        async_save=spec.checkpoint.async_save,
        fully_parallel_save=on_gpu,
        most_recent_k=-1,  # retention is ours (prune_checkpoints): it knows complete/protected
    )


def prune_checkpoints(spec: DistillSpec, rank: int) -> list[int]:
    """``checkpoint.keep_last``: rank 0 deletes the complete checkpoints beyond the newest k,
    never the protected ones (``keep_iterations``: export.iteration, checkpoint candidates)."""
    keep = spec.checkpoint.keep_last
    if rank != 0 or keep is None:
        return []
    gone = ckpts.prune(checkpoints_dir(spec), keep, spec.keep_iterations)
    if gone:
        log.info("distill: checkpoint.keep_last=%d: deleted iterations %s", keep, gone)
    return gone


def training_callbacks(spec: DistillSpec, rank: int):
    """Megatron-Bridge callbacks (its public hook API) for the options that act during training:
    ``checkpoint.keep_last`` prunes after every step (a save of step N is complete, or not yet,
    by the time step N+1 ends; the last save is pruned after training). None when unused."""
    if spec.checkpoint.keep_last is None:
        return None
    from megatron.bridge.training.callbacks import CallbackManager

    manager = CallbackManager()
    manager.register("on_train_step_end", lambda context: prune_checkpoints(spec, rank))
    return manager


def distill_with_callbacks(config, callbacks) -> None:
    """``megatron.bridge.training.distill.distill`` (= ``pretrain`` with ModelOpt's KD forward
    step), with ``callbacks``: Bridge's ``distill()`` takes none."""
    from megatron.bridge.models.distillation_provider import DistillationProvider
    from megatron.bridge.training.gpt_step import forward_step_modelopt
    from megatron.bridge.training.pretrain import pretrain

    if not isinstance(config.model, DistillationProvider):
        raise TypeError("distill needs a DistillationProvider as config.model")
    pretrain(config, forward_step_modelopt, callbacks=callbacks)


def index_cache_dir(spec: DistillSpec) -> str:
    """Megatron's dataset index cache (``path_to_cache``): ``data.index_cache`` when set, shared
    by every run and sweep member with the same blend (the file names hash the blend, split,
    sequence length and seed); else ``output_dir/dataset_cache``."""
    return spec.index_cache or str(Path(spec.output_dir) / "dataset_cache")


def check_options(spec: DistillSpec, device: str) -> None:
    """The options of Model-Optimizer's distill.py that depend on where distill runs (the rest
    are checked at load)."""
    if spec.checkpoint.async_save and device != "cuda":
        raise ValueError(
            "checkpoint.async_save=true needs CUDA GPUs: megatron-core's persistent async "
            "checkpoint worker binds a CUDA device (it dies on a CPU run and training then "
            "hangs at the next save); set checkpoint.async_save=false for CPU runs"
        )
    settings = recompute_settings(spec)
    if "layernorm" in settings.get("recompute_modules", ()):
        from kd import compat

        if not compat.have_te():
            raise ValueError(
                "train.recompute_modules has 'layernorm': megatron-core recomputes it with "
                "output-discarding checkpointing, which needs Transformer Engine (not installed "
                "here); use core_attn and/or mlp, or run in a container with TE"
            )
    student_init_checkpoint(spec)


def wandb_dir(spec: DistillSpec) -> Path:
    return Path(spec.output_dir) / "wandb"


def logger_config(spec: DistillSpec):
    """TensorBoard (loss, lr; timers when ``logging.timers`` > 0) and the optional W&B logger."""
    from megatron.bridge.training.config import LoggerConfig

    lo = spec.logging
    wandb = lo.wandb_project is not None and lo.wandb_mode != "disabled"
    return LoggerConfig(
        log_interval=spec.train.log_interval,
        tensorboard_dir=str(tensorboard_dir(spec)),
        timing_log_level=lo.timers,
        log_timers_to_tensorboard=lo.timers > 0,
        wandb_project=lo.wandb_project if wandb else None,
        wandb_entity=lo.wandb_entity if wandb else None,
        wandb_exp_name=(lo.wandb_name or Path(spec.output_dir).parent.name) if wandb else None,
        wandb_save_dir=str(wandb_dir(spec)) if wandb else None,
    )


def wandb_environment(spec: DistillSpec, environ: dict | None = None) -> dict:
    """Set ``WANDB_MODE`` (offline by default: compute nodes rarely reach the internet; sync
    later with ``wandb sync RUN/distill/wandb``) and refuse a missing package or, online, a
    missing ``WANDB_API_KEY``. Returns the variables it set."""
    lo = spec.logging
    env = os.environ if environ is None else environ
    if lo.wandb_project is None or lo.wandb_mode == "disabled":
        return {}
    import importlib.util

    if importlib.util.find_spec("wandb") is None:
        raise ValueError(
            "logging.wandb_project is set but the wandb package is not installed where distill "
            "runs: `pip install wandb` into the job's environment (container or venv), or remove "
            "logging.wandb_project"
        )
    if lo.wandb_mode == "online" and not env.get("WANDB_API_KEY", "").strip():
        raise ValueError(
            "logging.wandb_mode=online needs WANDB_API_KEY in the environment of the shell that "
            "launches (SLURM copies it into the job; never put it in a config), or use "
            "logging.wandb_mode=offline and `wandb sync` later"
        )
    env["WANDB_MODE"] = lo.wandb_mode
    return {"WANDB_MODE": lo.wandb_mode}


def _disable(provider, *names: str) -> None:
    for name in names:
        setattr(provider, name, False)


def _destroy_process_group(device: str) -> None:
    import torch.distributed as dist

    if device == "cpu" and dist.is_initialized():
        dist.destroy_process_group()


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def _peak_memory_gib(device: str) -> float | None:
    if device != "cuda":
        return None
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 2)


def _log_rank_memory(rank: int, allocated_gib: float) -> None:
    """One ``KD_PEAK_MEMORY`` JSON line per rank (the job's per-task logs keep them all)."""
    import torch

    reserved = round(torch.cuda.max_memory_reserved() / 2**30, 2)
    line = {"rank": rank, "allocated_gib": allocated_gib, "reserved_gib": reserved}
    print("KD_PEAK_MEMORY " + json.dumps(line), flush=True)


def _summary(spec: DistillSpec, env, status: str, iteration: int, **extra) -> dict:
    return {
        "stage": "distill",
        "status": status,
        "iteration": iteration,
        "checkpoints": str(checkpoints_dir(spec)),
        "tensorboard": str(tensorboard_dir(spec)),
        "world_size": env.world_size,
        "tp": spec.train.tp,
        "pp": spec.train.pp,
        "micro_batch_size": spec.train.micro_batch_size,
        "recompute": spec.train.recompute,
        "tokens_per_iteration": spec.train.global_batch_size * spec.train.seq_length,
        **extra,
    }


def _write_marker(spec: DistillSpec, summary: dict) -> None:
    if spec.done_marker and not Path(spec.done_marker).is_file():
        write_json_atomic(spec.done_marker, summary)




def spec_from_dict(data: dict) -> DistillSpec:
    """A DistillSpec from its ``dataclasses.asdict`` form (JSON turns tuples into lists)."""
    from kd import specs

    return specs.spec_from_dict(DistillSpec, data)


def spec_to_json(spec: DistillSpec, path: str | Path) -> Path:
    Path(path).write_text(json.dumps(dataclasses.asdict(spec), indent=2) + "\n")
    return Path(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kd.distill", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--spec", required=True, help="DistillSpec as JSON (dataclasses.asdict)")
    parser.add_argument(
        "--exit-signal",
        default=None,
        help="signal name Megatron traps to checkpoint and stop, e.g. USR2",
    )
    args = parser.parse_args(argv)
    spec = spec_from_dict(json.loads(Path(args.spec).read_text()))
    sig = (
        getattr(signal, "SIG" + args.exit_signal.upper().removeprefix("SIG"))
        if args.exit_signal
        else None
    )
    try:
        summary = run(spec, exit_signal=sig)
    except DistillInterrupted as err:
        log.error("%s", err)
        return 3
    if int(os.environ.get("RANK", "0")) == 0:
        print("KD_SUMMARY " + json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
