"""Checkpoint selection as jobs: replace a graph's ``export_hf`` with candidates + ``select``.

Pure data, like ``launch/plan.py`` (which calls ``with_selection`` when the experiment asks for
selection)::

    distill -> candidate_<N> (one per iteration: export + quick eval) -> select -> eval_student_after
                                                                            (export/hf = the best)

Each candidate reuses the graph's own export and student-after eval specs, pointed at the
candidate's sub-run directory (``RUN/select/iter_NNNNNNN``) and, for the eval, limited to
``limit`` questions per subject and to the task selection goes by. This is the only candidate
planning: a sweep's ``select:`` sets its members' ``select:`` (``launch/sweep_plan.py``).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from kd import stages
from kd.paths import SELECT_STAGE, RunPaths, candidate_stage
from kd.sections import MMLU_GROUPS, VAL_LOSS, Select
from kd.specs import CandidateSpec, SelectSpec, replace_fields
from launch.graph import JobGraph


def quick_tasks(by: str, tasks: tuple[str, ...]) -> tuple[str, ...]:
    """The quick eval's tasks: MMLU (the eval stage always starts with it) and the task
    selection goes by."""
    if by == VAL_LOSS or by in MMLU_GROUPS:
        return ("mmlu",)
    if by not in tasks:  # Experiment.check refuses it first, naming select.by
        raise ValueError(f"select.by={by!r}: not among eval.tasks {list(tasks)}; select by "
                         f"mmlu, one of its categories, one of eval.tasks, or {VAL_LOSS}")
    return ("mmlu", by)


def with_selection(graph: JobGraph, select: Select, iterations: list[int], tensorboard: str | None):
    """``graph`` with its ``export_hf`` job replaced by one ``candidate_<N>`` job per iteration
    and a ``select`` job that ``eval_student_after`` waits on."""
    by = select.by
    paths = RunPaths(graph.run_dir)
    export = graph.job("export_hf")
    after = graph.job("eval_student_after") if "eval_student_after" in graph.stages else None
    if by != VAL_LOSS and after is None:
        raise ValueError(f"select.by={by!r} needs the eval stage (eval.enabled: true); without "
                         f"it select by {VAL_LOSS}")
    limit = int(select.limit) if select.limit and select.limit >= 1 else select.limit
    new: list = []
    for it in iterations:
        cand = RunPaths(paths.candidate_dir(it))
        ex = replace_fields(export.spec, out_dir=str(cand.hf_export), iteration=it,
                            done_marker=str(cand.stage_done("export_hf")))
        ev = None
        if by != VAL_LOSS:
            ev = replace_fields(after.spec, model=str(cand.hf_export),
                                out_file=str(cand.eval_result("student_after")),
                                tasks=quick_tasks(by, after.spec.eval.tasks), limit=limit,
                                cache_dir=None,
                                done_marker=str(cand.stage_done("eval_student_after")))
        stage = candidate_stage(it)
        new.append(replace(export, stage=stage, module=stages.CANDIDATE.module,
                           spec=CandidateSpec(iteration=it, export=ex, eval=ev,
                                              done_marker=str(paths.stage_done(stage))),
                           gpus_per_node=after.gpus_per_node if ev else export.gpus_per_node,
                           time_min=export.time_min + (after.time_min if ev else 0)))
    sel = replace(
        export, stage=SELECT_STAGE, module=stages.SELECT.module, deps=tuple(j.stage for j in new),
        cpus_per_task=1,
        spec=SelectSpec(candidates=tuple((it, str(paths.candidate_dir(it))) for it in iterations),
                        out_dir=export.spec.out_dir, selection_dir=str(paths.select),
                        select=select, tensorboard=tensorboard,
                        done_marker=str(paths.stage_done(SELECT_STAGE))))
    jobs = []
    for j in graph.jobs:
        if j.stage == "export_hf":
            jobs += [*new, sel]
            continue
        deps = tuple(SELECT_STAGE if d == "export_hf" else d for d in j.deps)
        if j.stage == "report":
            j = replace(j, spec=replace(j.spec, selection=str(paths.selection)))
        jobs.append(replace(j, deps=deps))
    return JobGraph(run_dir=Path(graph.run_dir), jobs=tuple(jobs), external=graph.external)
