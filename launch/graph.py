"""``Job`` and ``JobGraph``: what a launch queues, as pure data (stdlib only).

A leaf module: the planners (``launch/plan.py``, ``launch/select_plan.py``), the backends and the
submit loop all import it, and it imports nothing of ``launch/``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Job:
    stage: str
    module: str  # kd module whose run(spec) the job calls
    spec: Any
    deps: tuple[str, ...] = ()
    nodes: int = 1
    tasks_per_node: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int = 1
    time_min: int = 60
    mem_gb: int | None = None
    requeue: bool = False  # requeue on timeout (Checkpointable with max_num_timeout>0)


@dataclass(frozen=True)
class JobGraph:
    run_dir: Path
    jobs: tuple[Job, ...] = field(default_factory=tuple)
    external: dict[str, Path] = field(default_factory=dict)  # stage -> run dir that runs it

    def job(self, stage: str) -> Job:
        for j in self.jobs:
            if j.stage == stage:
                return j
        raise KeyError(stage)

    @property
    def stages(self) -> tuple[str, ...]:
        return tuple(j.stage for j in self.jobs)

    def dependents(self, stage: str) -> tuple[str, ...]:
        """Every stage that (transitively) depends on ``stage``."""
        out: list[str] = []
        for j in self.jobs:  # topological order: parents come first
            if stage in j.deps or any(d in out for d in j.deps):
                out.append(j.stage)
        return tuple(out)
