"""Run kd.distill's CLI and report, per rank, which Megatron optimizer wraps the student and how
many Adam-state elements this rank holds. Usage: python tests/kd/_probe_optimizer.py --spec S"""

from __future__ import annotations

import json
import os
import sys

from kd import compat


def main() -> int:
    compat.activate("cpu")
    from megatron.core.optimizer import distrib_optimizer
    from torch.optim.optimizer import register_optimizer_step_post_hook

    seen: dict = {"distributed_optimizer": False}
    original = distrib_optimizer.DistributedOptimizer.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        seen["distributed_optimizer"] = True
        seen["student_params"] = sum(
            p.numel() for m in self.model_chunks for p in m.parameters() if p.requires_grad)

    distrib_optimizer.DistributedOptimizer.__init__ = init

    def after_step(optimizer, args, kwargs):
        seen["adam_state_elements"] = sum(
            s["exp_avg"].numel() for s in optimizer.state.values() if "exp_avg" in s)
        seen["optimizer_param_elements"] = sum(
            p.numel() for g in optimizer.param_groups for p in g["params"])

    register_optimizer_step_post_hook(after_step)
    from kd import distill

    code = distill.main(sys.argv[1:])
    rank = int(os.environ.get("RANK", "0"))
    print("KD_OPTIM " + json.dumps({"rank": rank, **seen}), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
