"""Fast without Transformer Engine: the sequence-parallel norm, compiled element-wise work, a
compiled frozen teacher. Import only on compute nodes, after ``kd.compat.activate()``.

- ``Norm``: RMSNorm / LayerNorm for the local and heterogeneous (AnyModel) layer specs
  (``kd.layer_specs``): input_layernorm, pre_mlp_layernorm, q/k layernorm and the model's final
  norm. megatron-core's ``WrappedTorchNorm`` asserts ``not config.sequence_parallel``; all it
  lacks is the ``sequence_parallel`` attribute on its weight, which tells Megatron's
  ``finalize_model_grads`` to all-reduce that gradient over the TP group (each rank saw only
  its slice of the sequence). This one sets it (on ``weight`` and ``bias``), as TE's ``TENorm``
  does. ``fused=True`` runs it through ``torch.compile``; unfused it is ``F.rms_norm`` /
  ``F.layer_norm``, exactly what ``torch.nn.RMSNorm`` / ``LayerNorm`` compute, and it keeps
  their parameter names (``weight``, ``bias``), so checkpoints and HF conversion are unchanged.
- ``rope``: megatron-core's unfused RoPE (``_apply_rotary_pos_emb_bshd``) through
  ``torch.compile``, in the signature of the fused-RoPE slot that only TE fills
  (``rope_utils.fused_apply_rotary_pos_emb``); ``kd.compat`` fills that slot without TE
  (workaround ``mcore-rope-fusion-without-te``) and ``apply_rope_fusion`` switches it on.
- SwiGLU and the residual (bias-dropout-add) need nothing of ours: megatron-core already runs
  them through ``torch.compile`` (``megatron.core.jit.jit_fuser``) when the provider's
  ``bias_activation_fusion`` / ``bias_dropout_fusion`` are on (``provider_flags``).
- ``compile_teacher``: a pre-wrap hook for the teacher's provider that compiles the frozen
  teacher's forward (static shapes; ModelOpt runs it under ``no_grad``).

Which of them a run uses: ``train.fuse`` and ``kd.compile_teacher`` (``kd/sections.py``). With
TE none of this is used (TE's own norm, RoPE and fused kernels; ``kd.distill.configure_provider``).
Every compile goes through ``BACKEND`` (inductor: fused kernels); the CPU tests set it to
``aot_eager`` (the same graph capture and autograd, eager kernels), because inductor's first C++
build on CPU takes ~35 s and every further kernel ~7 s (tests/kd/test_sequence_parallel.py).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from kd.sections import FUSIONS

log = logging.getLogger("kd.fused")
NORMS = ("RMSNorm", "LayerNorm")

BACKEND = "inductor"  # torch.compile's backend for everything here (tests: "aot_eager")
_compiled: dict[str, object] = {}


def compile_fn(fn, **options):
    return torch.compile(fn, backend=BACKEND, **options)


def compiled(name: str, fn, **options):
    """``torch.compile(fn)``, made once per process on its first call (``_compiled`` then holds
    ``name``: the tests read it to see that the fused path ran)."""
    if name not in _compiled:
        _compiled[name] = compile_fn(fn, **options)
    return _compiled[name]


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return F.rms_norm(x, (x.shape[-1],), weight, eps)


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


class Norm(torch.nn.Module):
    """RMSNorm or LayerNorm (``config.normalization``) that works with sequence parallelism.

    Built by megatron-core's ``build_module`` with ``WrappedTorchNorm``'s arguments; ``fused``
    comes from the layer spec (``ModuleSpec(params=...)``)."""

    def __init__(self, config, hidden_size: int, eps: float = 1e-5,
                 persist_layer_norm: bool = False, zero_centered_gamma: bool = False,
                 normalization: str | None = None, fused: bool = False):
        super().__init__()
        kind = config.normalization  # as WrappedTorchNorm: the config decides, not the argument
        if kind not in NORMS:
            raise ValueError(f"kd.fused.Norm: normalization {kind!r} is not supported "
                             f"(choose {' or '.join(NORMS)})")
        if getattr(config, "layernorm_zero_centered_gamma", False) or zero_centered_gamma:
            raise ValueError("kd.fused.Norm: zero-centered gamma is not supported")
        if getattr(config, "memory_efficient_layer_norm", False):  # as WrappedTorchNorm
            raise ValueError("kd.fused.Norm: memory_efficient_layer_norm needs Apex or TE")
        self.kind, self.eps, self.fused = kind, float(eps), bool(fused)
        self.weight = torch.nn.Parameter(torch.ones(hidden_size))
        self.bias = torch.nn.Parameter(torch.zeros(hidden_size)) if kind == "LayerNorm" else None
        sequence_parallel = bool(getattr(config, "sequence_parallel", False))
        for param in (self.weight, self.bias):
            if param is not None:  # finalize_model_grads all-reduces these over TP under SP
                param.sequence_parallel = sequence_parallel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "RMSNorm":
            fn = compiled("rms_norm", rms_norm) if self.fused else rms_norm
            return fn(x, self.weight, self.eps)
        fn = compiled("layer_norm", layer_norm) if self.fused else layer_norm
        return fn(x, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.kind}({self.weight.shape[0]}, eps={self.eps}, fused={self.fused})"


def rope(t: torch.Tensor, freqs: torch.Tensor, interleaved: bool = False) -> torch.Tensor:
    """megatron-core's fused-RoPE slot (``fused_apply_rotary_pos_emb(t, freqs, interleaved=)``,
    [s, b, h, d] input) served by its own unfused formula, compiled into one kernel per pass."""
    from megatron.core.models.common.embeddings.rope_utils import _apply_rotary_pos_emb_bshd

    fn = compiled("rope", _apply_rotary_pos_emb_bshd)
    return fn(t, freqs, rotary_interleaved=interleaved)


def provider_flags(fuse, provider=None) -> dict[str, bool]:
    """The megatron-core config flags that ``train.fuse`` (resolved: names of ``FUSIONS``) sets
    without TE; ``norm`` is a layer-spec argument instead (``kd.layer_specs.pick``). A fusion
    that does not apply to ``provider``'s model stays off (the flag would make megatron-core
    refuse the config or run another kernel): ``rope`` needs plain RoPE (not interleaved, not
    multimodal, not MLA: those need TE's kernel), ``swiglu`` a SwiGLU MLP (SiLU, gated)."""
    unknown = set(fuse) - set(FUSIONS)
    if unknown:
        raise ValueError(f"unknown fusion(s) {sorted(unknown)}: choose from {', '.join(FUSIONS)}")
    rope_ok = swiglu_ok = True
    if provider is not None:
        rope_ok = (getattr(provider, "position_embedding_type", "rope") == "rope"
                   and not getattr(provider, "rotary_interleaved", False)
                   and not getattr(provider, "multi_latent_attention", False)
                   and getattr(provider, "mrope_section", None) is None)
        swiglu_ok = (getattr(provider, "activation_func", None) is F.silu
                     and bool(getattr(provider, "gated_linear_unit", False))
                     and not getattr(provider, "glu_linear_offset", 0.0)
                     and not getattr(provider, "use_te_activation_func", False))
    return {
        "apply_rope_fusion": "rope" in fuse and rope_ok,  # the slot kd.compat fills with rope()
        "bias_activation_fusion": "swiglu" in fuse and swiglu_ok,  # megatron's SwiGLUFunction
        "bias_dropout_fusion": "residual" in fuse,  # megatron's compiled bias-dropout-add
    }


def compile_teacher(model: list) -> list:
    """Pre-wrap hook for the teacher's provider: each model chunk's ``forward`` through
    ``torch.compile`` with static shapes (every micro-batch has the same shape). The teacher is
    frozen and ModelOpt's ``DistillationModel`` calls it under ``no_grad`` (``plugins/megatron.py``
    ``_forward``), so the compiled graph is inference only. Hooks on the chunk itself run outside
    the compiled forward; those on its submodules (ModelOpt's capture of the teacher's logits on
    ``output_layer``) are traced into it, which Dynamo supports (the CPU test trains through
    them: tests/kd/test_sequence_parallel.py). Parts Dynamo cannot trace fall back to eager."""
    for chunk in model:
        chunk.forward = compile_fn(chunk.forward, dynamic=False)
    log.info("kd.fused: teacher forward compiled (%d model chunk(s), backend %s)", len(model),
             BACKEND)
    return model
