"""The patches ``kd.compat`` applies: Megatron-Bridge fixes (every device) and the CPU patches
(megatron-core/Bridge hard-code CUDA). Each is registered, with its versions and reason, in
``kd.compat.WORKAROUNDS``; nothing here runs on import."""

from __future__ import annotations

import contextlib
import functools
import importlib


def fix_compile_helpers() -> None:
    from megatron.bridge.training import initialize

    original = initialize.compile_helpers

    def compile_helpers_if_missing():
        try:
            importlib.import_module("megatron.core.datasets.helpers_cpp")
        except ImportError:
            original()

    initialize.compile_helpers = compile_helpers_if_missing


def fix_signal_handler() -> None:
    from megatron.bridge.training.state import GlobalState

    original = GlobalState._set_signal_handler
    if getattr(original, "_kd_fixed", False):
        return

    def set_signal_handler(self):
        original(self)
        handler, train = self._signal_handler, getattr(self.cfg, "train", None)
        if handler is None or train is None or not train.exit_signal_handler:
            return
        if handler.original_handler is None:  # built but never entered: trap the signal now
            handler.__enter__()

    set_signal_handler._kd_fixed = True
    GlobalState._set_signal_handler = set_signal_handler


def fill_rope_fusion_slot() -> None:
    """Without TE, megatron-core's fused-RoPE slot (``rope_utils.fused_apply_rotary_pos_emb``,
    read at call time when ``apply_rope_fusion``) is None and the config refuses the flag; fill
    it with megatron-core's own unfused RoPE through torch.compile (``kd.fused.rope``). Only
    runs where ``apply_rope_fusion`` is on: ``train.fuse`` with ``rope`` (kd.distill)."""
    from megatron.core.models.common.embeddings import rope_utils

    if rope_utils.fused_apply_rotary_pos_emb is not None:  # TE (or an earlier call) filled it
        return
    from kd.fused import rope

    rope_utils.fused_apply_rotary_pos_emb = rope


# --------------------------------------------------------------------------- CPU patches
def _is_cuda(device) -> bool:
    import torch

    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    return isinstance(device, int) and not isinstance(device, bool)  # bare ordinal = cuda:N


def patch_torch_cuda() -> None:
    import torch

    class CudaToCpu(torch.overrides.TorchFunctionMode):
        """Rewrites device="cuda..." to cpu in every torch call (as `with torch.device` does)."""

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = dict(kwargs or {})
            if "device" in kwargs and _is_cuda(kwargs["device"]):
                kwargs["device"] = "cpu"
            if func is torch.Tensor.to and len(args) > 1 and _is_cuda(args[1]):
                args = (args[0], "cpu", *args[2:])
            return func(*args, **kwargs)

    CudaToCpu().__enter__()  # stays active for the life of this (CPU-only) process
    cpu = torch.device("cpu")
    cuda = torch.cuda
    cuda.current_device = lambda: cpu
    cuda.set_device = lambda *a, **k: None
    cuda.synchronize = lambda *a, **k: None
    cuda.get_rng_state = lambda device="cuda": torch.get_rng_state()
    cuda.random.get_rng_state = cuda.get_rng_state
    cuda.set_rng_state = lambda state, device="cuda": None
    cuda.manual_seed = lambda seed: None  # the CPU generator is seeded by Megatron separately
    cuda.manual_seed_all = lambda seed: None
    cuda.Stream = _DummyStream
    cuda.Event = _DummyEvent
    cuda.current_stream = lambda *a, **k: _DummyStream()
    cuda.stream = lambda *a, **k: contextlib.nullcontext()
    cuda.memory_stats = lambda *a, **k: {}
    for name in (
        "memory_allocated",
        "max_memory_allocated",
        "memory_reserved",
        "max_memory_reserved",
    ):
        setattr(cuda, name, lambda *a, **k: 0)
    cuda.reset_peak_memory_stats = lambda *a, **k: None
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.nn.Module.cuda = lambda self, *a, **k: self


def patch_gloo_scatter() -> None:
    import torch

    original = torch.distributed.scatter

    def scatter(tensor, scatter_list=None, *args, **kwargs):
        if scatter_list:
            scatter_list = [t.contiguous() for t in scatter_list]
        return original(tensor, scatter_list, *args, **kwargs)

    torch.distributed.scatter = scatter


