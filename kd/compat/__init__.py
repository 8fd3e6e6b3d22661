"""The one compatibility layer: lets the production code path run where the NeMo container's
pieces are missing (no Transformer Engine, no triton, no CUDA, pip-installed megatron-core).

Every workaround is one entry of ``WORKAROUNDS``: what it fixes and why, the distribution and
version range it was verified for, where it is needed (no TE, no triton, CPU, ...) and, where
that can be detected, a probe that tells whether the upstream bug is still there
(``tests/kd/test_compat.py`` fails once a probe says the bug is gone, so the workaround can be
deleted). Outside its version range a workaround is skipped with a log line, never applied
blindly to a library it was not checked against.

Call ``activate(device)`` once per process, before anything imports ``megatron.bridge``;
``install_import_stubs()`` alone is enough for data prep, export builders and lm-eval.
``summary()`` is the one line the distill log prints; ``python -m kd.compat [--device cpu]
[--probe]`` prints the table for this machine.

In the NeMo container (TE, triton, CUDA, source-built megatron-core) only the Megatron-Bridge
fixes whose bug is in the container's Bridge version stay active.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

from kd.compat import patches, probes, scoped, stubs  # noqa: F401  scoped: call-site API

log = logging.getLogger("kd.compat")


# --------------------------------------------------------------------------- the registry
@dataclass(frozen=True)
class Workaround:
    name: str
    package: str  # the distribution whose behaviour is worked around
    versions: str  # the range it was verified for, e.g. ">=0.3.0,<0.4"
    why: str
    stage: str  # "stubs" (before megatron imports) | "bridge" | "cpu" (after) | "scoped" (per call)
    needed_here: Callable[[str], bool]  # device -> does this machine need it
    apply: Callable[[], None]
    bug_present: Callable[[], bool] | None = None  # upstream probe; None: see `undetectable`
    undetectable: str = ""


def installed_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _release(version: str) -> tuple[int, ...]:
    match = re.match(r"\d+(?:\.\d+)*", version.strip())
    if not match:
        raise ValueError(f"not a version: {version!r}")
    return tuple(int(p) for p in match.group(0).split("."))


def version_in(version: str, spec: str) -> bool:
    """``version_in("0.3.1", ">=0.3.0,<0.4")``; compares release numbers only."""
    have = _release(version)
    for clause in filter(None, (c.strip() for c in spec.split(","))):
        op, want = re.match(r"(>=|<=|==|!=|>|<)\s*(.+)", clause).groups()
        width = max(len(have), len(_release(want)))
        a = have + (0,) * (width - len(have))
        b = _release(want) + (0,) * (width - len(_release(want)))
        ok = {
            ">=": a >= b,
            "<=": a <= b,
            "==": a == b,
            "!=": a != b,
            ">": a > b,
            "<": a < b,
        }[op]
        if not ok:
            return False
    return True


_STATE: dict[str, str] = {}  # workaround name -> "active" | "skipped: why" | "not needed: why"


def decide(wa: Workaround, device: str) -> tuple[bool, str]:
    """(apply it?, why) for one workaround on this machine."""
    version = installed_version(wa.package)
    if version is None:
        return False, f"not needed: {wa.package} not installed"
    if not wa.needed_here(device):
        return False, "not needed here"
    if not version_in(version, wa.versions):
        return False, f"skipped: {wa.package} {version} outside {wa.versions}"
    return True, "active"


def apply_workarounds(workarounds, device: str) -> None:
    for wa in workarounds:
        if wa.name in _STATE:
            continue
        ok, why = decide(wa, device)
        if ok:
            wa.apply()
        elif why.startswith("skipped"):
            log.warning("compat: %s %s (%s); revisit it", wa.name, why, wa.why)
        _STATE[wa.name] = why


def install_import_stubs() -> None:
    """Only the import stubs (TE, triton, packages ModelOpt imports but these stages never
    use, e.g. pulp): enough for data prep, export builders and AnyModel loading in lm-eval on
    images that lack them. Idempotent; a real installed package always wins."""
    apply_workarounds([w for w in WORKAROUNDS if w.stage == "stubs"], "any")


def activate(device: str = "auto") -> dict[str, str]:
    """Apply what this process needs (idempotent). Returns each workaround's state."""
    device = resolve_device(device)
    install_import_stubs()
    apply_workarounds([w for w in WORKAROUNDS if w.stage == "bridge"], device)
    apply_workarounds([w for w in WORKAROUNDS if w.stage == "cpu"], device)
    return dict(_STATE)


