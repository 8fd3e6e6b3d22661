"""Transformer layer specs without Transformer Engine, importable by path.

Megatron-Bridge writes ``provider.transformer_layer_spec`` into each checkpoint's
``run_config.yaml`` as an import path, so these must live in an importable module (not in a
closure). Import this module only on compute nodes, after ``kd.compat.activate()``.

- ``local_spec``: megatron-core's local modules (unfused ``DotProductAttention``).
- ``sdpa_local_spec``: the same with ``SDPACoreAttention`` (torch scaled_dot_product_attention:
  flash / memory-efficient kernels on GPU, O(s) memory instead of O(s^2)).
- ``hetero_local_spec`` / ``hetero_sdpa_spec``: Puzzletron AnyModel students (per-layer
  ``block_configs``: no-op attention or MLP, narrowed FFN, per-layer KV heads).

Every norm of these specs (input_layernorm, pre_mlp_layernorm, q/k layernorm, the model's final
norm) is ``kd.fused.Norm`` instead of megatron-core's ``WrappedTorchNorm``, which refuses
sequence parallelism; so the dense specs return the whole block (``TransformerBlockSubmodules``:
the final norm is a block field). ``fuse_norm=True`` compiles those norms (``train.fuse``);
``pick`` then returns a ``functools.partial``, which Megatron-Bridge writes into
``run_config.yaml`` as ``_target_`` + ``_partial_``.
"""

from __future__ import annotations

import functools
import math

import torch.nn.functional as F
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule


class SDPACoreAttention(MegatronModule):
    """Core attention on ``F.scaled_dot_product_attention``; a drop-in for megatron-core's
    ``DotProductAttention`` (same constructor and forward). Supports causal or explicit boolean
    masks (True = masked out, Megatron's convention), GQA and TP; no context parallelism and
    no packed (THD) sequences."""

    def __init__(
        self,
        config,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str,
        attention_dropout: float | None = None,
        softmax_scale: float | None = None,
        cp_comm_type: str | None = None,
        pg_collection=None,
    ):
        super().__init__(config=config)
        if config.context_parallel_size != 1:
            raise ValueError("SDPACoreAttention does not support context parallelism: set cp=1")
        if pg_collection is None:
            from megatron.core.process_groups_config import ProcessGroupCollection

            pg_collection = ProcessGroupCollection.use_mpu_process_groups(required_pgs=["tp"])
        tp = pg_collection.tp.size()
        self.attn_mask_type = attn_mask_type
        self.heads = config.num_attention_heads // tp
        self.groups = config.num_query_groups // tp
        # query-key layer scaling multiplies and divides by the same coefficient: it cancels
        self.softmax_scale = softmax_scale or 1.0 / math.sqrt(config.kv_channels)
        self.dropout = config.attention_dropout if attention_dropout is None else attention_dropout

    def forward(
        self,
        query,
        key,
        value,
        attention_mask,
        attn_mask_type=None,
        attention_bias=None,
        packed_seq_params=None,
    ):
        if packed_seq_params is not None or attention_bias is not None:
            raise NotImplementedError("SDPACoreAttention: no packed sequences, no attention bias")
        seq, batch = query.shape[0], query.shape[1]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [s,b,h,d] -> [b,h,s,d]
        mask_type = attn_mask_type or self.attn_mask_type
        mask = None if attention_mask is None else ~attention_mask
        causal = mask is None and mask_type == AttnMaskType.causal
        dropout = self.dropout if self.training else 0.0
        kwargs = dict(
            attn_mask=mask,
            dropout_p=dropout,
            is_causal=causal,
            scale=self.softmax_scale,
            enable_gqa=self.heads != self.groups,
        )
        if dropout > 0.0:
            from megatron.core import tensor_parallel

            with tensor_parallel.get_cuda_rng_tracker().fork():
                out = F.scaled_dot_product_attention(q, k, v, **kwargs)
        else:
            out = F.scaled_dot_product_attention(q, k, v, **kwargs)
        return out.permute(2, 0, 1, 3).reshape(seq, batch, -1)  # -> [s, b, h*d]


