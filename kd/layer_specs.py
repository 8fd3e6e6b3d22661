"""Transformer layer specs without Transformer Engine, importable by path.

Megatron-Bridge writes ``provider.transformer_layer_spec`` into each checkpoint's
``run_config.yaml`` as an import path, so these must live in an importable module (not in a
closure). Import this module only on compute nodes, after ``kd.compat.activate()``.

- ``local_spec``: megatron-core's local modules (unfused ``DotProductAttention``).
- ``sdpa_local_spec``: the same with ``SDPACoreAttention`` (torch scaled_dot_product_attention:
  flash / memory-efficient kernels on GPU, O(s) memory instead of O(s^2)).
- ``hetero_local_spec`` / ``hetero_sdpa_spec``: Puzzletron AnyModel students (per-layer
  ``block_configs``: no-op attention or MLP, narrowed FFN, per-layer KV heads).
"""

from __future__ import annotations

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


def local_spec(config):
    from megatron.bridge.models.gpt_provider import local_layer_spec

    return local_layer_spec(config)


def sdpa_local_spec(config):
    spec = local_spec(config)
    spec.submodules.self_attention.submodules.core_attention = SDPACoreAttention
    return spec


def hetero_local_spec(config, vp_stage: int | None = None):
    from megatron.core.models.gpt.heterogeneous.heterogeneous_layer_specs import (
        get_gpt_heterogeneous_layer_spec,
    )

    return get_gpt_heterogeneous_layer_spec(config, use_te=False, vp_stage=vp_stage)


def hetero_sdpa_spec(config, vp_stage: int | None = None):
    block = hetero_local_spec(config, vp_stage=vp_stage)
    for layer in block.layer_specs:
        attention = layer.submodules.self_attention
        core = getattr(getattr(attention, "submodules", None), "core_attention", None)
        if core is not None:  # a no-op attention layer is an IdentityOp without submodules
            attention.submodules.core_attention = SDPACoreAttention
    return block


def is_heterogeneous(provider) -> bool:
    return bool(getattr(provider, "heterogeneous_layers_config_encoded_json", ""))


def pick(provider, attention: str = "sdpa"):
    """The spec function for a provider without TE: heterogeneous or dense, SDPA or local."""
    if attention not in ("sdpa", "local"):
        raise ValueError(f"attention must be 'sdpa' or 'local', got {attention!r}")
    if is_heterogeneous(provider):
        return hetero_sdpa_spec if attention == "sdpa" else hetero_local_spec
    return sdpa_local_spec if attention == "sdpa" else local_spec
