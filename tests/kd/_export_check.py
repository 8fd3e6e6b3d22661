"""Export a distill checkpoint with kd.export, load the export with transformers, and compare
its logits with the Megatron model loaded from the same checkpoint. Prints one KD_EXPORT_CHECK
JSON line. Usage: python tests/kd/_export_check.py EXPORT_SPEC.json"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from kd import compat


def megatron_logits(checkpoint: Path, tokens):
    import torch
    from megatron.bridge.training.model_load_save import (
        load_megatron_model,
        temporary_distributed_context,
    )

    with temporary_distributed_context(backend="gloo"):
        model = load_megatron_model(str(checkpoint), use_cpu_init=True, skip_temp_dist_context=True)
        model = (model[0] if isinstance(model, list) else model).eval()
        positions = torch.arange(tokens.shape[1]).unsqueeze(0).expand_as(tokens)
        with torch.no_grad():
            return model(tokens, positions, None)


def main() -> int:
    compat.activate("cpu")
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root
    from kd import export
    from kd.paths import iteration_dir
    from kd.specs import ExportSpec, spec_from_dict
    from tests.kd._parity import hf_logits

    spec = spec_from_dict(ExportSpec, json.loads(Path(sys.argv[1]).read_text()))
    out = export.run(spec)
    meta = export.read_finished(out)
    torch.manual_seed(0)
    tokens = torch.randint(4, 256, (2, 24))
    exported = hf_logits(str(out), tokens)
    initial = hf_logits(spec.student, tokens)
    ref = megatron_logits(iteration_dir(Path(spec.checkpoints), meta["iteration"]), tokens)
    ref = ref[..., : exported.shape[-1]]
    config = json.loads((out / "config.json").read_text())
    report = {
        "iteration": meta["iteration"],
        "tensors": meta["tensors"],
        "max_abs_diff": float((exported - ref).abs().max()),
        "ref_scale": float(ref.abs().max()),
        "changed_vs_initial": float((exported - initial).abs().max()),
        "block_configs": config.get("block_configs"),
        "subblocks": sorted(p.name for p in (out / "subblocks_safetensors").glob("*"))
        if (out / "subblocks_safetensors").is_dir()
        else [],
    }
    print("KD_EXPORT_CHECK " + json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