def _norm_spec(fused: bool):
    from megatron.core.transformer.spec_utils import ModuleSpec

    from kd.fused import Norm

    return ModuleSpec(module=Norm, params={"fused": bool(fused)})


def _is_torch_norm(module) -> bool:
    """megatron-core's norm without TE and Apex (``WrappedTorchNorm``, also its ``LNImpl``)."""
    from megatron.core.transformer.torch_norm import WrappedTorchNorm

    return module is WrappedTorchNorm


def _with_our_norms(layer, norm):
    """``layer`` (a TransformerLayer ModuleSpec) with each of its torch norms set to ``norm``;
    no-op parts (``IdentityOp``) and L2 q/k norms stay as they are."""
    sub = layer.submodules
    for name in ("input_layernorm", "pre_mlp_layernorm"):
        if _is_torch_norm(getattr(sub, name, None)):
            setattr(sub, name, norm)
    attention = getattr(sub.self_attention, "submodules", None)
    for name in ("q_layernorm", "k_layernorm"):
        if attention is not None and _is_torch_norm(getattr(attention, name, None)):
            setattr(attention, name, norm)
    return layer


def local_spec(config, vp_stage: int | None = None, fuse_norm: bool = False):
    from megatron.bridge.models.gpt_provider import local_layer_spec
    from megatron.core.transformer.transformer_block import (
        TransformerBlockSubmodules,
        get_num_layers_to_build,
    )

    norm = _norm_spec(fuse_norm)
    layer = _with_our_norms(local_layer_spec(config), norm)
    layers = get_num_layers_to_build(config, vp_stage=vp_stage)
    return TransformerBlockSubmodules(layer_specs=[layer] * layers, layer_norm=norm)


def sdpa_local_spec(config, vp_stage: int | None = None, fuse_norm: bool = False):
    block = local_spec(config, vp_stage=vp_stage, fuse_norm=fuse_norm)
    for layer in block.layer_specs:  # one shared spec object
        layer.submodules.self_attention.submodules.core_attention = SDPACoreAttention
    return block


def hetero_local_spec(config, vp_stage: int | None = None, fuse_norm: bool = False):
    from megatron.core.models.gpt.heterogeneous.heterogeneous_layer_specs import (
        get_gpt_heterogeneous_layer_spec,
    )

    block = get_gpt_heterogeneous_layer_spec(config, use_te=False, vp_stage=vp_stage)
    norm = _norm_spec(fuse_norm)
    for layer in block.layer_specs:
        _with_our_norms(layer, norm)
    if _is_torch_norm(block.layer_norm):
        block.layer_norm = norm
    return block


def hetero_sdpa_spec(config, vp_stage: int | None = None, fuse_norm: bool = False):
    block = hetero_local_spec(config, vp_stage=vp_stage, fuse_norm=fuse_norm)
    for layer in block.layer_specs:
        attention = layer.submodules.self_attention
        core = getattr(getattr(attention, "submodules", None), "core_attention", None)
        if core is not None:  # a no-op attention layer is an IdentityOp without submodules
            attention.submodules.core_attention = SDPACoreAttention
    return block


def is_heterogeneous(provider) -> bool:
    return bool(getattr(provider, "heterogeneous_layers_config_encoded_json", ""))


def pick(provider, attention: str = "sdpa", fuse_norm: bool = False):
    """The spec function for a provider without TE: heterogeneous or dense, SDPA or local;
    with compiled norms when ``fuse_norm``."""
    if attention not in ("sdpa", "local"):
        raise ValueError(f"attention must be 'sdpa' or 'local', got {attention!r}")
    if is_heterogeneous(provider):
        fn = hetero_sdpa_spec if attention == "sdpa" else hetero_local_spec
    else:
        fn = sdpa_local_spec if attention == "sdpa" else local_spec
    return functools.partial(fn, fuse_norm=True) if fuse_norm else fn
