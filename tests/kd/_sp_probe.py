"""Sequence parallelism and the fusions without TE (kd/fused.py), on CPU over gloo.

Run as a 2-rank job (tests/kd/conftest.py ``run_ranks``):

    python tests/kd/_sp_probe.py CASES.json

1. Unit checks before any training (both ranks, TP2): the SP norm's weight gradient after
   Megatron's SP all-reduce (``finalize_model_grads``' ``_allreduce_non_tensor_model_parallel_grads``)
   against the norm without SP over the whole sequence, with an unmarked torch norm beside it
   that must stay unreduced; then each fusion against its unfused module (``fusion_checks``).
   One ``KD_SP_CHECK`` JSON line per check and rank.
2. The distill cases of CASES.json (``{"cases": {name: DistillSpec dict}}``), one after the other
   in this process: ``kd.distill.build_config`` + Megatron-Bridge's ``distill()``, as the stage
   and benchmarks/kd_throughput.py run them (Bridge tears its global state down after each
   run; the gloo group stays). Before each: a ``KD_SP_CASE`` line; then Megatron's loss lines
   (last rank); a ``KD_SP_MODEL`` line per rank from a pre-wrap hook (what the built model holds:
   norms, their SP marks, the fusion flags, the compiled teacher) and a ``KD_SP_CALLS`` line per
   rank after the run (how often each fused function ran).

On CPU every compile uses the ``aot_eager`` backend (``kd.fused.BACKEND``, and megatron-core's
compiled SwiGLU / bias-dropout-add re-compiled from their sources with it): the same Dynamo
capture and AOT autograd as inductor, eager kernels, because inductor's first C++ build here
takes ~35 s. ``fusion_checks(device)`` is also run on CUDA with inductor by the GPU-marked test.
"""

from __future__ import annotations

import collections
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[2]
CALLS: collections.Counter = collections.Counter()
START = time.time()
# megatron-core's compiled element-wise functions that train.fuse's swiglu / residual switch on
MEGATRON_FUSED = {
    "megatron.core.fusions.fused_bias_swiglu": ("swiglu", "swiglu_back"),
    "megatron.core.fusions.fused_bias_dropout": ("bias_dropout_add_fused_train",
                                                 "bias_dropout_add_fused_inference"),
}


def emit(tag: str, payload: dict) -> None:
    print(f"{tag} {json.dumps({**payload, 'at_s': round(time.time() - START, 1)})}", flush=True)


def cheap_compiles() -> None:
    """CPU: aot_eager instead of inductor for kd.fused and megatron-core's jit_fuser functions,
    each wrapped to count its calls (``CALLS``)."""
    import importlib

    import torch

    from kd import fused

    fused.BACKEND = "aot_eager"
    for module_name, names in MEGATRON_FUSED.items():
        module = importlib.import_module(module_name)
        for name in names:
            original = getattr(module, name)
            source = getattr(original, "_torchdynamo_orig_callable", original)
            cheap = torch.compile(source, backend="aot_eager")

            def counted(*args, _fn=cheap, _name=name, **kwargs):
                CALLS[_name] += 1
                return _fn(*args, **kwargs)

            setattr(module, name, counted)


# --------------------------------------------------------------------------- unit checks
def _diff(a, b) -> float:
    return float((a.detach().float() - b.detach().float()).abs().max())


def _torch_norm(kind: str, hidden: int, eps: float):
    """What megatron-core's WrappedTorchNorm builds without TE/Apex."""
    import torch

    return (torch.nn.RMSNorm if kind == "RMSNorm" else torch.nn.LayerNorm)(hidden, eps=eps)


def _copy_params(dst, src) -> None:
    import torch

    with torch.no_grad():
        for name, p in src.named_parameters():
            dict(dst.named_parameters())[name].copy_(p)


