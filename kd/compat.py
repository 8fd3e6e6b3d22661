"""The one compatibility layer: lets the production code path run where the NeMo container's
pieces are missing (no Transformer Engine, no triton, no CUDA, pip-installed megatron-core).

Call ``activate(device)`` once per process, before anything imports ``megatron.bridge``.
Each part switches itself on only where needed, so in the NeMo container (TE, triton, CUDA,
source-built megatron-core) only the version-gated Megatron-Bridge 0.3.x fixes remain:

- import stubs: megatron-bridge 0.3.1 hard-imports ``transformer_engine.pytorch`` in
  ``peft/lora*.py``; megatron-core 0.16.1 hard-imports ``triton`` in three inference-kernel
  modules. A stub is visible in ``sys.modules`` only while those modules execute, so
  megatron-core's own ``HAVE_TE`` probes keep their real value. Optional packages the
  distill path never uses (datasets, pulp, megatron.energon) get import-only stubs that real
  installs always win over.
- Bridge fixes (every device): ``compile_helpers()`` runs ``make`` in a directory the
  megatron-core wheel ships without a Makefile (skipped when the prebuilt helpers import);
  ``train.exit_signal_handler`` builds a ``DistributedSignalHandler`` but never enters it,
  so the signal is never trapped (fixed upstream in Megatron-Bridge PR #3823).
- CPU patches: megatron-core/bridge hard-code ``cuda`` in device arguments, RNG tracking,
  the default causal mask, streams, memory stats, grad clipping and the CUDA assertion of
  ``initialize_megatron``.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import types

_TE_TARGETS = frozenset({"megatron.bridge.peft.lora_layers", "megatron.bridge.peft.lora"})
_TRITON_TARGETS = frozenset(
    {
        "megatron.core.inference.contexts.attention_context.triton.tensor_ops",
        "megatron.core.inference.contexts.fused_kv_append_kernel",
        "megatron.core.transformer.custom_layers.batch_invariant_kernels",
    }
)
# megatron-core modules whose try/except TE probes must run before the TE stub appears.
_TE_PROBES = (
    "megatron.core.parallel_state",
    "megatron.core.utils",
    "megatron.core.tensor_parallel",
    "megatron.core.extensions.transformer_engine",
    "megatron.core.transformer.moe.moe_utils",
    "megatron.core.transformer.moe.router",
    "megatron.core.transformer.mlp",
    "megatron.core.transformer.multi_latent_attention",
    "megatron.core.dist_checkpointing",
)
_OPTIONAL_ROOTS = ("datasets", "pulp", "megatron.energon")
_STATE: dict[str, bool] = {}


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


def activate(device: str = "auto") -> dict[str, bool]:
    """Apply what this process needs (idempotent). Returns which parts are active."""
    device = resolve_device(device)
    install_import_stubs()
    if "bridge" not in _STATE:
        _STATE["compile_helpers_fix"] = _fix_compile_helpers()
        _STATE["signal_handler_fix"] = _fix_signal_handler()
        _STATE["bridge"] = True
    if device == "cpu" and "cpu" not in _STATE:
        _apply_cpu_patches()
        _STATE["cpu"] = True
    return dict(_STATE)


# --------------------------------------------------------------------------- import stubs
def install_import_stubs() -> None:
    """Only the import stubs (TE, triton, packages ModelOpt imports but these stages never
    use, e.g. pulp): enough for data prep, export builders and AnyModel loading in lm-eval on
    images that lack them. Idempotent; a real installed package always wins."""
    if "stubs" not in _STATE:
        _STATE["te_stub"] = _install_te_stub()
        _STATE["triton_stub"] = _install_triton_stub()
        _install_optional_stubs()
        _STATE["stubs"] = True



class _ScopedStubLoader(importlib.abc.Loader):
    """Runs the wrapped loader with stub modules present in sys.modules, then removes them."""

    def __init__(self, loader, make_stubs, before=()):
        self._loader, self._make_stubs, self._before = loader, make_stubs, before

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        for name in self._before:
            importlib.import_module(name)
        stubs = {k: v for k, v in self._make_stubs().items() if k not in sys.modules}
        sys.modules.update(stubs)
        try:
            self._loader.exec_module(module)
        finally:
            for name in stubs:
                sys.modules.pop(name, None)


class _ScopedStubFinder(importlib.abc.MetaPathFinder):
    def __init__(self, targets, make_stubs, before=()):
        self._targets, self._make_stubs, self._before = targets, make_stubs, before

    def find_spec(self, name, path, target=None):
        if name not in self._targets:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _ScopedStubLoader(spec.loader, self._make_stubs, self._before)
        return spec


def _install_te_stub() -> bool:
    if have_te():
        return False
    sys.meta_path.insert(0, _ScopedStubFinder(_TE_TARGETS, _te_stub_modules, _TE_PROBES))
    return True


def _install_triton_stub() -> bool:
    if has_module("triton"):
        return False
    sys.meta_path.insert(0, _ScopedStubFinder(_TRITON_TARGETS, _triton_stub_modules))
    return True


def _te_stub_modules() -> dict[str, types.ModuleType]:
    import torch

    class _Missing(torch.nn.Module):
        def __init__(self, *args, **kwargs):
            raise RuntimeError("transformer_engine is not installed (kd.compat stub)")

    te = types.ModuleType("transformer_engine")
    te.__path__ = []
    te.__version__ = "0.0.0+kdstub"
    pt = types.ModuleType("transformer_engine.pytorch")
    pt.__path__ = []
    ops = types.ModuleType("transformer_engine.pytorch.ops")
    for name in (
        "Linear",
        "LayerNormLinear",
        "LayerNormMLP",
        "GroupedLinear",
        "TransformerLayer",
        "DotProductAttention",
        "LayerNorm",
        "RMSNorm",
    ):
        setattr(pt, name, type(name, (_Missing,), {}))
    for name in (
        "Sequential",
        "Linear",
        "LayerNorm",
        "RMSNorm",
        "Quantize",
        "MakeExtraOutput",
        "Dropout",
        "ConstantScale",
        "AddExtraInput",
    ):
        setattr(ops, name, type(name, (_Missing,), {}))
    pt.ops = ops
    pt.fp8_autocast = lambda *a, **k: contextlib.nullcontext()
    te.pytorch = pt
    return {te.__name__: te, pt.__name__: pt, ops.__name__: ops}


class _AnyAttr:
    """triton.language placeholder: any attribute exists; calling one fails loudly."""

    def __getattr__(self, name):
        return _AnyAttr()

    def __call__(self, *args, **kwargs):
        raise RuntimeError("triton is not installed (kd.compat stub)")


def _triton_stub_modules() -> dict[str, types.ModuleType]:
    def decorator(fn=None, **kwargs):
        return fn if fn is not None else (lambda f: f)

    tr = types.ModuleType("triton")
    tr.__path__ = []
    tr.jit = decorator
    tr.autotune = lambda *a, **k: lambda f: f
    tr.heuristics = lambda *a, **k: lambda f: f
    tr.Config = lambda *a, **k: None
    tr.cdiv = lambda a, b: (a + b - 1) // b
    tr.next_power_of_2 = lambda n: 1 << (int(n) - 1).bit_length()
    tl = types.ModuleType("triton.language")
    tl.__getattr__ = lambda name: _AnyAttr()
    tr.language = tl
    return {"triton": tr, "triton.language": tl}


class _OptionalStubLoader(importlib.abc.Loader):
    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__ = []
        module.__getattr__ = functools.partial(_optional_attr, spec.name, {})
        return module

    def exec_module(self, module):
        if module.__name__ == "megatron.energon.flavors.base_dataset":
            from dataclasses import dataclass

            # subclasses add non-default dataclass fields, so the base must be a field-less dataclass
            module.Sample = dataclass(type("Sample", (), {}))


def _optional_attr(modname: str, cache: dict, name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    if name not in cache:
        if name[:1].isupper():  # classes: constructible and subscriptable placeholders
            cache[name] = type(
                name,
                (),
                {
                    "__init__": lambda self, *a, **k: None,
                    "__class_getitem__": classmethod(lambda c, i: c),
                    "__module__": modname,
                },
            )
        else:

            def missing(*args, _name=f"{modname}.{name}", **kwargs):
                raise ImportError(f"{_name}: optional package not installed (kd.compat stub)")

            cache[name] = missing
    return cache[name]


class _OptionalStubFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if any(name == r or name.startswith(r + ".") for r in _OPTIONAL_ROOTS):
            return importlib.machinery.ModuleSpec(name, _OptionalStubLoader(), is_package=True)
        return None


def _install_optional_stubs() -> None:
    # appended: consulted only after every real finder failed
    if not any(isinstance(f, _OptionalStubFinder) for f in sys.meta_path):
        sys.meta_path.append(_OptionalStubFinder())


# --------------------------------------------------------------------------- Bridge fixes


def _fix_compile_helpers() -> bool:
    import megatron.core.datasets as mcd
    from megatron.bridge.training import initialize

    if os.path.isfile(os.path.join(os.path.dirname(mcd.__file__), "Makefile")):
        return False
    original = initialize.compile_helpers

    def compile_helpers_if_missing():
        try:
            importlib.import_module("megatron.core.datasets.helpers_cpp")
        except ImportError:
            original()

    initialize.compile_helpers = compile_helpers_if_missing
    return True


def _fix_signal_handler() -> bool:
    from megatron.bridge.training.state import GlobalState

    original = GlobalState._set_signal_handler
    if getattr(original, "_kd_fixed", False):
        return False

    def set_signal_handler(self):
        original(self)
        handler, train = self._signal_handler, getattr(self.cfg, "train", None)
        if handler is None or train is None or not train.exit_signal_handler:
            return
        if handler.original_handler is None:  # built but never entered: trap the signal now
            handler.__enter__()

    set_signal_handler._kd_fixed = True
    GlobalState._set_signal_handler = set_signal_handler
    return True


# --------------------------------------------------------------------------- CPU patches


def _is_cuda(device) -> bool:
    import torch

    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    return isinstance(device, int) and not isinstance(device, bool)  # bare ordinal = cuda:N


def _apply_cpu_patches() -> None:
    import torch

    _patch_torch_cuda(torch)
    _patch_megatron_core(torch)
    _patch_megatron_bridge(torch)


def _patch_torch_cuda(torch) -> None:
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
    _patch_gloo_scatter(torch)


def _patch_gloo_scatter(torch) -> None:
    """gloo sends a non-contiguous CPU tensor's raw storage: the TP shards of row-parallel
    weights (column slices) would arrive scrambled. On GPU ``.to("cuda")`` copies them."""
    original = torch.distributed.scatter

    def scatter(tensor, scatter_list=None, *args, **kwargs):
        if scatter_list:
            scatter_list = [t.contiguous() for t in scatter_list]
        return original(tensor, scatter_list, *args, **kwargs)

    torch.distributed.scatter = scatter


def _patch_megatron_core(torch) -> None:
    from megatron.core.fusions import fused_softmax
    from megatron.core.optimizer import clip_grads, optimizer
    from megatron.core.tensor_parallel import random as mrandom
    from megatron.core.transformer import utils as tutils

    mrandom._get_cuda_rng_state = lambda *a, **k: torch.get_rng_state()
    mrandom._set_cuda_rng_state = lambda new_state, *a, **k: torch.set_rng_state(new_state)

    @functools.lru_cache
    def get_default_causal_mask(sq: int):
        return torch.triu(torch.ones(sq, sq, device="cpu"), diagonal=1).bool()

    tutils.get_default_causal_mask = get_default_causal_mask
    fused_softmax.get_default_causal_mask = get_default_causal_mask

    def clip_grad_by_total_norm_fp32(parameters, max_norm, total_norm, use_decoupled_grad=False):
        # upstream asserts grads are torch.cuda.FloatTensor
        params = [parameters] if isinstance(parameters, torch.Tensor) else parameters
        attr = "decoupled_grad" if use_decoupled_grad else "grad"
        grads = [getattr(p, attr).detach() for p in params if getattr(p, attr, None) is not None]
        coeff = max_norm / (total_norm + 1.0e-6)
        if coeff < 1.0 and grads:
            torch._foreach_mul_(grads, coeff)

    clip_grads.clip_grad_by_total_norm_fp32 = clip_grad_by_total_norm_fp32
    optimizer.clip_grad_by_total_norm_fp32 = clip_grad_by_total_norm_fp32
    _patch_distributed_optimizer(torch)


def _patch_distributed_optimizer(torch) -> None:
    """Megatron's DistributedOptimizer sorts parameters by ``param.type()`` and accepts only
    ``torch.cuda.*Tensor`` names: on CPU, its constructor sees the CUDA names of CPU tensors."""
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


def _patch_megatron_bridge(torch) -> None:
    from megatron.bridge.training import initialize, setup

    initialize._warmup_jit_function = lambda *a, **k: None  # allocates on device="cuda"
    original_seed = initialize._set_random_seed

    def set_random_seed(seed, *args, **kwargs):
        # upstream skips the model-parallel RNG tracker without GPUs, but attention forks it
        original_seed(seed, *args, **kwargs)
        from megatron.core import tensor_parallel

        if not tensor_parallel.get_cuda_rng_tracker().is_initialized():
            tensor_parallel.model_parallel_cuda_manual_seed(seed)

    initialize._set_random_seed = set_random_seed
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
