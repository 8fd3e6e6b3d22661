"""Checkpoint selection as jobs: replace a graph's ``export_hf`` with candidates + ``select``.

Pure data, like ``launch/plan.py`` (which calls ``with_selection`` when the experiment asks for
selection)::

    distill -> candidate_<N> (one per iteration: export + quick eval) -> select -> eval_student_after
                                                                            (export/hf = the best)

Each candidate reuses the graph's own export and student-after eval specs, pointed at the
candidate's sub-run directory (``RUN/select/iter_NNNNNNN``, the layout sweep candidates use) and,
for the eval, limited to ``limit`` questions per subject and to the task selection goes by.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from kd.paths import SELECT_STAGE, RunPaths, candidate_stage
from kd.select import VAL_LOSS, CandidateSpec, SelectSpec


def saved_iterations(train_iters: int, save_interval: int | None) -> list[int]:
    """Every iteration distill saves: each ``save_interval`` and the last one."""
    saved = set(range(save_interval, train_iters + 1, save_interval)) if save_interval else set()
    return sorted(saved | {train_iters})


def candidate_iterations(iterations: tuple[int, ...] | str, train_iters: int,
                         save_interval: int | None, final: int | None = None) -> list[int]:
    """The iterations to consider: ``"every_save"`` or a list (each must be saved); the run's
    final iteration (``export.iteration`` or the last one) is always among them. Raises
    ValueError naming ``select.iterations`` and the fix."""
    saved = saved_iterations(train_iters, save_interval)
    final = final or train_iters
    if iterations == "every_save":
        chosen = {it for it in saved if it <= final}
    else:
        bad = [it for it in iterations if it not in saved]
        if bad:
            raise ValueError(
                f"select.iterations={list(iterations)}: {', '.join(map(str, bad))} "
                f"{'is' if len(bad) == 1 else 'are'} not saved (train.train_iters={train_iters}, "
                f"train.save_interval={save_interval}); choose from {saved} or write every_save")
        chosen = set(iterations)
    return sorted(chosen | {final})


def quick_tasks(by: str, tasks: tuple[str, ...]) -> tuple[str, ...]:
    """The quick eval's tasks: MMLU (the eval stage always starts with it) and the task
    selection goes by."""
    if by in ("mmlu", VAL_LOSS) or by.startswith("mmlu_"):
        return ("mmlu",)
    if by not in tasks:
        raise ValueError(f"select.by={by!r}: not among eval.tasks {list(tasks)}; select by "
                         f"mmlu, one of its categories, one of eval.tasks, or {VAL_LOSS}")
    return ("mmlu", by)


def with_selection(graph, iterations: list[int], *, by: str, limit: int | float | None,
                   keep_candidates: bool, noise_z: float, tensorboard: str | None):
    """``graph`` with its ``export_hf`` job replaced by one ``candidate_<N>`` job per iteration
    and a ``select`` job that ``eval_student_after`` waits on."""
    from launch.plan import JobGraph  # plan imports this module

    paths = RunPaths(graph.run_dir)
    export = graph.job("export_hf")
    after = graph.job("eval_student_after") if "eval_student_after" in graph.stages else None
    if by != VAL_LOSS and after is None:
        raise ValueError(f"select.by={by!r} needs the eval stage (eval.enabled: true); without "
                         f"it select by {VAL_LOSS}")
    new: list = []
    for it in iterations:
        cand = RunPaths(paths.candidate_dir(it))
        ex = replace(export.spec, out_dir=str(cand.hf_export), iteration=it,
                     done_marker=str(cand.stage_done("export_hf")))
        ev = None
        if by != VAL_LOSS:
            ev = replace(after.spec, model=str(cand.hf_export),
                         out_file=str(cand.eval_result("student_after")),
                         tasks=quick_tasks(by, after.spec.tasks), limit=limit, cache_dir=None,
                         done_marker=str(cand.stage_done("eval_student_after")))
        stage = candidate_stage(it)
        new.append(replace(export, stage=stage, module="kd.select",
                           spec=CandidateSpec(iteration=it, export=ex, eval=ev,
                                              done_marker=str(paths.stage_done(stage))),
                           gpus_per_node=after.gpus_per_node if ev else export.gpus_per_node,
                           time_min=export.time_min + (after.time_min if ev else 0)))
    select = replace(
        export, stage=SELECT_STAGE, module="kd.select", deps=tuple(j.stage for j in new),
        cpus_per_task=1, time_min=export.time_min,
        spec=SelectSpec(candidates=tuple((it, str(paths.candidate_dir(it))) for it in iterations),
                        by=by, out_dir=export.spec.out_dir, selection_dir=str(paths.select),
                        tensorboard=tensorboard, keep_candidates=keep_candidates,
                        noise_z=noise_z, done_marker=str(paths.stage_done(SELECT_STAGE))))
    jobs = []
    for j in graph.jobs:
        if j.stage == "export_hf":
            jobs += [*new, select]
            continue
        deps = tuple(SELECT_STAGE if d == "export_hf" else d for d in j.deps)
        jobs.append(replace(j, deps=deps))
    return JobGraph(run_dir=Path(graph.run_dir), jobs=tuple(jobs), external=graph.external)
