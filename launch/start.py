"""One launch of one run: ``launch/distill.py`` and every member of ``launch/sweep.py`` go
through it.

``prepare`` refuses what needs neither files nor the cluster (the layout, every value that
reaches a script) and predicts the cost; ``Launch.preflight`` refuses what the stages or the
cluster would refuse (``launch/preflight.py``, then the backend's live check); ``Launch.start``
creates the run directory and, under its lock, the manifest (a new one, or the one an earlier
launch of the same config wrote, whose queued jobs are adopted), records the cost prediction and
runs the submit loop (``launch/submit.py``); the backend decides how the launch ends
(``Backend.finish``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from launch import backends, cost, preflight, submit
from launch import manifest as mf
from launch.config import Cluster, Experiment
from launch.graph import JobGraph
from launch.schema import ConfigError, to_dict


@dataclass
class Launch:
    experiment: Experiment  # resolved (launch.layout): no ``auto`` left
    cluster: Cluster
    graph: JobGraph
    run_name: str  # SLURM job names: kd-<run_name>-<stage>
    backend: backends.Backend
    prediction: Any  # launch.cost.predict

    @property
    def config_hash(self) -> str:
        return mf.config_hash(to_dict(self.experiment))

    def describe(self) -> str:
        return submit.describe(self.graph)

    def dry_run_text(self) -> str:
        return dry_run_text(self.graph, self.backend)

    def estimate(self) -> str:
        return cost.text(self.prediction, self.graph, self.experiment)

    def preflight(self, echo: Callable[[str], None] = print) -> None:
        """Refuse (ConfigError) what a stage or the cluster would refuse: files, models,
        memory, time limits, the profile, then the live cluster."""
        preflight.check(self.experiment, self.cluster)
        self.backend.check_live(self.graph, echo)

    def start(self, echo: Callable[[str], None] = print, wait: bool = False) -> int:
        """Create the run directory, write the manifest under the run's lock and submit every
        unfinished stage; the exit code. ConfigError when the directory cannot be created or
        holds another config's run."""
        run_dir = self.graph.run_dir
        try:
            run_dir.mkdir(parents=True, exist_ok=True)  # default mode: the user's umask decides
        except OSError as e:
            raise ConfigError(f"--run-dir {run_dir}: cannot create it ({e.strerror}); choose a "
                              f"writable path") from None
        exp_resolved, cluster_resolved = to_dict(self.experiment), to_dict(self.cluster)
        path = run_dir / "manifest.json"
        with submit.run_lock(run_dir):
            # read under the lock: a launch that held it before this one recorded its job ids,
            # which this one adopts instead of submitting them a second time
            manifest = (mf.Manifest.load(path)
                        or mf.Manifest.create(path, run_dir, exp_resolved, cluster_resolved))
            manifest.check_config(exp_resolved)
            manifest.set_cluster(cluster_resolved)
            # the prediction that status, the report and the sweep trend compare
            manifest.set_cost(cost.record(self.prediction, self.graph, self.experiment))
            manifest.save()
            return submit.launch(self.graph, self.cluster, manifest, self.run_name, wait=wait,
                                 echo=echo, backend=self.backend)


def dry_run_text(graph: JobGraph, backend: backends.Backend) -> str:
    """The job graph and what the backend would run (SLURM: every sbatch script)."""
    return "\n".join([submit.describe(graph), "", backend.dry_run_text(graph)])


def prepare(experiment: Experiment, cluster: Cluster, graph: JobGraph, run_name: str) -> Launch:
    """Refuse (ConfigError) what needs neither files nor the cluster: a layout the world does
    not divide, and any value that would reach a script unquotable (``launch.shell``, through
    the backend's scripts), before the run directory, the manifest or any job exists."""
    preflight.check_layout(experiment, cluster)
    backend = backends.for_cluster(cluster, graph.run_dir, run_name)
    backend.check_scripts(graph)
    return Launch(experiment, cluster, graph, run_name, backend,
                  cost.predict(experiment, cluster))