def norm_gradient_check(kind: str) -> dict:
    """TP2: each rank normalises its half of the sequence (SP) with kd.fused.Norm; after
    Megatron's SP all-reduce its weight (and bias) gradient must equal the gradient of the
    norm without SP over the whole sequence. An unmarked torch norm in the same model chunk
    must come out of the same all-reduce unchanged (partial): the mark is what counts."""
    import torch
    from megatron.core import parallel_state as ps
    from megatron.core.distributed import DistributedDataParallelConfig
    from megatron.core.distributed.finalize_model_grads import (
        _allreduce_non_tensor_model_parallel_grads,
    )

    from kd.fused import Norm

    tp, rank = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()
    seq, batch, hidden, eps = 8, 2, 16, 1e-5
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(seq, batch, hidden, generator=gen) * 2 + 0.5
    upstream = torch.randn(seq, batch, hidden, generator=gen)

    def config(sp: bool):
        return SimpleNamespace(normalization=kind, sequence_parallel=sp,
                               layernorm_zero_centered_gamma=False)

    ref = Norm(config(False), hidden, eps=eps)
    with torch.no_grad():  # not the identity init: a weight that matters
        ref.weight.copy_(torch.rand(hidden, generator=gen) + 0.5)
        if ref.bias is not None:
            ref.bias.copy_(torch.randn(hidden, generator=gen))
    x_ref = x.clone().requires_grad_()
    (ref(x_ref) * upstream).sum().backward()

    part = slice(rank * seq // tp, (rank + 1) * seq // tp)
    sp, plain = Norm(config(True), hidden, eps=eps), _torch_norm(kind, hidden, eps)
    _copy_params(sp, ref)
    _copy_params(plain, ref)
    x_sp = x[part].clone().requires_grad_()
    (sp(x_sp) * upstream[part]).sum().backward()
    (plain(x[part]) * upstream[part]).sum().backward()
    chunk = torch.nn.Module()
    chunk.sp_norm, chunk.plain_norm = sp, plain
    chunk.ddp_config = DistributedDataParallelConfig()
    before = {n: p.grad.clone() for n, p in sp.named_parameters()}
    _allreduce_non_tensor_model_parallel_grads(
        [chunk], SimpleNamespace(sequence_parallel=True, qk_layernorm=False),
        ps.get_tensor_model_parallel_group())
    ref_grads = dict(ref.named_parameters())
    return {
        "check": f"norm_grad_{kind}", "rank": rank,
        "marked": {n: p.sequence_parallel for n, p in sp.named_parameters()},
        "grad_vs_no_sp": {n: _diff(p.grad, ref_grads[n].grad) for n, p in sp.named_parameters()},
        "partial_vs_no_sp": {n: _diff(g, ref_grads[n].grad) for n, g in before.items()},
        "unmarked_vs_no_sp": {n: _diff(p.grad, ref_grads[n].grad)
                              for n, p in plain.named_parameters()},
        "input_grad_vs_no_sp": _diff(x_sp.grad, x_ref.grad[part]),
        "grad_scale": max(float(p.grad.abs().max()) for p in ref.parameters()),
    }


def _grads(fn, inputs, upstream):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    (out * upstream).sum().backward()
    return out.detach(), [t.grad for t in leaves]


def _compare(name: str, fused_fn, plain_fn, inputs, upstream, device: str, dtype) -> dict:
    out_f, grads_f = _grads(fused_fn, inputs, upstream)
    out_p, grads_p = _grads(plain_fn, inputs, upstream)
    return {"check": f"fusion_{name}", "device": device, "dtype": str(dtype).split(".")[-1],
            "out_diff": _diff(out_f, out_p), "grad_diff": max(_diff(a, b) for a, b in
                                                              zip(grads_f, grads_p, strict=True)),
            "scale": float(out_p.abs().max())}


def fusion_checks(device: str = "cpu", dtype_name: str = "float32") -> list[dict]:
    """Each fusion of train.fuse against the unfused module megatron-core runs without it:
    forward values and input / weight gradients (``kd.fused.BACKEND`` decides the compiler)."""
    import torch
    import torch.nn.functional as F  # noqa: N812
    from megatron.core.fusions import fused_bias_dropout, fused_bias_swiglu
    from megatron.core.models.common.embeddings import rope_utils

    from kd import fused

    dtype = getattr(torch, dtype_name)
    gen = torch.Generator().manual_seed(11)

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

    out = []
    seq, batch, hidden = 12, 2, 32
    for kind in fused.NORMS:  # kd.fused.Norm(fused=True) vs torch's module (WrappedTorchNorm)
        cfg = SimpleNamespace(normalization=kind, sequence_parallel=False,
                              layernorm_zero_centered_gamma=False)
        ours = fused.Norm(cfg, hidden, eps=1e-5, fused=True).to(device, dtype)
        plain = _torch_norm(kind, hidden, 1e-5).to(device, dtype)
        with torch.no_grad():
            ours.weight.copy_(rand(hidden) * 0.2 + 1)
            if ours.bias is not None:
                ours.bias.copy_(rand(hidden))
        _copy_params(plain, ours)
        x, up = rand(seq, batch, hidden) * 3 + 1, rand(seq, batch, hidden)
        row = _compare(f"norm_{kind}", ours, plain, [x], up, device, dtype)
        for m in (ours, plain):
            m.zero_grad()
        (ours(x) * up).sum().backward()
        (plain(x) * up).sum().backward()
        row["weight_grad_diff"] = max(_diff(a.grad, b.grad) for a, b in
                                      zip(ours.parameters(), plain.parameters(), strict=True))
        out.append(row)
    heads, dim = 4, 16
    for rot in (dim, dim // 2):  # full and partial rotary (rotary_percent < 1)
        inv = 1.0 / (10000 ** (torch.arange(0, rot, 2, dtype=torch.float32) / rot))
        freqs = torch.outer(torch.arange(seq, dtype=torch.float32), inv)
        freqs = torch.cat([freqs, freqs], dim=-1)[:, None, None, :].to(device)
        t, up = rand(seq, batch, heads, dim), rand(seq, batch, heads, dim)
        row = _compare(f"rope_rot{rot}", lambda v, f=freqs: fused.rope(v, f),
                       lambda v, f=freqs: rope_utils._apply_rotary_pos_emb_bshd(v, f), [t], up,
                       device, dtype)
        # megatron-core's own dispatch reaches the slot kd.compat filled (apply_rope_fusion on)
        cfg = SimpleNamespace(apply_rope_fusion=True, mrope_section=None,
                              rotary_interleaved=False, multi_latent_attention=False)
        via = rope_utils.apply_rotary_pos_emb(t, freqs, cfg, cp_group=object())
        row["slot_filled"] = rope_utils.fused_apply_rotary_pos_emb is fused.rope
        row["dispatch_diff"] = _diff(via, rope_utils._apply_rotary_pos_emb_bshd(t, freqs))
        out.append(row)
    ffn = 24  # megatron-core's MLP: bias_swiglu_impl when bias_activation_fusion, else glu()
    x, up = rand(seq, batch, 2 * ffn), rand(seq, batch, ffn)

    def glu(v):
        gate, linear = torch.chunk(v, 2, dim=-1)
        return F.silu(gate) * linear

    out.append(_compare("swiglu", lambda v: fused_bias_swiglu.bias_swiglu_impl(v, None), glu,
                        [x], up, device, dtype))
    x, residual, up = rand(seq, batch, hidden), rand(seq, batch, hidden), rand(seq, batch, hidden)
    for training in (True, False):  # the layer's bias-dropout-add (Llama: no bias, dropout 0)
        fused_bda = fused_bias_dropout.get_bias_dropout_add(training, True)
        plain_bda = fused_bias_dropout.get_bias_dropout_add(training, False)
        out.append(_compare(f"residual_{'train' if training else 'eval'}",
                            lambda v, r, f=fused_bda: f((v, None), r, 0.0),
                            lambda v, r, f=plain_bda: f((v, None), r, 0.0),
                            [x, residual], up, device, dtype))
    return out


# --------------------------------------------------------------------------- distill cases
def model_report(case: str, rank: int):
    """A pre-wrap hook for the distillation provider: what the built model holds."""

    def hook(model: list) -> list:
        from kd.fused import Norm

        chunk = model[0]
        teacher = chunk._teacher_model
        teacher_ids = {id(m) for m in teacher.modules()}
        norms = [m for m in chunk.modules() if isinstance(m, Norm)]
        student_norms = [m for m in norms if id(m) not in teacher_ids]
        teacher_norms = [m for m in norms if id(m) in teacher_ids]
        torch_norms = [type(m).__name__ for m in chunk.modules()
                       if type(m).__name__ in ("RMSNorm", "LayerNorm")]
        config = chunk.config
        emit("KD_SP_MODEL", {
            "case": case, "rank": rank,
            "student_norms": len(student_norms), "teacher_norms": len(teacher_norms),
            "torch_norms": torch_norms,
            "norms_fused": sorted({m.fused for m in norms}),
            "sp_marks": sorted({bool(getattr(p, "sequence_parallel", False))
                                for m in norms for p in m.parameters()}),
            "sequence_parallel": config.sequence_parallel,
            "teacher_sequence_parallel": teacher.config.sequence_parallel,
            "apply_rope_fusion": config.apply_rope_fusion,
            "bias_activation_fusion": config.bias_activation_fusion,
            "bias_dropout_fusion": config.bias_dropout_fusion,
            "teacher_compiled": hasattr(teacher.forward, "_torchdynamo_orig_callable"),
            "norm_names": sorted({n.rsplit(".", 1)[-1] for n, m in chunk.named_modules()
                                  if isinstance(m, Norm)}),
            "student_param_names": sorted(n for n, _ in chunk.named_parameters()
                                          if "_teacher_model" not in n),
        })
        return model

    return hook


def run_case(name: str, spec_dict: dict, rank: int) -> None:
    from megatron.bridge.training.distill import distill

    import kd.distill as kdd
    from kd import fused

    spec = kdd.spec_from_dict(spec_dict)
    emit("KD_SP_CASE", {"case": name, "rank": rank})
    fused._compiled.clear()
    CALLS.clear()
    config = kdd.build_config(spec, "cpu")
    if not spec.train.save_interval:
        config.checkpoint.save = None
    config.checkpoint.load = None
    config.model.register_pre_wrap_hook(model_report(name, rank))
    distill(config)
    emit("KD_SP_CALLS", {"case": name, "rank": rank, "megatron": dict(CALLS),
                         "kd_fused": sorted(fused._compiled)})


def main() -> int:
    from kd import compat

    compat.activate("cpu")
    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    sys.path.insert(0, str(REPO))
    from kd.dist_env import export_env

    env = export_env()
    dist.init_process_group("gloo", rank=env.rank, world_size=env.world_size)
    cheap_compiles()
    torch.manual_seed(0)
    ps.initialize_model_parallel(tensor_model_parallel_size=env.world_size)
    for kind in ("RMSNorm", "LayerNorm"):
        emit("KD_SP_CHECK", norm_gradient_check(kind))
    for row in fusion_checks("cpu"):
        emit("KD_SP_CHECK", {**row, "rank": env.rank})
    ps.destroy_model_parallel()
    cases = json.loads(Path(sys.argv[1]).read_text())["cases"]
    for name, spec_dict in cases.items():
        run_case(name, spec_dict, env.rank)
    return 0


if __name__ == "__main__":
    sys.exit(main())