def patch_rng_state() -> None:
    import torch
    from megatron.core.tensor_parallel import random as mrandom

    mrandom._get_cuda_rng_state = lambda *a, **k: torch.get_rng_state()
    mrandom._set_cuda_rng_state = lambda new_state, *a, **k: torch.set_rng_state(new_state)


def patch_causal_mask() -> None:
    import torch
    from megatron.core.fusions import fused_softmax
    from megatron.core.transformer import utils as tutils

    @functools.lru_cache
    def get_default_causal_mask(sq: int):
        return torch.triu(torch.ones(sq, sq, device="cpu"), diagonal=1).bool()

    tutils.get_default_causal_mask = get_default_causal_mask
    fused_softmax.get_default_causal_mask = get_default_causal_mask


def patch_grad_clip() -> None:
    import torch
    from megatron.core.optimizer import clip_grads, optimizer

    def clip_grad_by_total_norm_fp32(parameters, max_norm, total_norm, use_decoupled_grad=False):
        params = [parameters] if isinstance(parameters, torch.Tensor) else parameters
        attr = "decoupled_grad" if use_decoupled_grad else "grad"
        grads = [getattr(p, attr).detach() for p in params if getattr(p, attr, None) is not None]
        coeff = max_norm / (total_norm + 1.0e-6)
        if coeff < 1.0 and grads:
            torch._foreach_mul_(grads, coeff)

    clip_grads.clip_grad_by_total_norm_fp32 = clip_grad_by_total_norm_fp32
    optimizer.clip_grad_by_total_norm_fp32 = clip_grad_by_total_norm_fp32


def patch_warmup_jit() -> None:
    from megatron.bridge.training import initialize

    initialize._warmup_jit_function = lambda *a, **k: None


def patch_rng_tracker() -> None:
    from megatron.bridge.training import initialize

    original_seed = initialize._set_random_seed

    def set_random_seed(seed, *args, **kwargs):
        original_seed(seed, *args, **kwargs)
        from megatron.core import tensor_parallel

        if not tensor_parallel.get_cuda_rng_tracker().is_initialized():
            tensor_parallel.model_parallel_cuda_manual_seed(seed)

    initialize._set_random_seed = set_random_seed


def patch_initialize_no_cuda() -> None:
    from megatron.bridge.training import initialize, setup

    setup.initialize_megatron = functools.partial(
        initialize.initialize_megatron, allow_no_cuda=True
    )