def enabled(name: str, device: str = "any") -> bool:
    """For the scoped workarounds (``kd.compat.scoped``): apply it around this call?
    ``device`` matters only to those needed on one device (e.g. CPU)."""
    if name not in _STATE:
        wa = next(w for w in WORKAROUNDS if w.name == name)
        ok, why = decide(wa, device)
        if why.startswith("skipped"):
            log.warning("compat: %s %s (%s); revisit it", wa.name, why, wa.why)
        _STATE[name] = why
    return _STATE[name] == "active"


def active() -> list[str]:
    return [name for name, state in _STATE.items() if state == "active"]


def summary() -> str:
    """One line for the logs: the active set, and what was skipped for its version."""
    skipped = [f"{n} ({s})" for n, s in _STATE.items() if s.startswith("skipped")]
    line = f"compat: {len(active())} active: {', '.join(active()) or 'none'}"
    return line + (f"; {'; '.join(skipped)}" if skipped else "")


def has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def have_te() -> bool:
    return has_module("transformer_engine")


def resolve_device(device: str) -> str:
    """ "auto" -> "cuda" when a GPU is visible, else "cpu"."""
    if device not in ("auto", "cuda", "cpu"):
        raise ValueError(f"device must be 'auto', 'cuda' or 'cpu', got {device!r}")
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _nothing() -> None:  # scoped workarounds act at their call sites (kd.compat.scoped)
    return None


def _on_cpu(device: str) -> bool:
    return device == "cpu"


_BRIDGE = "megatron-bridge"
_MCORE = "megatron-core"
_BRIDGE_03 = ">=0.3.0,<0.4"
_MCORE_016 = ">=0.16.0,<0.17"

