"""Every on-disk location of a run, defined once (stdlib only; imported by launch/ and kd/).

Layout of a run directory::

    RUN/manifest.json              resolved config, versions, job ids, stage states
    RUN/jobs/                      submitit folders (sbatch text, stdout/stderr per job)
    RUN/data/<name>.jsonl          raw text pulled from the HF dataset (or a copy of the local JSONL)
    RUN/data/<name>_<json_key>_document.{bin,idx}   Megatron indexed dataset
    RUN/data/index_cache/          Megatron's dataset indices (shared with sweep members)
    RUN/distill/checkpoints/iter_NNNNNNN/     Megatron checkpoints (+ latest_checkpointed_iteration.txt)
    RUN/distill/tensorboard/
    RUN/export/hf/                 distilled student in HF format (AnyModel layout if heterogeneous)
    RUN/eval/<role>.json           one results file per model (schema in kd/results.py)
    RUN/select/iter_NNNNNNN/       a checkpoint candidate (a sub-run: export/hf, eval/student_after.json)
    RUN/select/selection.{json,md,png}   which candidate became RUN/export/hf, and why
    RUN/report/report.{md,csv,png}
    RUN/stages/<stage>.done        completion markers written by each stage on success
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kd.stages import CANDIDATE_PREFIX, NAMES, SELECT_STAGE, candidate_stage, get

STAGES = NAMES  # the pipeline's stages, in graph order (kd/stages.py declares each)
EVAL_ROLES = ("student_before", "student_after", "teacher")
__all__ = ["CANDIDATE_PREFIX", "EVAL_ROLES", "SELECT_STAGE", "STAGES", "RunPaths",
           "candidate_stage", "is_stage", "iteration_dir", "latest_iteration"]


def is_stage(name: str) -> bool:
    return get(name) is not None


@dataclass(frozen=True)
class RunPaths:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).absolute())

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def jobs(self) -> Path:
        return self.root / "jobs"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def index_cache(self) -> Path:
        """Megatron's dataset index cache by default (data.index_cache overrides it)."""
        return self.data / "index_cache"

    def data_prefix(self, source_name: str, json_key: str = "text") -> Path:
        """Megatron prefix that ``megatron_preprocess_data`` writes for ``data/<name>.jsonl``."""
        return self.data / f"{source_name}_{json_key}_document"

    @property
    def distill(self) -> Path:
        return self.root / "distill"

    @property
    def checkpoints(self) -> Path:
        return self.distill / "checkpoints"

    @property
    def tensorboard(self) -> Path:
        return self.distill / "tensorboard"

    @property
    def hf_export(self) -> Path:
        return self.root / "export" / "hf"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    def eval_result(self, role: str) -> Path:
        assert role in EVAL_ROLES, role
        return self.eval / f"{role}.json"

    @property
    def select(self) -> Path:
        return self.root / "select"

    def candidate_dir(self, iteration: int) -> Path:
        """A candidate's sub-run directory (its own RunPaths: export/hf, eval/, stages/)."""
        return self.select / f"iter_{iteration:07d}"

    @property
    def selection(self) -> Path:
        return self.select / "selection.json"

    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def stages(self) -> Path:
        return self.root / "stages"

    def stage_done(self, stage: str) -> Path:
        assert is_stage(stage), stage
        return self.stages / f"{stage}.done"


def latest_iteration(checkpoints: Path) -> int | None:
    """The latest *complete* checkpoint (kd.checkpoints decides), or None when there is none."""
    from kd.checkpoints import latest_complete

    return latest_complete(checkpoints)


def iteration_dir(checkpoints: Path, iteration: int) -> Path:
    return Path(checkpoints) / f"iter_{iteration:07d}"
