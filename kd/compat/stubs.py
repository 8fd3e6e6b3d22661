"""Import stubs: modules that upstream imports at top level but our stages never call
(Transformer Engine in Bridge's LoRA modules, triton in megatron-core's inference kernels,
pulp/datasets/energon in ModelOpt and Bridge builders). Installed by ``kd.compat``."""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.abc
import importlib.machinery
import sys
import types

TE_TARGETS = frozenset({"megatron.bridge.peft.lora_layers", "megatron.bridge.peft.lora"})
TRITON_TARGETS = frozenset(
    {
        "megatron.core.inference.contexts.attention_context.triton.tensor_ops",
        "megatron.core.inference.contexts.fused_kv_append_kernel",
        "megatron.core.transformer.custom_layers.batch_invariant_kernels",
    }
)
# megatron-core modules whose try/except TE probes must run before the TE stub appears.
TE_PROBES = (
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
OPTIONAL_ROOTS = ("datasets", "pulp", "megatron.energon")
# modules on the distill/export/eval import path that import an optional root at top level
OPTIONAL_IMPORTERS = (
    "modelopt.torch.puzzletron.mip.mip_with_multi_layer_replacements",
    "megatron.bridge.data.builders.hf_dataset",
)


def install_te_stub() -> None:
    sys.meta_path.insert(0, _ScopedStubFinder(TE_TARGETS, _te_stub_modules, TE_PROBES))


def install_triton_stub() -> None:
    sys.meta_path.insert(0, _ScopedStubFinder(TRITON_TARGETS, _triton_stub_modules))


def install_optional_stubs() -> None:
    # appended: consulted only after every real finder failed
    if not any(isinstance(f, _OptionalStubFinder) for f in sys.meta_path):
        sys.meta_path.append(_OptionalStubFinder())


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
        if any(name == r or name.startswith(r + ".") for r in OPTIONAL_ROOTS):
            return importlib.machinery.ModuleSpec(name, _OptionalStubLoader(), is_package=True)
        return None
