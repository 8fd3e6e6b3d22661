"""Every layout the launcher can pick survives a whole run: train through validation, stop after
a save, resume, and continue the uninterrupted run's curve.

Each layout runs once uninterrupted (8 iterations, validation at 4 and 8, saves along the way);
the resumed run starts in a fresh output directory holding only a copy of one complete save
(``checkpoints/iter_N`` + Megatron's tracker), which is what a stop after that save leaves: a
requeue, a preemption or a relaunch finds exactly that. Its training losses after N and its
validation losses must equal the uninterrupted run's: bitwise on CPU for the same layout (same
reduction order), within ``RESHARD_REL`` when it resumes at another data-parallel size
(gradients are then summed in another order).

Layouts (CPU, gloo; ``global_batch_size`` 8, micro-batch 2, seq 32):

| case | ranks | what it covers |
|---|---|---|
| ``dp2`` | 2 | DP2, the distributed optimizer as ``auto`` chooses it, selective recompute, ``checkpoint.keep_last=2`` |
| ``tp2xdp2_overlap`` | 4 | TP2 x DP2, distributed optimizer, ``overlap_grad_reduce`` + overlapped parameter gather |
| ``pp2_anymodel_full`` | 2 | PP2 (student + teacher activations between stages) with a Puzzletron AnyModel student (heterogeneous layers: attention no-op, halved FFN) and full recompute; also against the PP1 run of the same spec |
| ``dp2 -> dp1``, ``dp2 -> dp4`` | 1, 4 | the DP2 save resumed on fewer / more ranks (dp_reshardable) |

Dimensions share runs to keep CI near 10 minutes (each rank start costs ~10 CPU-s): TP2 is
covered at TP2 x DP2; the plain (non-distributed) optimizer's resume at DP1 by the SLURM tests.

``checkpoint.async_save`` needs CUDA (megatron-core's persistent checkpoint worker binds a
device; kd.distill refuses it on CPU): its resume with the distributed optimizer is checked on
the GPU machine (``tests/kd/test_gpu_resume.py``), not here.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest

from kd import checkpoints as ckpts
from tests.kd.conftest import REPO, losses_of, make_spec, run_ranks, tagged_json

ITERS = 8
RESHARD_REL = 1e-5  # fp32 sums over another number of ranks: last-digit differences only
VALIDATION_LINE = re.compile(r"validation loss at iteration\s+(\d+)( on validation set)? \|(.*)")
VALUE = re.compile(r"([a-z ]+?) value: ([0-9.Ee+-]+)")


def validation_losses(text: str) -> dict[tuple[int, bool], dict[str, float]]:
    """{(iteration, after training): {"lm loss": .., "total loss": .., ...}} from Bridge's
    validation lines."""
    found = {}
    for m in VALIDATION_LINE.finditer(text):
        found[(int(m.group(1)), bool(m.group(2)))] = {
            k.strip(): float(v) for k, v in VALUE.findall(m.group(3))}
    return found


CASES = {
    # name: (ranks, spec overrides, iteration the resume starts from)
    "dp2": (2, dict(recompute="selective", keep_last=2, save_interval=2), 6),
    "tp2xdp2_overlap": (4, dict(tp=2, overlap_grad_reduce=True, save_interval=4), 4),
    "pp2_anymodel_full": (2, dict(pp=2, recompute="full", save_interval=4), 4),
}


def _spec(case: str, out: Path, student: Path, teacher: Path, prefix: str, **extra):
    overrides = {**CASES[case][1], **extra}
    return make_spec(student, teacher, prefix, out, train_iters=ITERS, eval_interval=4,
                     eval_iters=1, global_batch_size=8, micro_batch_size=2, **overrides)


def _run(spec, ranks: int, name: str, where: Path, probe: bool = False) -> str:
    from kd.distill import spec_to_json

    entry = [str(REPO / "tests/kd/_probe_optimizer.py")] if probe else ["-m", "kd.distill"]
    start = time.time()
    outputs = run_ranks([*entry, "--spec", str(spec_to_json(spec, where / f"{name}.json"))],
                        ranks, where / f"{name}_logs")
    print(f"matrix {name}: {ranks} ranks, {time.time() - start:.1f} s")  # for the record (-s)
    return "\n".join(outputs)


def _stopped_copy(src: Path, dst: Path, iteration: int) -> None:
    """What a stop right after the save of ``iteration`` leaves in ``dst``'s checkpoints."""
    assert ckpts.is_complete(src, iteration), (src, iteration, sorted(p.name for p in src.iterdir()))
    dst.mkdir(parents=True)
    shutil.copytree(src / f"iter_{iteration:07d}", dst / f"iter_{iteration:07d}")
    (dst / ckpts.TRACKER).write_text(str(iteration))
    if (src / ckpts.LAYOUTS).is_file():
        shutil.copy(src / ckpts.LAYOUTS, dst / ckpts.LAYOUTS)


