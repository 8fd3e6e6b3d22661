"""Build kd.distill's Megatron-Bridge ConfigContainer for a DistillSpec JSON (no training) and
print what the anchor options (issue 15) turned into, as one ``KD_CONFIG`` JSON line. Also
records the ``trust_remote_code`` every ``AutoBridge.from_hf_pretrained`` call got.
Usage: python tests/kd/_config_flow.py SPEC.json"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from kd import compat


def main(path: str) -> int:
    compat.activate("cpu")
    from megatron.bridge import AutoBridge

    calls = []
    original = AutoBridge.from_hf_pretrained.__func__

    def spy(cls, *args, **kwargs):
        calls.append(kwargs.get("trust_remote_code"))
        return original(cls, *args, **kwargs)

    AutoBridge.from_hf_pretrained = classmethod(spy)
    from kd import distill

    spec = distill.spec_from_dict(json.loads(Path(path).read_text()))
    c = distill.build_config(spec, "cpu")
    o, s, k, lg, m = c.optimizer, c.scheduler, c.checkpoint, c.logger, c.model
    out = {
        "optimizer": {n: getattr(o, n) for n in ("adam_beta1", "adam_beta2", "adam_eps",
                                                 "weight_decay", "clip_grad", "lr", "min_lr")},
        "scheduler": {n: getattr(s, n) for n in ("lr_decay_style", "start_weight_decay",
                                                 "end_weight_decay")},
        "recompute": {n: getattr(m, n) for n in ("recompute_granularity", "recompute_method",
                                                 "recompute_num_layers", "recompute_modules")},
        "checkpoint": {n: getattr(k, n) for n in ("save", "load", "pretrained_checkpoint",
                                                  "ckpt_step", "async_save", "most_recent_k")},
        "logger": {n: getattr(lg, n) for n in ("timing_log_level", "log_timers_to_tensorboard",
                                               "wandb_project", "wandb_entity", "wandb_exp_name",
                                               "wandb_save_dir")},
        "path_to_cache": c.dataset.path_to_cache,
        "trust_remote_code": calls,
    }
    print("KD_CONFIG " + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
