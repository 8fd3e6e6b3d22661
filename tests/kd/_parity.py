"""Logits of a HF model dir through transformers vs through Megatron (AutoBridge provider with
kd's layer specs), for both core attentions, with TP = WORLD_SIZE (default 1; each rank checks
its vocab shard). Prints one KD_PARITY JSON line per model dir.
Usage: [RANK=.. WORLD_SIZE=.. MASTER_*=..] python tests/kd/_parity.py HF_DIR [HF_DIR ...]"""

from __future__ import annotations

import json
import sys

from kd import compat


def hf_logits(hf_dir: str, tokens):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(hf_dir)
    blocks = getattr(config, "block_configs", None)
    if blocks:
        from modelopt.torch.puzzletron.anymodel import ModelDescriptorFactory, deci_x_patcher

        with deci_x_patcher(ModelDescriptorFactory.get("llama"), blocks):
            model = AutoModelForCausalLM.from_pretrained(
                hf_dir, config=config, torch_dtype=torch.float32
            )
    else:
        model = AutoModelForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32)
    with torch.no_grad():
        return model.eval()(tokens).logits


def megatron_logits(hf_dir: str, tokens, attention: str, tp: int):
    import modelopt.torch.puzzletron.plugins  # noqa: F401
    import torch
    from megatron.bridge import AutoBridge

    from kd.distill import configure_provider

    provider = AutoBridge.from_hf_pretrained(
        hf_dir, torch_dtype=torch.float32
    ).to_megatron_provider(load_weights=True)
    configure_provider(provider, tp, 1, 1, tokens.shape[1], "cpu", False, attention=attention)
    provider.finalize()
    model = provider.provide_distributed_model(
        wrap_with_ddp=False, use_cpu_initialization=True, mixed_precision_wrapper=None
    )[0].eval()
    core = type(model.decoder.layers[-1].self_attention.core_attention).__name__
    positions = torch.arange(tokens.shape[1]).unsqueeze(0).expand_as(tokens)
    with torch.no_grad():
        logits = model(tokens, positions, None)
    return logits, core


def main() -> int:
    compat.activate("cpu")
    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    from kd.dist_env import export_env

    env = export_env()
    dist.init_process_group("gloo", rank=env.rank, world_size=env.world_size)
    parallel_state.initialize_model_parallel(env.world_size, 1)
    model_parallel_cuda_manual_seed(1)
    torch.manual_seed(0)
    tokens = torch.randint(4, 256, (2, 24))
    for hf_dir in sys.argv[1:]:
        ref = hf_logits(hf_dir, tokens)
        result = {"model": hf_dir, "tp": env.world_size}
        for attention in ("local", "sdpa"):
            logits, core = megatron_logits(hf_dir, tokens, attention, env.world_size)
            shard = logits.shape[-1]  # vocab-parallel output: this rank's slice (maybe padded)
            logits = logits[..., : max(0, ref.shape[-1] - env.rank * shard)]
            ref_shard = ref[..., env.rank * shard : env.rank * shard + logits.shape[-1]]
            result[attention] = {
                "core": core,
                "max_abs_diff": float((logits - ref_shard).abs().max()),
                "ref_scale": float(ref.abs().max()),
            }
        print("KD_PARITY " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