@pytest.fixture
def matrix(kd_runs, dense_student, anymodel_student, tiny_teacher, token_prefix):
    """The uninterrupted run of a case, run once per test (one test per case, so that xdist
    workers never run the same case twice)."""
    where = kd_runs / "matrix"
    where.mkdir(exist_ok=True)
    done: dict = {}

    def get(case: str):
        if case not in done:
            student = anymodel_student if "anymodel" in case else dense_student
            spec = _spec(case, where / case, student, tiny_teacher, token_prefix)
            done[case] = (spec, _run(spec, CASES[case][0], case, where, probe=case == "dp2"))
        return done[case]

    get.where = where
    get.models = (dense_student, anymodel_student, tiny_teacher, token_prefix)
    return get


def _resume(matrix, case: str, ranks: int | None = None, label: str | None = None, **extra):
    spec, full = matrix(case)
    at = CASES[case][2]
    label = label or f"{case}_resumed"
    out = matrix.where / label
    _stopped_copy(Path(spec.output_dir) / "checkpoints", out / "checkpoints", at)
    student = Path(spec.student)
    dense, _, teacher, prefix = matrix.models
    resumed_spec = _spec(case, out, student, teacher, prefix, **extra)
    text = _run(resumed_spec, ranks or CASES[case][0], label, matrix.where)
    return spec, full, resumed_spec, text, at


def _assert_continues(full: str, resumed: str, at: int, rel: float | None) -> None:
    """Training losses after ``at`` as the uninterrupted run's (``rel`` None: bitwise), and
    validation after the resume; its values as well at the same DP (Bridge's validation
    sampler shards its random order by DP rank, so another DP validates other samples)."""
    before, after = losses_of(full), losses_of(resumed)
    assert sorted(before) == list(range(1, ITERS + 1)), before
    assert sorted(after) == list(range(at + 1, ITERS + 1)), after  # resumed, not restarted
    for it in after:
        if rel is None:
            assert after[it] == before[it], (it, before[it], after[it])
        else:
            assert after[it] == pytest.approx(before[it], rel=rel), (it, before[it], after[it])
    v_full, v_resumed = validation_losses(full), validation_losses(resumed)
    assert (4, False) in v_full and (ITERS, False) in v_full, sorted(v_full)
    for key in [k for k in v_resumed if k[0] > at and rel is None]:
        for name, value in v_full[key].items():
            got = v_resumed[key][name]
            assert got == value if rel is None else got == pytest.approx(value, rel=rel), (
                key, name, value, got)
    assert any(k[0] > at for k in v_resumed), sorted(v_resumed)  # validated after the resume


