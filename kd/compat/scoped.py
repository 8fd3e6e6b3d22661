"""Workarounds that apply around one call rather than to the whole process. Each is registered
in ``kd.compat.WORKAROUNDS`` (stage "scoped") and does nothing outside its version range."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path


def precreate_shard_dirs(source: str | Path, out: Path) -> None:
    """Bridge 0.3.1's export writes nested shard names (AnyModel: ``subblocks_safetensors/x``)
    without creating their parent dirs; create them from the source's index."""
    from kd import compat

    out.mkdir(parents=True, exist_ok=True)
    if not compat.enabled("bridge-export-shard-dirs"):
        return
    index = Path(source) / "model.safetensors.index.json"
    if not index.is_file():
        return
    for shard in set(json.loads(index.read_text())["weight_map"].values()):
        (out / shard).parent.mkdir(parents=True, exist_ok=True)


@contextlib.contextmanager
def single_process_rendezvous():
    """Bridge's export_ckpt starts a gloo group from MASTER_ADDR/PORT: inside a multi-task
    SLURM job it would join the job-wide rendezvous. Hide them so it picks a free local port."""
    from kd import compat

    if not compat.enabled("bridge-export-rendezvous"):
        yield
        return
    saved = {k: os.environ.pop(k) for k in ("MASTER_ADDR", "MASTER_PORT") if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


@contextlib.contextmanager
def private_datasets_cache(active: bool):
    """Local task data gets a fresh, private HF ``datasets`` cache.

    ``datasets`` names the cache entry of a local folder after the folder's *name* and the
    config (``mmlu_data_abstract_algebra_0.0.0_<hash of the builder>``), not its path or
    contents: a second local MMLU copy with the same folder name is silently served from the
    first one's cache (seen: 4 questions per subject evaluated from a 10-question copy).
    """
    from kd import compat

    if not active or not compat.enabled("datasets-local-folder-cache"):
        yield
        return
    import datasets

    previous = datasets.config.HF_DATASETS_CACHE
    with tempfile.TemporaryDirectory(prefix="kd-datasets-") as tmp:
        datasets.config.HF_DATASETS_CACHE = Path(tmp)
        try:
            yield
        finally:
            datasets.config.HF_DATASETS_CACHE = previous


def start_cpu_process_group(device: str, rank: int, world_size: int) -> None:
    """On CPU, start the gloo group before Megatron-Bridge does: Bridge 0.3.1's start-up ends
    with ``barrier(device_ids=[local rank])`` whatever the backend (older torch rejects
    device_ids on gloo, a CUDA build turns them into CUDA devices); with the group already
    started Bridge skips its own start-up."""
    from kd import compat

    if device != "cpu" or not compat.enabled("cpu-bridge-gloo-barrier", device):
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", rank=rank, world_size=world_size)


def shield_checkpoint_writer(sig: int) -> None:
    """Start megatron-core's checkpoint-writer results queue with ``sig`` ignored.

    torch_dist saves report back through a ``multiprocessing.Manager`` process started with the
    *spawn* method on the first save. A spawned process has default signal dispositions, and
    SLURM signals every process of the step: the exit signal that asks Megatron to save would
    kill that manager, and the very save it asked for then fails with BrokenPipeError (seen on
    the SLURM test cluster). An ignored signal stays ignored across exec, so the manager is
    created once here, before training, with ``sig`` set to SIG_IGN.
    """
    from kd import compat

    if not compat.enabled("mcore-checkpoint-writer-signal"):
        return
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    previous = signal.signal(sig, signal.SIG_IGN)
    try:
        filesystem_async._get_write_results_queue()
    finally:
        signal.signal(sig, previous)


def around_bridge_saves(guard: Callable[[], contextlib.AbstractContextManager]) -> None:
    """Run every Megatron-Bridge checkpoint save inside ``guard()`` (kd.distill's kill path:
    no save starts after SIGTERM). Bridge has no hook for that; its training loop looks up
    ``train.save_checkpoint_and_time`` at each save, so that name is wrapped (once)."""
    from kd import compat

    if not compat.enabled("bridge-save-hook"):
        return
    import megatron.bridge.training.train as train_module

    original = train_module.save_checkpoint_and_time
    if getattr(original, "_kd_guarded", False):
        return

    @functools.wraps(original)
    def guarded_save(*args, **kwargs):
        with guard():
            return original(*args, **kwargs)

    guarded_save._kd_guarded = True
    train_module.save_checkpoint_and_time = guarded_save
