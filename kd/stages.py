"""Every stage of a run, declared once (stdlib only; read by ``kd/`` and ``launch/``).

One :class:`Stage` per stage: the kd module whose ``run(spec)`` its job calls, its spec class
(in ``kd/specs.py``), whose resources it gets, which rank's log is the one to follow, whether a
requeue keeps its work (it resumes from its checkpoints), and the cluster field that sets its
time limit. The plan, the executors, the backends, status, the cost estimate, ``kd/paths.py``
and ``kd/specs.py`` read these entries instead of comparing stage names.
"""

from __future__ import annotations

from dataclasses import dataclass

# the time kind of a stage -> the cluster profile field that sets its limit
TIME_FIELDS = {"prepare_data": "cluster.stages.prepare_data_min", "distill": "cluster.time_min",
               "export_hf": "cluster.stages.export_min", "eval": "cluster.stages.eval_min",
               "report": "cluster.stages.report_min"}
SELECT_STAGE = "select"  # checkpoint selection: picks a candidate_<N>, writes RUN/export/hf
CANDIDATE_PREFIX = "candidate_"


@dataclass(frozen=True)
class Stage:
    name: str
    module: str  # kd module whose run(spec) the job calls
    spec: str  # its spec class, a name in kd/specs.py
    time: str  # key of TIME_FIELDS: the cluster field that sets its time limit
    resources: str = "stages"  # "cluster": the profile's nodes, GPUs, cpus_per_task, mem_gb;
    # "stages": one task with cluster.stages.cpus_per_task / mem_gb
    log_rank: str = "first"  # "last": progress is printed on the last rank (Megatron)
    requeue: bool = False  # resumes from its checkpoints when requeued: the full signal delay
    env_fragment: str | None = None  # slurm_templates/ fragment sourced on GPU nodes
    checkpoints: bool = False  # writes RUN/distill/checkpoints (status describes them)
    eval_role: str | None = None  # an eval stage: the role of its results file

    @property
    def time_field(self) -> str:
        return TIME_FIELDS[self.time]

    @property
    def resource_field(self) -> str:
        """Where its cpus_per_task / mem_gb come from, for error messages."""
        return "cluster" if self.resources == "cluster" else "cluster.stages"


PIPELINE = (
    Stage("prepare_data", "kd.data", "DataSpec", time="prepare_data"),
    Stage("distill", "kd.distill", "DistillSpec", time="distill", resources="cluster",
          log_rank="last", requeue=True, env_fragment="distill_env.sh", checkpoints=True),
    Stage("export_hf", "kd.export", "ExportSpec", time="export_hf"),
    Stage("eval_student_before", "kd.evaluate", "EvalSpec", time="eval",
          eval_role="student_before"),
    Stage("eval_teacher", "kd.evaluate", "EvalSpec", time="eval", eval_role="teacher"),
    Stage("eval_student_after", "kd.evaluate", "EvalSpec", time="eval",
          eval_role="student_after"),
    Stage("report", "kd.report", "ReportSpec", time="report"),
)
# checkpoint selection (launch/select_plan.py replaces export_hf with these)
SELECT = Stage(SELECT_STAGE, "kd.selection", "SelectSpec", time="export_hf")
CANDIDATE = Stage(CANDIDATE_PREFIX + "<N>", "kd.selection", "CandidateSpec", time="export_hf")

NAMES = tuple(s.name for s in PIPELINE)
FIXED = {s.name: s for s in (*PIPELINE, SELECT)}
EVAL_STAGES = {s.name: s.eval_role for s in PIPELINE if s.eval_role}  # stage -> role


def candidate_stage(iteration: int) -> str:
    """The stage that exports (and quick-evaluates) one candidate iteration."""
    return f"{CANDIDATE_PREFIX}{iteration}"


def is_candidate(name: str) -> bool:
    digits = name.removeprefix(CANDIDATE_PREFIX)
    return name != digits and digits.isdigit() and not digits.startswith("0")


def get(name: str) -> Stage | None:
    """The stage called ``name`` (``candidate_<N>`` included), or None."""
    return FIXED.get(name) or (CANDIDATE if is_candidate(name) else None)


def stage(name: str) -> Stage:
    """The stage called ``name``; ValueError naming the known ones otherwise."""
    found = get(name)
    if found is None:
        raise ValueError(f"unknown stage {name!r}: one of {', '.join(FIXED)} or "
                         f"{CANDIDATE_PREFIX}<N>")
    return found


def time_field(name: str) -> str:
    """The cluster profile field that sets ``name``'s time limit (an unknown stage: eval's)."""
    found = get(name)
    return found.time_field if found else TIME_FIELDS["eval"]
