"""Experiment + cluster + run directory -> JobGraph: pure data, no I/O.

The graph of the guide's pipeline::

    prepare_data -> distill -> export_hf -> eval_student_after --+
    eval_student_before (no dependency) -------------------------+-> report
    eval_teacher        (no dependency) -------------------------+

With checkpoint selection (``select:``), ``export_hf`` becomes ``candidate_<N>`` jobs (export +
quick eval of each iteration) and a ``select`` job that writes ``export/hf`` from the best one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from kd import stages
from kd.paths import RunPaths
from kd.specs import (
    DataSpec,
    DistillSpec,
    EvalSpec,
    ExportSpec,
    ReportSpec,
)
from launch.config import Cluster, Experiment, tasks_per_node
from launch.graph import Job, JobGraph
from launch.layout import require_resolved


def _abs(path: str | None) -> str | None:
    """Local paths become absolute (jobs run elsewhere); Hub ids and None pass through."""
    if path is None:
        return None
    expanded = os.path.expanduser(path)
    if os.path.isabs(expanded) or os.path.exists(expanded) or expanded.startswith("."):
        return os.path.abspath(expanded)
    return path


def data_blend(exp: Experiment, paths: RunPaths) -> tuple[tuple[float, str], ...]:
    """The Megatron blend ((weight, prefix), ...) the data stage produces (seed: ``1.0 prefix``)."""
    blend = []
    for s in exp.data.sources:
        if s.prefix:
            blend.append((s.weight, _abs(s.prefix)))
            continue
        blend.append((s.weight, str(paths.data_prefix(s.name, exp.data.json_keys[0]))))
    return tuple(blend)


def keep_iterations(exp: Experiment) -> tuple[int, ...]:
    """Saved iterations ``checkpoint.keep_last`` must never delete: export.iteration and the
    checkpoint-selection candidates (``select``, which a sweep sets for its members)."""
    chosen = {exp.export.iteration} if exp.export.iteration is not None else set()
    if exp.select.enabled:
        chosen |= set(exp.select.candidates(exp.train))
    return tuple(sorted(chosen))


SHAREABLE = ("prepare_data", "eval_student_before", "eval_teacher")


def plan(exp: Experiment, cluster: Cluster, run_dir: str | Path,
         shared: Mapping[str, str | Path] | None = None) -> JobGraph:
    paths = RunPaths(Path(run_dir))
    unknown = sorted(set(shared or {}) - set(SHAREABLE))
    if unknown:
        raise ValueError(f"plan(shared=...): {', '.join(unknown)} cannot be shared; "
                         f"shareable stages: {', '.join(SHAREABLE)}")
    owner = {stage: RunPaths(Path(d)) for stage, d in (shared or {}).items()}
    res = cluster.stages
    from launch.cost import stage_limits  # time limits: pinned, or auto from the estimate

    limits = stage_limits(exp, cluster)
    gpus = cluster.gpus_per_node
    eval_gpus = gpus if (gpus and cluster.gpu_eval) else 0  # data-parallel eval: all of them
    device = "cuda" if gpus else "cpu"
    jobs: list[Job] = []

    def add(name: str, spec: Any, deps: tuple[str, ...] = (), **kw: Any) -> None:
        st = stages.stage(name)  # module, resources, requeue: declared once in kd/stages.py
        if st.resources == "cluster":
            kw = {"nodes": cluster.nodes, "tasks_per_node": tasks_per_node(cluster),
                  "gpus_per_node": gpus, "cpus_per_task": cluster.cpus_per_task,
                  "mem_gb": cluster.mem_gb, **kw}
        kw.setdefault("cpus_per_task", res.cpus_per_task)
        kw.setdefault("mem_gb", res.mem_gb)
        jobs.append(Job(stage=name, module=st.module, spec=spec, deps=deps,
                        time_min=limits[name], requeue=st.requeue, **kw))

    student, teacher = _abs(exp.student.path), _abs(exp.teacher.path)
    needs_data = any(not s.prefix for s in exp.data.sources)
    # Specs hold the experiment's own section objects; only what this job decides (absolute
    # paths, the device, CPU fallbacks, resolved layout) is replaced here. A new knob needs no
    # line in this file.
    if needs_data and "prepare_data" not in owner:
        d = exp.data
        data = replace(d, sources=tuple(replace(s, jsonl=_abs(s.jsonl), prefix=_abs(s.prefix))
                                        for s in d.sources),
                       tokenizer=_abs(d.tokenizer) or student,
                       workers=min(d.workers, res.cpus_per_task))  # the CPUs the job gets
        add("prepare_data",
            DataSpec(data=data, out_dir=str(paths.data),
                     done_marker=str(paths.stage_done("prepare_data"))))

    require_resolved(exp)
    t = exp.train
    data_owner = owner.get("prepare_data", paths)
    add("distill",
        DistillSpec(
            student=student, teacher=teacher,
            data_blend=data_blend(exp, data_owner),
            output_dir=str(paths.distill),
            train=t if gpus else replace(t, precision="fp32"),
            kd=exp.kd, device=device, done_marker=str(paths.stage_done("distill")),
            optimizer=exp.optimizer, checkpoint=exp.checkpoint, logging=exp.logging,
            student_megatron_checkpoint=_abs(exp.student.megatron_checkpoint),
            # one index cache per blend owner: sweep members sharing prepare_data share it
            index_cache=_abs(exp.data.index_cache) or str(data_owner.index_cache),
            keep_iterations=keep_iterations(exp),
            trust_remote_code=exp.trust_remote_code,
            world_size=cluster.nodes * tasks_per_node(cluster)),
        deps=("prepare_data",) if needs_data else ())

    if exp.export.enabled:
        add("export_hf",
            ExportSpec(checkpoints=str(paths.checkpoints), out_dir=str(paths.hf_export),
                       student=student,
                       export=replace(exp.export, hf_template=_abs(exp.export.hf_template)),
                       done_marker=str(paths.stage_done("export_hf")),
                       trust_remote_code=exp.trust_remote_code),
            deps=("distill",))

    if exp.eval.enabled:
        e = exp.eval
        ev = replace(e, limit=int(e.limit) if e.limit and e.limit >= 1 else e.limit,
                     dtype=e.dtype if eval_gpus else "float32", include_path=_abs(e.include_path))
        evals = (("eval_student_before", "student_before", student, ()),
                 ("eval_teacher", "teacher", teacher, ()),
                 ("eval_student_after", "student_after", str(paths.hf_export), ("export_hf",)))
        for stage, role, model, deps in evals:
            if stage in owner:
                continue
            add(stage,
                EvalSpec(role=role, model=model, out_file=str(paths.eval_result(role)),
                         eval=ev, device="cuda" if eval_gpus else "cpu",
                         cache_dir=_abs(cluster.eval_cache_dir) if role == "teacher" else None,
                         seed=t.seed, done_marker=str(paths.stage_done(stage)),
                         trust_remote_code=exp.trust_remote_code),
                deps=deps, gpus_per_node=eval_gpus)
        add("report",
            ReportSpec(before=str(owner.get("eval_student_before", paths)
                                  .eval_result("student_before")),
                       after=str(paths.eval_result("student_after")),
                       teacher=str(owner.get("eval_teacher", paths).eval_result("teacher")), out_dir=str(paths.report),
                       title=f"Knowledge distillation: {exp.name}",
                       done_marker=str(paths.stage_done("report"))),
            deps=("eval_student_before", "eval_teacher", "eval_student_after"),
            cpus_per_task=1)
    external = {stage: rp.root for stage, rp in owner.items()
                if any(stage in j.deps for j in jobs)}
    graph = JobGraph(run_dir=paths.root, jobs=tuple(jobs), external=external)
    if exp.select.enabled:  # export_hf -> candidate_<N> jobs + select (launch/select_plan.py)
        from launch.select_plan import with_selection

        graph = with_selection(graph, exp.select, exp.select.candidates(t),
                               tensorboard=str(paths.tensorboard))
    return graph
