"""The callable submitit runs on compute nodes: one stage of one run.

``StageJob(stage, module, spec)`` is pickled on the login node (by reference to this module:
no torch there) and called on each task of the job. It imports the stage module lazily and
calls its ``run(spec)``; each stage writes its own outputs and ``spec.done_marker``.

Requeue (time limit or preemption). SLURM sends SIGUSR2 ``signal_delay_s`` before the limit
(and on preemption, with ``preempt_send_user_signal``). For most stages submitit's own handler
does the work: it calls ``checkpoint()`` (this is a ``Checkpointable``) and requeues the same
job, which redoes the stage from what it already wrote. The distill stage instead lets
Megatron-Bridge trap SIGUSR2 (its exit-signal hook): training saves a checkpoint at the next
iteration and stops, ``kd.distill.run`` raises ``DistillInterrupted``, and we then hand the
signal to submitit's handler, which requeues (bounded by ``max_num_timeout``); the next
allocation resumes from that checkpoint, so at most one iteration is redone.

Provenance. When the stage wrote its done marker, rank 0 adds what actually ran to it
(``kd.provenance``: the versions of the packages this process imported, the active compat set,
torch/CUDA/GPU/driver, hosts, SLURM job/step ids, restart count, Python, wall time), right
after the stage returns; ``status --provenance`` and the report's "What ran" section read it.

Kill path (scancel, node failure, preemption without a grace signal). submitit only logs
SIGTERM, so training would go on until SIGKILL and could die inside a save it started after the
signal. ``kd.distill.guard_saves_against_termination`` traps SIGTERM instead: no save starts
after it (the process exits at once, or right after a save already under way). A save cut
anyway (SIGKILL, a dead node) never counts: ``kd.checkpoints`` decides completeness from
Megatron's tracker file and quarantines such directories on the next start.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
import time
from typing import Any

from kd import provenance, stages

try:  # submitit is on every node that runs jobs; keep the module importable without it
    from submitit.helpers import Checkpointable
except ImportError:  # pragma: no cover
    Checkpointable = object  # type: ignore[misc,assignment]

log = logging.getLogger("kdlaunch")


class StageJob(Checkpointable):
    def __init__(self, stage: str, module: str, spec: Any) -> None:
        self.stage = stage
        self.module = module
        self.spec = spec

    def __call__(self) -> Any:
        _setup_logging(self.stage)
        restarts = os.environ.get("SLURM_RESTART_COUNT", "0")
        log.info("stage %s starting (module %s, host %s, restart %s)", self.stage, self.module,
                 os.environ.get("SLURMD_NODENAME") or os.uname().nodename, restarts)
        start = time.time()
        marker = getattr(self.spec, "done_marker", None)
        before = provenance.marker_stat(marker)
        try:
            module = importlib.import_module(self.module)
            st = stages.get(self.stage)
            if st and st.requeue and self.module == st.module:  # saves, then asks to requeue
                result = self._distill(module)
            else:
                result = module.run(self.spec)
        finally:  # a marker this process wrote records what ran, even if the stage then raised
            self._record_provenance(marker, before, start)
        log.info("stage %s finished in %.1f s", self.stage, time.time() - start)
        return result

    def _record_provenance(self, marker: str | None, before: tuple | None, start: float) -> None:
        """Add what ran (kd.provenance) to the done marker, when this process wrote it: rank 0
        of the job, and only a marker written during this call (not one found already there).
        Never fails the stage."""
        try:
            after = provenance.marker_stat(marker)
            if after is None or after == before or provenance.rank() != 0:
                return
            record = provenance.collect(self.stage, start)
            if provenance.amend_marker(marker, record):
                log.info("stage %s %s", self.stage, provenance.summary_line(record))
        except Exception as e:  # noqa: BLE001  the stage's work is done: never fail it here
            log.warning("stage %s: provenance not recorded: %s: %s", self.stage,
                        type(e).__name__, e)

    def _distill(self, module: Any) -> Any:
        submitit_handler = signal.getsignal(signal.SIGUSR2)
        try:
            return module.run(self.spec, exit_signal=signal.SIGUSR2)
        except module.DistillInterrupted as e:
            log.warning("stage %s: %s; asking submitit to requeue", self.stage, e)
            if not callable(submitit_handler):  # not under submitit: nothing can requeue us
                raise
            submitit_handler(signal.SIGUSR2, None)  # rank 0 requeues and exits
            # other ranks: SLURM ends every task of the allocation when rank 0 requeues it
            time.sleep(3600)
            raise

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Requeue as is: every stage resumes from what it already wrote to disk."""
        log.warning("stage %s: end of this allocation (time limit or preemption); requeueing",
                    self.stage)
        return super().checkpoint(*args, **kwargs)


def main(argv: list[str] | None = None) -> int:
    """``python -m kd.job STAGE --spec FILE``: run one stage outside submitit (hand-submitted
    sbatch scripts from ``launch/distill.py --emit-sbatch``)."""
    import argparse
    import json

    from kd.specs import STAGE_SPECS, spec_from_dict, stage_spec

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("stage", help=f"one of {', '.join(STAGE_SPECS)} or candidate_<N>")
    p.add_argument("--spec", required=True, help="the stage's spec as JSON")
    args = p.parse_args(argv)
    try:
        module, cls = stage_spec(args.stage)
    except ValueError as e:
        p.error(str(e))
    with open(args.spec) as f:
        spec = spec_from_dict(cls, json.load(f))
    StageJob(args.stage, module, spec)()
    return 0


def console_logger(name: str) -> logging.Logger:
    """A stage module's logger printing to stdout (the job log) even outside ``StageJob``
    (``python -m kd.distill`` / ``kd.export``); idempotent."""
    logger = logging.getLogger(name)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("[%(asctime)s %(name)s] %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


def _setup_logging(stage: str) -> None:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stdout, force=False,
        format=f"%(asctime)s [{stage}] %(levelname)s %(name)s: %(message)s",
    )


if __name__ == "__main__":
    sys.exit(main())
