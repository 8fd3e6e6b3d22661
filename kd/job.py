"""The callable submitit runs on compute nodes: one stage of one run.

``StageJob(stage, module, spec)`` is pickled on the login node (by reference to this module:
no torch there) and called on each task of the job. It imports ``kd.<stage module>`` lazily,
calls its ``run(spec)``, and writes nothing itself: each stage writes its own outputs and its
``spec.done_marker``. It is a submitit ``Checkpointable``: on SIGUSR2 (time limit or
preemption) submitit calls ``checkpoint()`` and requeues the same job, which resumes from the
stage's own on-disk state (Megatron checkpoints for distill; finished files for the others).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import time
from typing import Any

try:  # submitit is on every node that runs jobs; keep the module importable without it
    from submitit.helpers import Checkpointable
except ImportError:  # pragma: no cover
    Checkpointable = object  # type: ignore[misc,assignment]


class StageJob(Checkpointable):
    def __init__(self, stage: str, module: str, spec: Any) -> None:
        self.stage = stage
        self.module = module
        self.spec = spec

    def __call__(self) -> Any:
        _setup_logging(self.stage)
        log = logging.getLogger("kdlaunch")
        restarts = os.environ.get("SLURM_RESTART_COUNT", "0")
        log.info("stage %s starting (module %s, host %s, restart %s)", self.stage, self.module,
                 os.uname().nodename, restarts)
        start = time.time()
        run = importlib.import_module(self.module).run
        result = run(self.spec)
        log.info("stage %s finished in %.1f s", self.stage, time.time() - start)
        return result

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Requeue as is: every stage resumes from what it already wrote to disk."""
        logging.getLogger("kdlaunch").warning(
            "stage %s: SLURM signalled the end of this allocation; requeueing", self.stage)
        return super().checkpoint(*args, **kwargs)


def _setup_logging(stage: str) -> None:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stdout, force=False,
        format=f"%(asctime)s [{stage}] %(levelname)s %(name)s: %(message)s",
    )