class _DummyStream:
    def __init__(self, *args, **kwargs):
        pass

    def wait_stream(self, *args, **kwargs):
        pass

    def synchronize(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _DummyEvent(_DummyStream):
    def record(self, *args, **kwargs):
        pass

    def elapsed_time(self, *args, **kwargs):
        return 0.0


def patch_distributed_optimizer() -> None:
    """Megatron's DistributedOptimizer sorts parameters by ``param.type()`` and accepts only
    ``torch.cuda.*Tensor`` names: on CPU, its constructor sees the CUDA names of CPU tensors."""
    import torch
    from megatron.core.optimizer import distrib_optimizer

    cls = distrib_optimizer.DistributedOptimizer
    original_type = torch.Tensor.type

    def cuda_type(self, *args, **kwargs):
        name = original_type(self, *args, **kwargs)
        if args or kwargs or not isinstance(name, str) or name.startswith("torch.cuda."):
            return name
        return name.replace("torch.", "torch.cuda.", 1)

    def with_cuda_names(fn):
        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            torch.Tensor.type = cuda_type
            try:
                return fn(*args, **kwargs)
            finally:
                torch.Tensor.type = original_type

        return wrapped

    build = cls._build_model_and_main_param_groups.__func__
    cls._build_model_and_main_param_groups = classmethod(with_cuda_names(build))
    cls.__init__ = with_cuda_names(cls.__init__)


def fix_pp_distillation_eval_shapes() -> None:
    """Bridge's evaluate() runs the non-interleaved pipeline schedule without the
    ``adjust_tensor_shapes_fn`` its training step passes: with PP > 1 every stage but the last
    of a ModelOpt DistillationModel sends student and teacher activations concatenated (twice
    the hidden size), and the next stage posts a receive for the student's half only. Give
    evaluate's schedule the same shape adjustment (for the shapes of that call) as training."""
    from megatron.bridge.training import eval as bridge_eval
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import schedules
    from modelopt.torch.distill.plugins.megatron import (
        get_tensor_shapes_adjust_fn_for_distillation,
    )

    original = bridge_eval.get_forward_backward_func
    if getattr(original, "_kd_fixed", False):
        return

    def with_distillation_shapes(schedule):
        @functools.wraps(schedule)
        def run_schedule(*args, **kwargs):
            if (
                kwargs.get("adjust_tensor_shapes_fn") is None
                and "model" in kwargs
                and parallel_state.model_parallel_is_initialized()
            ):
                seq_length = kwargs["seq_length"]
                kwargs["adjust_tensor_shapes_fn"] = get_tensor_shapes_adjust_fn_for_distillation(
                    kwargs["model"],
                    seq_length=seq_length,
                    micro_batch_size=kwargs["micro_batch_size"],
                    decoder_seq_length=kwargs.get("decoder_seq_length") or seq_length,
                )
            return schedule(*args, **kwargs)

        return run_schedule

    def get_forward_backward_func(*args, **kwargs):
        schedule = original(*args, **kwargs)
        # the only schedule that takes adjust_tensor_shapes_fn (the others assert it is None)
        if schedule is schedules.forward_backward_pipelining_without_interleaving:
            return with_distillation_shapes(schedule)
        return schedule

    get_forward_backward_func._kd_fixed = True
    bridge_eval.get_forward_backward_func = get_forward_backward_func


def fix_distributed_optimizer_fresh_state() -> None:
    """Without Apex or TE, megatron-core's ``DistributedOptimizer.state_dict()`` reads Adam's
    ``step`` from every parameter's state and asserts there is exactly one value. A checkpoint
    is loaded into a fresh optimizer (``sharded_state_dict(is_loading=True)`` calls
    ``state_dict()`` first), whose torch Adam has no state yet: the set is empty and every
    resume dies. A fresh optimizer has taken 0 steps: say so, and touch nothing else (the
    value only shapes the template that the loaded checkpoint then fills)."""
    import torch
    from megatron.core.optimizer import distrib_optimizer

    cls = distrib_optimizer.DistributedOptimizer
    original = cls.state_dict
    if getattr(original, "_kd_fresh_state", False):
        return

    @functools.wraps(original)
    def state_dict(self):
        inner = self.optimizer
        fresh = not distrib_optimizer.HAVE_APEX_OR_TE and not any(
            "step" in state for state in getattr(inner, "state", {}).values()
        )
        if not fresh:
            return original(self)
        real = inner.state_dict

        def with_no_steps_taken():
            content = real()
            content["state"] = {0: {"step": torch.tensor(0.0)}}
            return content

        inner.state_dict = with_no_steps_taken
        try:
            return original(self)
        finally:
            del inner.state_dict

    state_dict._kd_fresh_state = True
    cls.state_dict = state_dict


def fix_distributed_optimizer_shared_step() -> None:
    """Without Apex or TE, ``DistributedOptimizer.load_state_dict`` restores Adam's ``step``
    wrongly in two ways: it assigns ONE tensor to every parameter's state (torch's Adam then
    increments it in place once per parameter per iteration), and with the ``dp_reshardable``
    format the parameter-state copy that follows overwrites it with the loading template's
    value (a fresh optimizer's). Either way the bias correction after a resume is not the one
    the uninterrupted run uses, and the losses drift away from its curve. After loading, give
    each parameter its own tensor holding the step of the checkpoint's parameter groups."""
    import torch
    from megatron.core.optimizer import distrib_optimizer

    cls = distrib_optimizer.DistributedOptimizer
    original = cls.load_state_dict
    if getattr(original, "_kd_own_steps", False):
        return

    @functools.wraps(original)
    def load_state_dict(self, state_dict):
        result = original(self, state_dict)
        if distrib_optimizer.HAVE_APEX_OR_TE:
            return result
        groups = ((state_dict or {}).get("optimizer") or {}).get("param_groups") or []
        steps = {float(g["step"]) for g in groups if g.get("step") is not None}
        if len(steps) != 1:
            raise RuntimeError(
                f"distributed optimizer checkpoint: expected one Adam step over the parameter "
                f"groups, found {sorted(steps)}"
            )
        step = steps.pop()
        for state in self.optimizer.state.values():
            if "step" in state:
                state["step"] = torch.tensor(step, dtype=torch.float32)
        return result

    load_state_dict._kd_own_steps = True
    cls.load_state_dict = load_state_dict


# --------------------------------------------------------------------------- dataset index files
INDEX_TMP_SUFFIX = ".kdtmp"  # an index file being written; renamed to its final name when done


class _AtomicIndexNumpy:
    """``numpy`` as megatron-core's dataset modules see it, except ``save``: the file is
    written under a temporary name beside the final one (flocked while it is written), fsynced,
    then renamed, so the final name only ever holds a complete file."""

    def __init__(self, numpy):
        self._numpy = numpy

    def __getattr__(self, name):
        return getattr(self._numpy, name)

    def save(self, file, arr, allow_pickle=True, **kwargs):
        import fcntl
        import os
        import uuid

        if not isinstance(file, (str, os.PathLike)):
            return self._numpy.save(file, arr, allow_pickle=allow_pickle, **kwargs)
        path = os.fspath(file)
        path = path if path.endswith(".npy") else path + ".npy"  # what numpy.save does
        tmp = f"{path}.{uuid.uuid4().hex[:8]}{INDEX_TMP_SUFFIX}"
        try:
            with open(tmp, "wb") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)  # held until closed: a live writer's file
                self._numpy.save(fh, arr, allow_pickle=allow_pickle, **kwargs)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        with contextlib.suppress(OSError):  # the rename itself survives a node failure
            dir_fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)


