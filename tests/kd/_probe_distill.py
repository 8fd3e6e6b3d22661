"""Run kd.distill's CLI with a probe on the built KD model: after training, report whether the
teacher got gradients or changed. Usage: python tests/kd/_probe_distill.py --spec S.json"""

from __future__ import annotations

import json
import sys

from kd import compat


def main() -> int:
    compat.activate("cpu")
    from megatron.bridge.models import distillation_provider

    built = {}
    original = distillation_provider.DistillationProvider.provide

    def provide(self, *args, **kwargs):
        model = original(self, *args, **kwargs)
        teacher = model.teacher_model
        built["model"] = model
        built["teacher_before"] = {n: p.detach().clone() for n, p in teacher.named_parameters()}
        return model

    distillation_provider.DistillationProvider.provide = provide
    from kd import distill

    code = distill.main(sys.argv[1:])
    teacher = built["model"].teacher_model
    params = dict(teacher.named_parameters())
    report = {
        "teacher_params": len(params),
        "teacher_requires_grad": sum(p.requires_grad for p in params.values()),
        "teacher_with_grad": sum(
            p.grad is not None or getattr(p, "main_grad", None) is not None for p in params.values()
        ),
        "teacher_max_change": max(
            float((p.detach() - built["teacher_before"][n]).abs().max()) for n, p in params.items()
        ),
        "student_trainable": sum(
            p.requires_grad
            for n, p in built["model"].named_parameters()
            if "_teacher_model" not in n
        ),
    }
    print("KD_PROBE " + json.dumps(report), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
