"""What kd.distill turns the options of Model-Optimizer's distill.py into: ``summary(config)``
of a built Megatron-Bridge ConfigContainer (the probe prints it for a real run), and, as a
script, the checkpoint and logger configs of a DistillSpec JSON without building any model (for
the options a CPU run cannot use: async save, W&B). Prints one ``KD_CONFIG`` JSON line.
Usage: python tests/kd/_config_flow.py SPEC.json"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from kd import compat

CHECKPOINT = ("save", "load", "pretrained_checkpoint", "ckpt_step", "async_save", "most_recent_k")
LOGGER = ("timing_log_level", "log_timers_to_tensorboard", "wandb_project", "wandb_entity",
          "wandb_exp_name", "wandb_save_dir")


def pick(obj, names) -> dict:
    return {n: getattr(obj, n) for n in names}


def summary(c) -> dict:
    """The fields of a ConfigContainer those options set."""
    return {
        "optimizer": pick(c.optimizer, ("adam_beta1", "adam_beta2", "adam_eps", "weight_decay",
                                        "clip_grad", "lr", "min_lr")),
        "scheduler": pick(c.scheduler, ("lr_decay_style", "start_weight_decay",
                                        "end_weight_decay")),
        "recompute": pick(c.model, ("recompute_granularity", "recompute_method",
                                    "recompute_num_layers", "recompute_modules")),
        "checkpoint": pick(c.checkpoint, CHECKPOINT),
        "logger": pick(c.logger, LOGGER),
        "path_to_cache": c.dataset.path_to_cache,
    }


def main(path: str) -> int:
    compat.activate("cpu")
    from kd import distill

    spec = distill.spec_from_dict(json.loads(Path(path).read_text()))
    out = {"checkpoint": pick(distill.checkpoint_config(spec, on_gpu=False, resume=False),
                              CHECKPOINT),
           "logger": pick(distill.logger_config(spec), LOGGER)}
    print("KD_CONFIG " + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