def drop_torn_index_files(cache, description_hash: str) -> list[str]:
    """Delete, from ``cache``, the index files of one dataset (``<hash>-*.npy``) that do not
    load (truncated by a kill during an in-place write: older kdlaunch, or another writer) and
    the temporary files of writers that died; megatron-core then finds the set incomplete and
    rebuilds it. A temporary file still flocked belongs to a live writer and is kept. Returns
    the deleted paths."""
    import fcntl
    from pathlib import Path

    import numpy

    root = Path(cache)
    if not root.is_dir():
        return []
    gone = []
    for path in sorted(root.glob(f"{description_hash}-*.npy")):
        try:
            numpy.load(path, mmap_mode="r", allow_pickle=False)
            continue
        except (ValueError, OSError, EOFError):
            pass
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            gone.append(str(path))
    for path in sorted(root.glob(f"{description_hash}-*{INDEX_TMP_SUFFIX}")):
        try:
            with open(path, "rb") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)  # fails while its writer lives
                path.unlink()
                gone.append(str(path))
        except OSError:
            continue
    return gone


def atomic_index_writes() -> None:
    """megatron-core's GPTDataset and BlendedDataset ``numpy.save`` their index files under
    the final names, and the next start takes the set as built once every name exists: a kill
    midway through the last file of a set (node failure, SLURM's SIGKILL after KillWait) leaves
    a truncated file that every later start loads and dies on (``mmap length is greater than
    file size``). Their ``numpy.save`` becomes write-to-temporary-then-rename, and before a
    dataset looks at its cache, the rank that builds drops what does not load (files torn
    before this fix, dead writers' temporary files) so the set is rebuilt."""
    import torch
    from megatron.core.datasets import blended_dataset, gpt_dataset

    for module, cls, method in (
        (gpt_dataset, gpt_dataset.GPTDataset, "_build_document_sample_shuffle_indices"),
        (blended_dataset, blended_dataset.BlendedDataset, "_build_indices"),
    ):
        if not isinstance(module.numpy, _AtomicIndexNumpy):
            module.numpy = _AtomicIndexNumpy(module.numpy)
        original = getattr(cls, method)
        if getattr(original, "_kd_checked", False):
            continue

        def checked(self, *args, _original=original, **kwargs):
            cache = getattr(self.config, "path_to_cache", None)
            builder = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
            if cache and builder:
                for path in drop_torn_index_files(cache, self.unique_description_hash):
                    # print: Bridge's logging setup filters every WARNING record out by then
                    print(f"kd.compat: deleted a torn dataset index file (rebuilt): {path}",
                          flush=True)
            return _original(self, *args, **kwargs)

        functools.update_wrapper(checked, original)
        checked._kd_checked = True
        setattr(cls, method, checked)
