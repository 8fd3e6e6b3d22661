"""Upstream probes: does the bug a workaround exists for still exist in the installed
library? They read the installed source files (no import), so they see upstream's code even
after a patch replaced the live function. ``tests/kd/test_compat.py`` runs them."""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path


def module_file(module: str) -> Path | None:
    """The installed source file of ``module``, found without importing its parent packages
    (importing them is what some of these bugs break)."""
    parts = module.split(".")
    try:
        spec = importlib.util.find_spec(parts[0])
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if len(parts) == 1:
        return Path(spec.origin) if spec.origin else None
    for root in spec.submodule_search_locations or ():
        base = Path(root, *parts[1:])
        for candidate in (base.with_name(base.name + ".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


def source_text(module: str) -> str:
    path = module_file(module)
    return path.read_text() if path is not None else ""


def top_level_imports(module: str, root: str) -> bool:
    pattern = rf"^(?:import|from)\s+{re.escape(root)}\b"
    return re.search(pattern, source_text(module), flags=re.MULTILINE) is not None


def function_source(module: str, name: str, cls: str | None = None) -> str:
    path = module_file(module)
    if path is None:
        return ""
    text = path.read_text()
    tree = ast.parse(text)
    scope = tree.body
    if cls is not None:
        scope = next(
            (n.body for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls), []
        )
    for node in scope:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return ast.get_source_segment(text, node) or ""
    return ""


def gloo_scatter_scrambles() -> bool:
    """Two gloo processes: does scatter of a non-contiguous tensor deliver the wrong values?"""
    import torch.multiprocessing as mp

    result = mp.get_context("spawn").Manager().dict()
    mp.spawn(_scatter_worker, args=(2, _free_port(), result), nprocs=2, join=True)
    return not result.get("ok", True)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scatter_worker(rank: int, world: int, port: int, result) -> None:
    import torch
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        full = torch.arange(16, dtype=torch.float32).reshape(4, 4)
        out = torch.empty(4, 2)
        shards = list(full.chunk(2, dim=1)) if rank == 0 else None  # column slices
        dist.scatter(out, shards, src=0)
        if rank == 1:
            result["ok"] = bool(torch.equal(out, full[:, 2:]))
    finally:
        dist.destroy_process_group()


def mcore_makefile_missing() -> bool:
    path = module_file("megatron.core.datasets")
    return path is not None and not (path.parent / "Makefile").is_file()


def barrier_passes_device_ids_unguarded(module: str, function: str) -> bool:
    """Does ``function`` call ``barrier(device_ids=...)`` outside any ``if`` that checks for
    CUDA devices (``device_count`` / ``is_available``)?"""
    text = function_source(module, function)
    if not text:
        return False

    def unguarded(node: ast.AST, guarded: bool) -> bool:
        if isinstance(node, ast.If):
            test = ast.unparse(node.test)
            guarded = guarded or "device_count" in test or "is_available" in test
        if (
            isinstance(node, ast.Call)
            and ast.unparse(node.func).endswith("barrier")
            and any(k.arg == "device_ids" for k in node.keywords)
            and not guarded
        ):
            return True
        return any(unguarded(child, guarded) for child in ast.iter_child_nodes(node))

    return unguarded(ast.parse(text), False)


def spawned_manager_keeps_default_signals() -> bool:
    """megatron-core's checkpoint-writer results queue: a spawn-started ``Manager()`` with no
    signal handling of its own."""
    text = function_source(
        "megatron.core.dist_checkpointing.strategies.filesystem_async", "_get_write_results_queue"
    )
    return "Manager()" in text and "signal" not in text


def index_files_written_in_place() -> bool:
    """megatron-core's GPT and blended datasets save their index .npy files straight under their
    final names (``numpy.save(path_to_...)``), with no temporary name and rename."""
    texts = [
        function_source("megatron.core.datasets.gpt_dataset",
                        "_build_document_sample_shuffle_indices", cls="GPTDataset"),
        function_source("megatron.core.datasets.blended_dataset", "_build_indices",
                        cls="BlendedDataset"),
    ]
    return all("numpy.save(path_to_" in t and "os.replace" not in t and "rename" not in t
               for t in texts)


def eval_schedule_misses_distillation_shapes() -> bool:
    """Bridge's training step passes ModelOpt's ``adjust_tensor_shapes_fn`` (student + teacher
    activations between pipeline stages) to the pipeline schedule; its ``evaluate`` does not."""
    train = function_source("megatron.bridge.training.train", "train_step")
    evaluate = function_source("megatron.bridge.training.eval", "evaluate")
    return (
        "get_tensor_shapes_adjust_fn_for_distillation" in train
        and bool(evaluate)
        and "adjust_tensor_shapes_fn" not in evaluate
    )


def distributed_optimizer_needs_steps() -> bool:
    """megatron-core's DistributedOptimizer.state_dict() (no Apex/TE) still asserts exactly one
    Adam ``step`` over the parameter states, which a fresh optimizer does not have."""
    source = function_source(
        "megatron.core.optimizer.distrib_optimizer", "state_dict", "DistributedOptimizer"
    )
    return 'for s in inner_state_dict["state"].values()' in source and "len(steps) == 1" in source


def have_apex_or_te_optimizer() -> bool:
    """Whether megatron-core's optimizers use Apex's or TE's fused Adam (then its ``step``
    lives in the parameter groups and the no-Apex/TE paths are not taken)."""
    import importlib.util

    return any(
        importlib.util.find_spec(name) is not None for name in ("transformer_engine", "apex")
    )


def distributed_optimizer_shares_step() -> bool:
    """DistributedOptimizer.load_state_dict (no Apex/TE) still assigns one ``step`` tensor to
    every parameter's state."""
    source = function_source(
        "megatron.core.optimizer.distrib_optimizer", "load_state_dict", "DistributedOptimizer"
    )
    return 's["step"] = step\n' in source


def rope_fusion_slot_empty_without_te() -> bool:
    """megatron-core still has no fused RoPE of its own: the slot is TE's or None."""
    source = source_text("megatron.core.models.common.embeddings.rope_utils")
    return ("from megatron.core.extensions.transformer_engine import fused_apply_rotary_pos_emb"
            in source and "fused_apply_rotary_pos_emb = None" in source)