WORKAROUNDS: tuple[Workaround, ...] = (
    Workaround(
        "te-import-stub",
        _BRIDGE,
        _BRIDGE_03,
        "peft/lora*.py import transformer_engine.pytorch at top level; the stub is visible "
        "only while those two modules execute, so megatron-core's HAVE_TE probes stay true",
        "stubs",
        lambda device: not have_te(),
        stubs.install_te_stub,
        lambda: all(probes.top_level_imports(m, "transformer_engine") for m in stubs.TE_TARGETS),
    ),
    Workaround(
        "triton-import-stub",
        _MCORE,
        _MCORE_016,
        "three inference-kernel modules import triton at top level",
        "stubs",
        lambda device: not has_module("triton"),
        stubs.install_triton_stub,
        lambda: all(probes.top_level_imports(m, "triton") for m in stubs.TRITON_TARGETS),
    ),
    Workaround(
        "optional-import-stubs",
        "nvidia-modelopt",
        ">=0.47.0,<0.48",
        "ModelOpt's puzzletron MIP and Bridge's HF dataset builder import pulp / datasets / "
        "megatron.energon at top level; the distill path never calls them",
        "stubs",
        lambda device: not all(has_module(r) for r in stubs.OPTIONAL_ROOTS),
        stubs.install_optional_stubs,
        lambda: (
            probes.top_level_imports(stubs.OPTIONAL_IMPORTERS[0], "pulp")
            or probes.top_level_imports(stubs.OPTIONAL_IMPORTERS[1], "datasets")
        ),
    ),
    Workaround(
        "bridge-compile-helpers",
        _MCORE,
        _MCORE_016,
        "Bridge's compile_helpers() runs make in megatron/core/datasets, which the pip wheel "
        "ships without a Makefile; use the prebuilt helpers_cpp when it imports",
        "bridge",
        lambda device: probes.mcore_makefile_missing(),
        patches.fix_compile_helpers,
        probes.mcore_makefile_missing,
    ),
    Workaround(
        "bridge-exit-signal-handler",
        _BRIDGE,
        _BRIDGE_03,
        "GlobalState builds the DistributedSignalHandler but never enters it, so the exit "
        "signal (SLURM's USR2) is never trapped (fixed upstream in Megatron-Bridge PR #3823)",
        "bridge",
        lambda device: True,
        patches.fix_signal_handler,
        lambda: (
            "__enter__"
            not in probes.function_source(
                "megatron.bridge.training.state", "_set_signal_handler", "GlobalState"
            )
        ),
    ),
    Workaround(
        "cpu-torch-cuda-shims",
        "torch",
        ">=2.6",
        "megatron-core and Bridge call torch.cuda (current_device, streams, events, RNG, "
        "memory stats, .cuda()) and pass device='cuda' all over; on CPU they become no-ops/cpu",
        "cpu",
        _on_cpu,
        patches.patch_torch_cuda,
        None,
        "not one upstream bug but megatron-core's CUDA-only design, at dozens of call sites; "
        "the CPU tiers (tests/kd, tests/e2e) fail without it, which is its test",
    ),
    Workaround(
        "cpu-gloo-scatter-contiguous",
        "torch",
        ">=2.6,<2.15",
        "gloo scatter sends a non-contiguous CPU tensor's raw storage, so TP shards of "
        "row-parallel weights (column slices) arrive scrambled; on GPU .to('cuda') copies them",
        "cpu",
        _on_cpu,
        patches.patch_gloo_scatter,
        probes.gloo_scatter_scrambles,
    ),
    Workaround(
        "cpu-mcore-rng-state",
        _MCORE,
        _MCORE_016,
        "tensor_parallel.random reads/writes the CUDA generator's state",
        "cpu",
        _on_cpu,
        patches.patch_rng_state,
        lambda: (
            "torch.cuda"
            in probes.function_source("megatron.core.tensor_parallel.random", "_get_cuda_rng_state")
        ),
    ),
    Workaround(
        "cpu-mcore-causal-mask",
        _MCORE,
        _MCORE_016,
        "get_default_causal_mask allocates on device='cuda'",
        "cpu",
        _on_cpu,
        patches.patch_causal_mask,
        lambda: (
            'device="cuda"'
            in probes.function_source("megatron.core.transformer.utils", "get_default_causal_mask")
        ),
    ),
    Workaround(
        "cpu-mcore-grad-clip",
        _MCORE,
        _MCORE_016,
        "clip_grad_by_total_norm_fp32 asserts every grad is a torch.cuda.FloatTensor",
        "cpu",
        _on_cpu,
        patches.patch_grad_clip,
        lambda: (
            "torch.cuda.FloatTensor"
            in probes.function_source(
                "megatron.core.optimizer.clip_grads", "clip_grad_by_total_norm_fp32"
            )
        ),
    ),
    Workaround(
        "cpu-mcore-distributed-optimizer",
        _MCORE,
        _MCORE_016,
        "DistributedOptimizer accepts only parameters whose type() is a torch.cuda.* name",
        "cpu",
        _on_cpu,
        patches.patch_distributed_optimizer,
        lambda: "torch.cuda.FloatTensor"
        in probes.source_text("megatron.core.optimizer.distrib_optimizer"),
    ),
    Workaround(
        "mcore-distributed-optimizer-fresh-step",
        _MCORE,
        _MCORE_016,
        "without Apex or TE, DistributedOptimizer.state_dict() asserts one Adam 'step' over "
        "the parameter states; loading a checkpoint calls it on a fresh optimizer, which has "
        "none, so every resume with train.distributed_optimizer on dies "
        "(AssertionError at distrib_optimizer.py:642); a fresh optimizer reports step 0",
        "bridge",
        lambda device: not probes.have_apex_or_te_optimizer(),
        patches.fix_distributed_optimizer_fresh_state,
        probes.distributed_optimizer_needs_steps,
    ),
    Workaround(
        "mcore-distributed-optimizer-shared-step",
        _MCORE,
        _MCORE_016,
        "without Apex or TE, DistributedOptimizer.load_state_dict() gives every parameter's "
        "Adam state one shared 'step' tensor (torch's Adam increments it in place once per "
        "parameter), and the dp_reshardable parameter-state copy then overwrites it with the "
        "loading template's value: after a resume the bias correction is wrong and the losses "
        "leave the uninterrupted run's; each parameter gets its own tensor holding the "
        "checkpoint's step",
        "bridge",
        lambda device: not probes.have_apex_or_te_optimizer(),
        patches.fix_distributed_optimizer_shared_step,
        probes.distributed_optimizer_shares_step,
    ),
    Workaround(
        "cpu-bridge-warmup-jit",
        _BRIDGE,
        _BRIDGE_03,
        "_warmup_jit_function allocates its warm-up tensors on device='cuda'",
        "cpu",
        _on_cpu,
        patches.patch_warmup_jit,
        lambda: (
            'device="cuda"'
            in probes.function_source("megatron.bridge.training.initialize", "_warmup_jit_function")
        ),
    ),
    Workaround(
        "cpu-bridge-rng-tracker",
        _BRIDGE,
        _BRIDGE_03,
        "_set_random_seed skips the model-parallel RNG tracker without GPUs, but attention "
        "dropout forks it",
        "cpu",
        _on_cpu,
        patches.patch_rng_tracker,
        lambda: (
            "torch.cuda.device_count() > 0"
            in probes.function_source("megatron.bridge.training.initialize", "_set_random_seed")
        ),
    ),
    Workaround(
        "cpu-bridge-initialize-no-cuda",
        _BRIDGE,
        _BRIDGE_03,
        "setup calls initialize_megatron without allow_no_cuda, which then asserts CUDA",
        "cpu",
        _on_cpu,
        patches.patch_initialize_no_cuda,
        lambda: "allow_no_cuda=True" not in probes.source_text("megatron.bridge.training.setup"),
    ),
    Workaround(
        "bridge-export-shard-dirs",
        _BRIDGE,
        _BRIDGE_03,
        "export_ckpt writes nested shard names (AnyModel subblocks_safetensors/...) without "
        "creating their parent directories",
        "scoped",
        lambda device: True,
        _nothing,
        None,
        "inside Bridge's safetensors writer, reached only by a real AnyModel export; "
        "tests/kd/test_export.py::test_export_anymodel_keeps_layout runs it",
    ),
    Workaround(
        "bridge-export-rendezvous",
        _BRIDGE,
        _BRIDGE_03,
        "export_ckpt starts its gloo group from MASTER_ADDR/PORT, which inside a multi-task "
        "SLURM job point at the job-wide rendezvous",
        "scoped",
        lambda device: True,
        _nothing,
        None,
        "needs a SLURM job's environment; the SLURM end-to-end tests export inside one",
    ),
    Workaround(
        "cpu-bridge-gloo-barrier",
        _BRIDGE,
        _BRIDGE_03,
        "Bridge's distributed start-up ends with barrier(device_ids=[local rank]) whatever the "
        "backend: older torch rejects device_ids on gloo and a CUDA build makes them CUDA "
        "devices (torch 2.13's CPU wheel accepts them); on CPU kd.distill starts the gloo "
        "group first, so Bridge skips its start-up",
        "scoped",
        _on_cpu,
        _nothing,
        lambda: probes.barrier_passes_device_ids_unguarded(
            "megatron.bridge.training.initialize", "_initialize_distributed"
        ),
    ),
    Workaround(
        "mcore-checkpoint-writer-signal",
        _MCORE,
        _MCORE_016,
        "torch_dist saves report through a Manager process spawned on the first save with "
        "default signal dispositions: SLURM's exit signal (sent to every process of the step) "
        "kills it and the save it asked for fails with BrokenPipeError; kd.distill starts it "
        "before training with the exit signal ignored",
        "scoped",
        lambda device: True,
        _nothing,
        probes.spawned_manager_keeps_default_signals,
    ),
    Workaround(
        "bridge-save-hook",
        _BRIDGE,
        _BRIDGE_03,
        "Bridge has no hook around its checkpoint saves and submitit only logs SIGTERM; "
        "kd.distill's kill path (no save starts after SIGTERM) wraps "
        "train.save_checkpoint_and_time, the name Bridge's loop looks up at each save",
        "scoped",
        lambda device: True,
        _nothing,
        None,
        "a missing feature, not a bug a probe can see in the source; "
        "tests/reliability/test_checkpoints.py's SIGTERM tests cover the wrapped save and "
        "tests/kd/test_compat.py checks that Bridge's loop still calls the wrapped name",
    ),
    Workaround(
        "mcore-index-cache-in-place-writes",
        _MCORE,
        _MCORE_016,
        "GPTDataset and BlendedDataset write their index files in place (numpy.save under the "
        "final name): a job sharing path_to_cache (data.index_cache; sweep members with one "
        "blend) can load a file another job is still writing; rank 0 builds under an flock on "
        "the cache directory (kd.compat.scoped.lock_index_builds)",
        "scoped",
        lambda device: True,
        _nothing,
        probes.index_files_written_in_place,
    ),
    Workaround(
        "datasets-local-folder-cache",
        "datasets",
        ">=2.14,<6",
        "datasets names the cache entry of a local folder after the folder's name, so a second "
        "local task copy with the same name is served from the first one's cache",
        "scoped",
        lambda device: True,
        _nothing,
        None,
        "needs two same-named local lm-eval task copies through lm-eval's loader; "
        "tests/eval/test_evaluate.py::test_same_named_local_copies_are_not_served_from_each_"
        "others_cache is that case",
    ),
    Workaround(
        "bridge-pp-distillation-eval-shapes",
        _BRIDGE,
        _BRIDGE_03,
        "with pipeline parallelism, ModelOpt's DistillationModel sends student and teacher "
        "activations concatenated between stages; Bridge's training step sizes the pipeline "
        "schedule's buffers for that (get_tensor_shapes_adjust_fn_for_distillation) but "
        "evaluate() does not, so the first validation dies in gloo/NCCL with twice the bytes "
        "expected (fixed upstream in Megatron-Bridge PR #2345)",
        "bridge",
        lambda device: True,
        patches.fix_pp_distillation_eval_shapes,
        probes.eval_schedule_misses_distillation_shapes,
    ),
    Workaround(
        "mcore-rope-fusion-without-te",
        _MCORE,
        _MCORE_016,
        "megatron-core's fused RoPE (apply_rope_fusion) is TE's kernel only: without TE the "
        "slot rope_utils.fused_apply_rotary_pos_emb is None, the config refuses the flag and "
        "RoPE runs as ~10 unfused element-wise kernels per q and k in every layer; the slot is "
        "filled with megatron-core's own unfused RoPE through torch.compile (kd.fused.rope), "
        "used only where train.fuse has rope",
        "bridge",
        lambda device: not have_te(),
        patches.fill_rope_fusion_slot,
        probes.rope_fusion_slot_empty_without_te,
    ),
    Workaround(
        "mcore-index-torn-writes",
        _MCORE,
        _MCORE_016,
        "GPTDataset and BlendedDataset numpy.save their index files under the final names and "
        "a later start takes a set as built once every name exists: a kill while the last file "
        "of a set is written (node failure, SIGKILL after KillWait) leaves it truncated and "
        "every restart dies loading it (mmap length is greater than file size); the files are "
        "written to a temporary name and renamed, and torn ones are deleted (and rebuilt)",
        "bridge",
        lambda device: True,
        patches.atomic_index_writes,
        probes.index_files_written_in_place,
    ),
)
