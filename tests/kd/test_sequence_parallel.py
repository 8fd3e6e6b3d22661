"""Sequence parallelism and the fusions without Transformer Engine, on CPU over gloo.

One 2-rank job (``tests/kd/_sp_probe.py``) runs the unit checks and five 20-iteration distill
runs at TP2 one after the other in the same processes (Megatron-Bridge's ``distill()`` with
``kd.distill.build_config``, as the stage builds it): the dense and the AnyModel student with
``train.sequence_parallel`` off and on, and the dense one with every fusion and the compiled
teacher. A second process exports the fused run's checkpoint.

Tolerance of the loss comparisons, ``LOSS_REL = 2e-5``: fp32 on CPU, where sequence parallelism
changes only the order of sums (each rank sums its half of the sequence, then the two halves
are added: the norm-weight gradients, the reduce-scatter of row-parallel outputs). Measured:
at most 3.9e-6 relative over the 20 iterations (AnyModel; dense 2.4e-6; the fused and compiled
run 3.3e-6 against the plain one; Megatron prints 7 significant digits). A norm whose weight
is not marked for the SP all-reduce (the bug the mark prevents: each TP rank trains its norm
on half of the tokens) differs by 4e-5 at iteration 3 and up to 9e-4 later, so the tolerance
sits 5x above what is correct and 40x below that bug's largest deviation.

CPU compiles use the ``aot_eager`` backend (Dynamo capture and AOT autograd, eager kernels):
inductor's first C++ build here takes ~35 s and every further kernel ~7 s. The inductor kernels
themselves are compared on CUDA by ``tests/kd/test_fused_gpu.py`` (``gpu``).
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from pathlib import Path

import pytest

from kd.sections import FUSIONS, Export
from kd.specs import ExportSpec
from tests.kd.conftest import REPO, losses_of, make_spec, run_python, run_ranks, tagged_json

ITERS = 20
LOSS_REL = 2e-5
CASES = {  # name: (student fixture, spec overrides); all TP2 on 2 ranks
    "dense_sp_off": ("dense", dict(sequence_parallel=False)),
    "dense_sp_on": ("dense", dict(sequence_parallel=True)),
    "anymodel_sp_off": ("anymodel", dict(sequence_parallel=False)),
    "anymodel_sp_on": ("anymodel", dict(sequence_parallel=True)),
    # every fusion, the compiled teacher; one save at the end for the export check
    "dense_fused": ("dense", dict(sequence_parallel=True, fuse=FUSIONS, compile_teacher=True,
                                  save_interval=ITERS)),
}
CASE_LINE = re.compile(r"^KD_SP_CASE (.*)$", re.M)


def _tagged_all(text: str, tag: str) -> list[dict]:
    return [json.loads(ln.removeprefix(tag + " ")) for ln in text.splitlines()
            if ln.startswith(tag + " ")]


@pytest.fixture(scope="module")
def sp_probe(kd_runs, dense_student, anymodel_student, tiny_teacher, token_prefix) -> dict:
    where = kd_runs / "sequence_parallel"
    students = {"dense": dense_student, "anymodel": anymodel_student}
    cases = {}
    for name, (student, overrides) in CASES.items():
        overrides = {"save_interval": None, "fuse": (), **overrides}
        spec = make_spec(students[student], tiny_teacher, token_prefix, where / name,
                         train_iters=ITERS, tp=2, **overrides)
        cases[name] = dataclasses.asdict(spec)
    where.mkdir(parents=True, exist_ok=True)
    (where / "cases.json").write_text(json.dumps({"cases": cases}))
    t0 = time.time()
    outputs = run_ranks([str(REPO / "tests/kd/_sp_probe.py"), str(where / "cases.json")], 2,
                        where / "logs", timeout=600)
    print(f"sp probe: 2 ranks, {len(cases)} runs, {time.time() - t0:.1f} s")  # for the record
    text = "\n".join(outputs)
    losses = {}
    for out in outputs:  # Megatron prints the losses on the last rank, between case markers
        parts = CASE_LINE.split(out)
        for i in range(1, len(parts), 2):
            found = losses_of(parts[i + 1])
            if found:
                losses[json.loads(parts[i])["case"]] = found
    return {
        "specs": cases,
        "losses": losses,
        "checks": _tagged_all(text, "KD_SP_CHECK"),
        "models": {(m["case"], m["rank"]): m for m in _tagged_all(text, "KD_SP_MODEL")},
        "calls": {(m["case"], m["rank"]): m for m in _tagged_all(text, "KD_SP_CALLS")},
    }


def _assert_same_losses(probe: dict, a: str, b: str) -> None:
    one, two = probe["losses"][a], probe["losses"][b]
    assert sorted(one) == sorted(two) == list(range(1, ITERS + 1)), (sorted(one), sorted(two))
    for it in one:
        assert two[it] == pytest.approx(one[it], rel=LOSS_REL), (it, one[it], two[it])
    assert one[ITERS] != one[1]  # it trained


@pytest.mark.dist
def test_sp_norm_gradient_after_megatrons_all_reduce_is_the_norm_without_sp(sp_probe):
    """Each rank normalises half of the sequence; after finalize_model_grads' SP all-reduce
    the weight (and LayerNorm bias) gradient equals the one of the whole sequence without SP;
    an unmarked torch norm beside it stays partial (the mark is what makes the difference)."""
    rows = [c for c in sp_probe["checks"] if c["check"].startswith("norm_grad_")]
    assert sorted((r["check"], r["rank"]) for r in rows) == [
        ("norm_grad_LayerNorm", 0), ("norm_grad_LayerNorm", 1),
        ("norm_grad_RMSNorm", 0), ("norm_grad_RMSNorm", 1)]
    for r in rows:
        params = ["weight", "bias"] if r["check"].endswith("LayerNorm") else ["weight"]
        assert sorted(r["marked"]) == sorted(params) and all(r["marked"].values()), r
        scale = r["grad_scale"]
        for name in params:
            assert r["grad_vs_no_sp"][name] <= 1e-6 * scale * 10, r  # fp32 summation order
            assert r["partial_vs_no_sp"][name] > 0.05 * scale, r  # the reduction mattered
            assert r["unmarked_vs_no_sp"][name] == r["partial_vs_no_sp"][name], r
        assert r["input_grad_vs_no_sp"] <= 1e-6 * scale, r


@pytest.mark.dist
def test_each_fusion_matches_its_unfused_module(sp_probe):
    """kd.fused.Norm compiled vs torch's RMSNorm / LayerNorm, the compiled RoPE in megatron-core's
    fused slot vs its unfused RoPE (also through megatron-core's dispatch), megatron-core's
    compiled SwiGLU vs its unfused glu(), its compiled bias-dropout-add vs the unfused one."""
    rows = {(c["check"], c["rank"]): c for c in sp_probe["checks"]
            if c["check"].startswith("fusion_")}
    names = {"norm_RMSNorm", "norm_LayerNorm", "rope_rot16", "rope_rot8", "swiglu",
             "residual_train", "residual_eval"}
    assert {k for k, _ in rows} == {f"fusion_{n}" for n in names}
    for (name, _), r in rows.items():
        tol = 1e-6 * max(1.0, r["scale"])  # fp32: the compiled graph may reorder a sum
        assert r["out_diff"] <= tol and r["grad_diff"] <= tol, r
        if name.startswith("fusion_norm"):
            assert r["weight_grad_diff"] <= 1e-5 * max(1.0, r["scale"]), r
        if name.startswith("fusion_rope"):
            assert r["slot_filled"] and r["dispatch_diff"] <= tol, r


@pytest.mark.dist
@pytest.mark.parametrize("student", ["dense", "anymodel"])
def test_tp2_with_and_without_sequence_parallelism_trains_alike(sp_probe, student):
    off, on = f"{student}_sp_off", f"{student}_sp_on"
    _assert_same_losses(sp_probe, off, on)
    models = sp_probe["models"]
    for rank in (0, 1):
        m_off, m_on = models[(off, rank)], models[(on, rank)]
        assert (m_on["sequence_parallel"], m_on["teacher_sequence_parallel"]) == (True, True)
        assert (m_off["sequence_parallel"], m_off["teacher_sequence_parallel"]) == (False, False)
        assert m_on["sp_marks"] == [True] and m_off["sp_marks"] == [False]
        # every norm of student and teacher is ours; none of megatron-core's torch norms is left
        assert m_on["torch_norms"] == [] and m_on["student_norms"] >= 3, m_on
        assert m_on["teacher_norms"] == 5  # 2 layers x (input, pre-MLP) + the final norm
        # the checkpoint and HF-conversion names are those of megatron-core's local spec
        assert m_on["student_param_names"] == m_off["student_param_names"]
        assert {"input_layernorm", "pre_mlp_layernorm", "final_layernorm"} >= set(
            m_on["norm_names"])
        assert "decoder.final_layernorm.weight" in m_on["student_param_names"]
        assert m_on["norms_fused"] == [False] and not m_on["apply_rope_fusion"]
    if student == "anymodel":  # layer 0's attention is a no-op: no input norm there
        assert models[(on, 0)]["student_norms"] == 4
        assert "decoder.layers.0.input_layernorm.weight" not in models[(on, 0)][
            "student_param_names"]


@pytest.mark.dist
def test_every_fusion_and_the_compiled_teacher_train_like_the_plain_run(sp_probe):
    """train.fuse with all four and kd.compile_teacher: the same losses as the plain SP run,
    and each fused function ran (none of them in the plain runs)."""
    _assert_same_losses(sp_probe, "dense_sp_on", "dense_fused")
    for rank in (0, 1):
        m = sp_probe["models"][("dense_fused", rank)]
        assert m["norms_fused"] == [True] and m["sp_marks"] == [True], m
        assert (m["apply_rope_fusion"], m["bias_activation_fusion"], m["bias_dropout_fusion"],
                m["teacher_compiled"]) == (True, True, True, True), m
        calls = sp_probe["calls"][("dense_fused", rank)]
        assert calls["kd_fused"] == ["rms_norm", "rope"], calls
        for name in ("swiglu", "swiglu_back", "bias_dropout_add_fused_train"):
            assert calls["megatron"].get(name, 0) > 0, calls
        plain = sp_probe["calls"][("dense_sp_on", rank)]
        assert plain["kd_fused"] == [] and not plain["megatron"], plain
        p = sp_probe["models"][("dense_sp_on", rank)]
        assert not (p["bias_activation_fusion"] or p["bias_dropout_fusion"]
                    or p["teacher_compiled"]), p


@pytest.mark.dist
def test_a_fused_sequence_parallel_run_exports(sp_probe, kd_runs, dense_student):
    """The GPU default (every fusion, SP at TP > 1) writes a compiled-norm layer spec
    (``functools.partial``) and ``apply_rope_fusion`` into run_config.yaml: the export reads both
    back and the exported HF model gives the checkpoint's logits."""
    ckpts = Path(sp_probe["specs"]["dense_fused"]["output_dir"]) / "checkpoints"
    run_config = (ckpts / f"iter_{ITERS:07d}" / "run_config.yaml").read_text()
    assert "_target_: kd.layer_specs.sdpa_local_spec" in run_config
    assert "fuse_norm: true" in run_config and "apply_rope_fusion: true" in run_config
    spec = ExportSpec(checkpoints=str(ckpts), out_dir=str(kd_runs / "export_fused"),
                      export=Export(hf_template=str(dense_student)), student=str(dense_student))
    spec_file = kd_runs / "export_fused.json"
    spec_file.write_text(json.dumps(dataclasses.asdict(spec)))
    # the logits check runs the Megatron model once: without Dynamo (no CPU inductor build)
    proc = run_python([str(REPO / "tests/kd/_export_check.py"), str(spec_file)],
                      kd_runs / "export_fused.log", env={"TORCHDYNAMO_DISABLE": "1"})
    report = tagged_json(proc.stdout, "KD_EXPORT_CHECK")
    assert report["iteration"] == ITERS and report["block_configs"] is None
    assert report["max_abs_diff"] < 1e-5 and report["changed_vs_initial"] > 1e-3


def test_the_rules_of_the_knobs():
    """``train.fuse`` / ``train.sequence_parallel`` resolved (kd/sections.py, stdlib) and turned
    into megatron-core's flags (kd.fused.provider_flags): a fusion that does not fit the model
    stays off instead of making megatron-core refuse the config."""
    from types import SimpleNamespace

    import torch.nn.functional as F  # noqa: N812

    from kd.fused import provider_flags
    from kd.sections import Train, fusions, sequence_parallel

    assert (fusions("auto", "cuda"), fusions("auto", "cpu")) == (FUSIONS, ())
    assert fusions(("rope",), "cpu") == ("rope",) and fusions((), "cuda") == ()
    assert [sequence_parallel("auto", tp) for tp in (1, 2, 8)] == [False, True, True]
    assert (sequence_parallel(False, 4), sequence_parallel(True, 2)) == (False, True)
    assert Train(tp=4).sequence_parallel_on() and not Train(tp=1).sequence_parallel_on()
    llama = SimpleNamespace(position_embedding_type="rope", rotary_interleaved=False,
                            activation_func=F.silu, gated_linear_unit=True)
    assert provider_flags(FUSIONS, llama) == {
        "apply_rope_fusion": True, "bias_activation_fusion": True, "bias_dropout_fusion": True}
    assert not any(provider_flags((), llama).values())
    other = SimpleNamespace(position_embedding_type="rope", rotary_interleaved=True,
                            activation_func=F.gelu, gated_linear_unit=False)
    assert provider_flags(FUSIONS, other) == {
        "apply_rope_fusion": False, "bias_activation_fusion": False, "bias_dropout_fusion": True}
    with pytest.raises(ValueError, match="unknown fusion"):
        provider_flags(("layernorm",), llama)