@pytest.mark.dist
@pytest.mark.parametrize("case", list(CASES))
def test_layout_resumes_on_the_uninterrupted_curve(matrix, case):
    spec, full, resumed_spec, resumed, at = _resume(matrix, case)
    _assert_continues(full, resumed, at, rel=None)
    assert f"resuming from iteration {at} to {ITERS}" in resumed
    assert "AssertionError" not in resumed
    ranks = CASES[case][0]
    dp = ranks // (spec.train.tp * spec.train.pp)
    summary = tagged_json(resumed, "KD_SUMMARY")
    assert (summary["world_size"], summary["tp"], summary["pp"]) == (
        ranks, spec.train.tp, spec.train.pp)
    assert summary["iteration"] == ITERS and summary["start_iteration"] == at
    saved = ckpts.saved_layout(Path(resumed_spec.output_dir) / "checkpoints")
    assert (saved.tp, saved.pp, saved.dp, saved.distributed_optimizer) == (
        spec.train.tp, spec.train.pp, dp, dp > 1), saved
    if case == "dp2":  # the launcher's default at DP > 1: the distributed optimizer shards Adam
        ranks_seen = [json.loads(ln.removeprefix("KD_OPTIM ")) for ln in full.splitlines()
                      if ln.startswith("KD_OPTIM ")]
        assert len(ranks_seen) == 2 and all(r["distributed_optimizer"] for r in ranks_seen)
        total = ranks_seen[0]["student_params"]
        for r in ranks_seen:
            assert 0.4 * total < r["adam_state_elements"] < 0.6 * total, (r, total)
        kept = ckpts.complete_iterations(Path(spec.output_dir) / "checkpoints")
        assert kept == [6, 8], kept  # checkpoint.keep_last=2
        assert "recompute selective" in full
    if case == "tp2xdp2_overlap":
        assert "overlap grad reduce True, distributed optimizer True" in resumed
    if case != "pp2_anymodel_full":  # the pruned student starts near its teacher already
        assert losses_of(full)[ITERS] < losses_of(full)[1]  # it trains
    if case == "pp2_anymodel_full":  # the KD loss of both models is the PP1 one across stages
        assert "recompute full" in resumed
        _, anymodel, teacher, prefix = matrix.models
        pp1_spec = _spec(case, matrix.where / "pp1", anymodel, teacher, prefix, pp=1)
        pp1 = _run(pp1_spec, 1, "pp1", matrix.where)
        one, two = losses_of(pp1), losses_of(full)
        for it in one:
            assert two[it] == pytest.approx(one[it], rel=1e-5), (it, one[it], two[it])
        v1, v2 = validation_losses(pp1), validation_losses(full)
        assert sorted(v1) == sorted(v2) == [(4, False), (8, False), (8, True)]
        for key, values in v1.items():
            assert {"lm loss", "total loss", "logits distillation loss"} <= set(values)
            for name, value in values.items():
                assert v2[key][name] == pytest.approx(value, rel=1e-5), (key, name)
    if case == "dp2":
        resumes_on_fewer_or_more_ranks(matrix)
        refuses_a_layout_it_cannot_load(matrix)


def resumes_on_fewer_or_more_ranks(matrix) -> None:
    """A requeue or relaunch that comes back on fewer or more nodes: the distributed optimizer's
    dp_reshardable save loads at another DP. The launcher keeps the optimizer kind of the save
    (launch/layout.py: ``auto`` follows it, so DP1 keeps the distributed optimizer on)."""
    for ranks in (1, 4):
        _, full, resumed_spec, resumed, at = _resume(
            matrix, "dp2", ranks=ranks, label=f"dp2_to_dp{ranks}", distributed_optimizer=True)
        _assert_continues(full, resumed, at, rel=RESHARD_REL)
        assert f"world {ranks}, tp 1, pp 1" in resumed and "distributed optimizer True" in resumed
        assert ckpts.saved_layout(Path(resumed_spec.output_dir) / "checkpoints").dp == ranks


def refuses_a_layout_it_cannot_load(matrix) -> None:
    """The optimizer kind switched off (a DP1 default without the launcher's resolution): the
    stage refuses before loading, naming the saved and the requested layouts."""
    from kd.distill import check_saved_layout

    spec, _ = matrix("dp2")
    with pytest.raises(ValueError, match=r"saved at tp=1 pp=1 dp=2 distributed optimizer on; "
                                         r"this start has tp=1 pp=1 dp=1 distributed optimizer off"):
        check_saved_layout(spec, 1, False)
    check_saved_layout(spec, 4, True)  # another dp is fine
