"""Run kd.distill's CLI with a probe on the built KD model: after training, report whether the
teacher got gradients or changed, and digests of the student's weights as built (HF), before the
first optimizer step (after any checkpoint load) and at the end; print what the options of
Model-Optimizer's distill.py became in the Bridge config (``KD_CONFIG``, tests/kd/_config_flow.py).
Usage: python tests/kd/_probe_distill.py --spec S.json"""

from __future__ import annotations

import hashlib
import json
import sys

from kd import compat


def student_digest(model) -> dict[str, str]:
    """{parameter name: sha256 of its bytes} over the student's parameters (not the teacher's)."""
    return {
        n: hashlib.sha256(p.detach().float().cpu().numpy().tobytes()).hexdigest()[:16]
        for n, p in model.named_parameters()
        if "_teacher_model" not in n
    }


def main() -> int:
    compat.activate("cpu")
    from megatron.bridge.models import distillation_provider
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    built = {}
    original = distillation_provider.DistillationProvider.provide

    def provide(self, *args, **kwargs):
        model = original(self, *args, **kwargs)
        teacher = model.teacher_model
        built["model"] = model
        built["teacher_before"] = {n: p.detach().clone() for n, p in teacher.named_parameters()}
        built["student_built"] = student_digest(model)
        return model

    def before_first_step(optimizer, args, kwargs):
        if "student_initial" not in built and "model" in built:
            built["student_initial"] = student_digest(built["model"])

    register_optimizer_step_pre_hook(before_first_step)

    distillation_provider.DistillationProvider.provide = provide
    from megatron.bridge import AutoBridge

    from kd import distill

    trust, from_hf = [], AutoBridge.from_hf_pretrained.__func__

    def spy_from_hf(cls, *args, **kwargs):
        trust.append(kwargs.get("trust_remote_code"))
        return from_hf(cls, *args, **kwargs)

    AutoBridge.from_hf_pretrained = classmethod(spy_from_hf)
    build_config = distill.build_config

    def spy_build_config(*args, **kwargs):
        from _config_flow import summary

        config = build_config(*args, **kwargs)
        print("KD_CONFIG " + json.dumps({**summary(config), "trust_remote_code": trust}),
              flush=True)
        return config

    distill.build_config = spy_build_config

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
        "student_built": built["student_built"],
        "student_initial": built.get("student_initial"),
        "student_final": student_digest(built["model"]),
    }
    print("KD_PROBE " + json.dumps(report), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
