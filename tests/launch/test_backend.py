"""The Backend protocol (launch/backends): the local backend's schedule (dependencies, room,
GPUs, failure propagation, cancel), the one submission loop of launch/submit.py run through
it, the kdlaunch entry point and the CLIs' shared parser, and one submit -> states -> cancel
round on the real SLURM test cluster."""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launch import backends, cli, layout
from launch import config as cfg
from launch import manifest as mf
from launch.backends.local import LocalBackend
from launch.graph import Job
from launch.plan import plan
from launch.schema import to_dict
from launch.submit import launch

REPO = Path(__file__).resolve().parents[2]
STUBS = "tests.launch.stub_stages"


# ---------------------------------------------------------------- a process starter we drive
class FakeProcess:
    """What LocalBackend needs of a submitit LocalJob; ends when the test says so."""

    ids = itertools.count(1000)

    def __init__(self, job: Job, gpus: tuple[int, ...], fail: bool, auto: bool):
        self.job, self.gpus, self.fail, self.auto = job, gpus, fail, auto
        self.job_id = str(next(self.ids))
        self.finished = self.cancelled = False

    def done(self) -> bool:
        if self.auto and not self.finished:  # ends at the first poll after it started
            self.finished = True
            if not self.fail and getattr(self.job.spec, "done_marker", None):
                marker = Path(self.job.spec.done_marker)
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.write_text("done\n")
        return self.finished

    def results(self):
        if self.fail or self.cancelled:
            raise RuntimeError(f"{self.job.stage} failed")
        return [None]

    def cancel(self, check: bool = True) -> None:
        self.cancelled = self.finished = True


class Starter:
    def __init__(self, fail: tuple[str, ...] = (), auto: bool = False):
        self.fail, self.auto = fail, auto
        self.procs: dict[str, FakeProcess] = {}
        self.running_at_start: list[int] = []  # how many ran beside each job at its start

    def __call__(self, job: Job, gpus: tuple[int, ...]) -> FakeProcess:
        self.running_at_start.append(sum(not p.finished for p in self.procs.values()))
        p = FakeProcess(job, gpus, job.stage in self.fail, self.auto)
        self.procs[job.stage] = p
        return p

    def end(self, stage: str) -> None:
        self.procs[stage].finished = True


def job(stage: str, *deps: str, cpus: int = 1, gpus: int = 0) -> Job:
    return Job(stage=stage, module=STUBS, spec=None, deps=deps, cpus_per_task=cpus,
               gpus_per_node=gpus)


def backend(tmp_path: Path, starter: Starter, cpus: int, gpus: int = 0) -> LocalBackend:
    return LocalBackend(run_dir=tmp_path, cpus=cpus, gpus=gpus, start=starter)


def submit_all(b: LocalBackend, jobs: list[Job]) -> dict[str, str]:
    ids: dict[str, str] = {}
    for j in jobs:
        ids[j.stage] = b.submit(j, [ids[d] if d in ids else d for d in j.deps])
    return ids


def state(b: LocalBackend, ids: dict[str, str]) -> dict[str, str]:
    rows, errors = b.states(list(ids.values()))
    assert errors == {}
    return {s: rows[i]["state"] for s, i in ids.items()}


# ---------------------------------------------------------------- the local schedule
def test_independent_stages_share_the_cpus_in_submission_order(tmp_path):
    st = Starter()
    b = backend(tmp_path, st, cpus=2)
    ids = submit_all(b, [job("a"), job("b"), job("c"), job("d", "a")])
    assert state(b, ids) == {"a": "RUNNING", "b": "RUNNING", "c": "PENDING", "d": "PENDING"}
    st.end("a")
    # d is ready now, but c was submitted first: c takes the free CPU
    assert state(b, ids) == {"a": "COMPLETED", "b": "RUNNING", "c": "RUNNING", "d": "PENDING"}
    st.end("b")
    assert state(b, ids)["d"] == "RUNNING"
    assert [s for s, p in st.procs.items()] == ["a", "b", "c", "d"]
    assert max(st.running_at_start) == 1  # never more than 2 at once on 2 CPUs


def test_a_job_larger_than_the_machine_runs_alone(tmp_path):
    st = Starter()
    b = backend(tmp_path, st, cpus=2)
    ids = submit_all(b, [job("big", cpus=8), job("small")])
    assert state(b, ids) == {"big": "RUNNING", "small": "PENDING"}
    st.end("big")
    assert state(b, ids) == {"big": "COMPLETED", "small": "RUNNING"}


def test_gpu_jobs_get_their_own_gpus(tmp_path):
    st = Starter()
    b = backend(tmp_path, st, cpus=16, gpus=4)
    ids = submit_all(b, [job("eval_a", gpus=1), job("distill", gpus=4), job("eval_b", gpus=1)])
    assert state(b, ids) == {"eval_a": "RUNNING", "distill": "PENDING", "eval_b": "RUNNING"}
    assert st.procs["eval_a"].gpus == (0,) and st.procs["eval_b"].gpus == (1,)
    st.end("eval_a")
    st.end("eval_b")
    assert state(b, ids)["distill"] == "RUNNING"
    assert st.procs["distill"].gpus == (0, 1, 2, 3)


def test_a_failed_stage_cancels_its_dependents_only(tmp_path):
    st = Starter(fail=("a",))
    b = backend(tmp_path, st, cpus=4)
    ids = submit_all(b, [job("a"), job("b", "a"), job("c", "b"), job("x")])
    st.end("a")
    st.end("x")
    rows, _ = b.states(list(ids.values()))
    got = {s: rows[i]["state"] for s, i in ids.items()}
    assert got == {"a": "FAILED", "b": "CANCELLED", "c": "CANCELLED", "x": "COMPLETED"}
    assert rows[ids["b"]]["error"] == "dependency failed: a"
    assert rows[ids["c"]]["error"] == "dependency failed: b"
    assert set(st.procs) == {"a", "x"}  # b and c never started
    # a dependency this backend does not know (another launch's job) never completes
    lone = b.submit(job("y", "elsewhere"), ["12345"])
    assert b.states([lone])[0][lone]["state"] == "CANCELLED"


def test_cancel_stops_running_and_queued_jobs(tmp_path):
    st = Starter()
    b = backend(tmp_path, st, cpus=1)
    ids = submit_all(b, [job("a"), job("b"), job("c", "b")])
    assert sorted(b.cancel(list(ids.values()))) == sorted(ids.values())
    assert st.procs["a"].cancelled and "b" not in st.procs
    assert set(state(b, ids).values()) == {"CANCELLED"}
    assert b.cancel(list(ids.values())) == []  # nothing left to cancel


def test_backend_choice_and_unknown_executor():
    assert backends.get("slurm").name == "slurm" and backends.get("local").name == "local"
    with pytest.raises(ValueError, match="cluster.executor='pbs'"):
        backends.get("pbs")


# ---------------------------------------------------------------- the one loop, local backend
@pytest.fixture
def local_graph(make_experiment, tmp_path):
    def go(run_dir: Path, *cluster_over: str):
        cl = cfg.load_cluster("local", [f"env.PYTHONPATH={REPO}", *cluster_over])
        exp, _ = layout.load_experiment(str(make_experiment()),
                                        ["train.tp=1", "train.global_batch_size=2"], cl)
        graph = plan(exp, cl, run_dir)
        graph = dataclasses.replace(graph, jobs=tuple(
            dataclasses.replace(j, module=STUBS) for j in graph.jobs))
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / "manifest.json"
        manifest = (mf.Manifest.load(path)
                    or mf.Manifest.create(path, run_dir, to_dict(exp), to_dict(cl)))
        return graph, cl, manifest
    return go


def test_loop_records_failure_and_relaunch_skips_finished(local_graph, tmp_path):
    run = tmp_path / "run"
    graph, cl, manifest = local_graph(run)
    st = Starter(fail=("distill",), auto=True)
    out: list[str] = []
    code = launch(graph, cl, manifest, "unit", echo=out.append, poll_s=0,
                  backend=LocalBackend(cl, run, "unit", cpus=4, start=st))
    assert code == 1, out
    m = json.loads((run / "manifest.json").read_text())
    states = {s: r["state"] for s, r in m["stages"].items()}
    assert states == {"prepare_data": "COMPLETED", "distill": "FAILED",
                      "export_hf": "CANCELLED", "eval_student_before": "COMPLETED",
                      "eval_teacher": "COMPLETED", "eval_student_after": "CANCELLED",
                      "report": "CANCELLED"}
    assert m["stages"]["export_hf"]["error"] == "dependency failed: distill"
    assert m["stages"]["report"]["error"] == "dependency failed: eval_student_after"
    # the recorded id is the one the stage's logs are named by
    assert m["stages"]["distill"]["job_id"] == st.procs["distill"].job_id
    assert m["stages"]["distill"]["log"].endswith(f"{st.procs['distill'].job_id}_0_log.out")
    assert "failed or not run: distill, export_hf, eval_student_after, report" in out
    assert m["launches"][-1]["submitted"] == list(graph.stages)

    graph, cl, manifest = local_graph(run)  # relaunch after the fix
    st2 = Starter(auto=True)
    out = []
    code = launch(graph, cl, manifest, "unit", echo=out.append, poll_s=0,
                  backend=LocalBackend(cl, run, "unit", cpus=4, start=st2))
    assert code == 0, out
    assert sum("complete, skipped" in line for line in out) == 3
    assert set(st2.procs) == {"distill", "export_hf", "eval_student_after", "report"}
    m = json.loads((run / "manifest.json").read_text())
    assert all(r["state"] == "COMPLETED" for r in m["stages"].values())
    assert len(m["launches"]) == 2


def test_local_stages_run_side_by_side_for_real(local_graph, tmp_path):
    """Real submitit local jobs (the stub stages; three of the graph to keep it short): the
    edge prepare_data -> distill is kept, and eval_teacher runs beside prepare_data since the
    backend has room for two (2 CPUs each, 4 CPUs)."""
    run = tmp_path / "run"
    graph, cl, manifest = local_graph(run, "env.KD_STUB_SLEEP=2")
    keep = ("prepare_data", "distill", "eval_teacher")
    graph = dataclasses.replace(graph, jobs=tuple(j for j in graph.jobs if j.stage in keep))
    out: list[str] = []
    code = launch(graph, cl, manifest, "unit", echo=out.append,
                  backend=LocalBackend(cl, run, "unit", cpus=4))
    assert code == 0, "\n".join(out)
    rec = {p.stem: json.loads(p.read_text()) for p in (run / "stub").glob("*.json")}
    assert set(rec) == set(keep)
    assert rec["distill"]["start"] >= rec["prepare_data"]["end"]
    overlap = (min(rec["prepare_data"]["end"], rec["eval_teacher"]["end"])
               - max(rec["prepare_data"]["start"], rec["eval_teacher"]["start"]))
    assert overlap > 0.5, rec  # the teacher eval did not wait for data prep
    m = json.loads((run / "manifest.json").read_text())
    assert all(m["stages"][s]["state"] == "COMPLETED" for s in keep)


# ---------------------------------------------------------------- CLI
def test_kdlaunch_entry_point_dispatches(tmp_path):
    section = (REPO / "pyproject.toml").read_text().split("[project.scripts]", 1)[1]
    target = re.search(r'^kdlaunch\s*=\s*"([^"]+)"', section, re.M).group(1)
    module, _, func = target.partition(":")
    assert (module, func) == ("launch.cli", "main")
    res = subprocess.run([sys.executable, "-m", module, "distill", "--cluster", "pyxis_nemo",
                          "--config", "guide_llama31_8b", "--dry-run", "--run-dir",
                          str(tmp_path / "r")], cwd=REPO, capture_output=True, text=True)
    # the guide's models are not here: graph and sbatch printed, pre-flight refuses (exit 2)
    assert "===== sbatch: report =====" in res.stdout
    assert res.returncode == 2 and "student.path" in res.stderr, res.stderr
    assert "usage: kdlaunch distill" in subprocess.run(
        [sys.executable, "-m", module, "distill", "--help"], cwd=REPO, capture_output=True,
        text=True).stdout
    bad = subprocess.run([sys.executable, "-m", module, "status", ""], cwd=REPO,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "RUN_DIR is empty" in bad.stderr


def test_sweep_subcommands_and_the_documented_bare_form():
    from launch.sweep import parse_args

    bare = parse_args(["configs/sweeps/nightly_tiny.yaml", "partition=x", "--cluster", "ci",
                       "--set", "qos=y"])
    assert bare.command == "run" and bare.cluster == "ci"
    assert bare.cluster_overrides == ["partition=x", "qos=y"]
    assert parse_args(["run", "nightly_tiny", "--dry-run"]).dry_run
    check = parse_args(["check", "configs/sweeps/nightly_tiny.yaml", "--date", "2026-01-31"])
    assert check.command == "check" and check.date == "2026-01-31"
    with pytest.raises(SystemExit) as e:  # run's options are not check's
        parse_args(["check", "nightly_tiny", "--cluster", "ci"])
    assert e.value.code == cli.EXIT_INPUT


# ---------------------------------------------------------------- SLURM, real cluster
@pytest.mark.slurm
@pytest.mark.timeout(180)
def test_slurm_backend_submit_states_cancel(slurm_cluster, local_graph, tmp_path):
    """Two stub jobs (the second afterok the first) through the SLURM backend: both are
    seen queued, cancelling the first cancels the second without it ever running."""
    run = tmp_path / "run"
    graph, _, _ = local_graph(run)
    cl = cfg.load_cluster("ci", [f"env.PYTHONPATH={REPO}", "env.KD_STUB_SLEEP=120",
                                 "time_min=2", "stages.prepare_data_min=2"])
    b = backends.for_cluster(cl, run, "bk")
    first = b.submit(graph.job("prepare_data"), [])
    second = b.submit(graph.job("distill"), [first])
    try:
        rows, errors = b.states([first, second])
        assert errors == {} and rows[first]["state"] in backends.ACTIVE, rows
        assert rows[second]["state"] in backends.ACTIVE, rows
        assert b.cancel([first]) == [first]
        deadline = time.time() + 60
        while time.time() < deadline:
            rows, _ = b.states([first, second])
            if all(rows.get(i, {}).get("state") == "CANCELLED" for i in (first, second)):
                break
            time.sleep(2)
        assert rows[first]["state"] == rows[second]["state"] == "CANCELLED", rows
        assert not (run / "stub").exists()  # neither stub finished
    finally:
        b.cancel([first, second])


def test_only_the_slurm_backend_runs_slurm_commands():
    """sbatch/sacct/squeue/scancel/sinfo/scontrol appear as a command only in
    launch/backends/slurm.py and in launch/slurm_info.py (which only the SLURM backend imports:
    its live check, and ``cluster_info()`` for the cost estimate's site facts)."""
    allowed = {"launch/backends/slurm.py", "launch/slurm_info.py"}
    command = re.compile(r'\[\s*"(sbatch|sacct|squeue|scancel|sinfo|scontrol)"')
    users = {str(p.relative_to(REPO)) for p in (REPO / "launch").rglob("*.py")
             if command.search(p.read_text())}
    assert users <= allowed, users - allowed
    assert "launch/backends/slurm.py" in users
    importers = {str(p.relative_to(REPO)) for p in (REPO / "launch").rglob("*.py")
                 if re.search(r"import slurm_info|from launch.slurm_info", p.read_text())}
    assert importers <= {"launch/backends/slurm.py", "launch/backends/slurm_checks.py"}, importers


class _Launched:
    def __init__(self):
        self.calls: list[str] = []

    def follow(self):
        self.calls.append("follow")
        return 5

    def wait(self):
        self.calls.append("wait")
        return 7

    def hint(self):
        self.calls.append("hint")


def test_what_differs_between_backends_is_a_backend_method(tmp_path):
    """How a launch ends, what a stage shared from another launch waits on and whether scripts
    can be emitted are answered by the backend itself: nothing outside launch/backends asks
    which backend it has."""
    from launch.schema import ConfigError

    local = backends.get("local", cluster=cfg.load_cluster("local"), run_dir=tmp_path)
    slurm = backends.get("slurm", cluster=cfg.load_cluster("ci"), run_dir=tmp_path)
    runs = {name: _Launched() for name in ("local", "slurm", "slurm-wait")}
    assert local.finish(runs["local"], wait=False) == 5  # its jobs are children: followed
    assert slurm.finish(runs["slurm"], wait=False) == 0
    assert slurm.finish(runs["slurm-wait"], wait=True) == 7
    assert {k: v.calls for k, v in runs.items()} == {
        "local": ["follow"], "slurm": ["hint"], "slurm-wait": ["hint", "wait"]}
    # a shared stage its owner has not queued: SLURM cannot depend on it, local cancels
    assert local.external_id("eval_teacher", tmp_path, None) == "unknown:eval_teacher"
    assert slurm.external_id("eval_teacher", tmp_path, 42) == "42"
    with pytest.raises(ConfigError, match="eval_teacher is shared from .*launch that run first"):
        slurm.external_id("eval_teacher", tmp_path, None)
    with pytest.raises(ConfigError, match="--emit-sbatch.*runs locally"):
        local.emit_scripts(None, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    local.check_cluster(), local.check_live(None)  # nothing to ask on this machine


def test_no_module_outside_the_backends_asks_which_backend_it_has():
    repo = Path(__file__).resolve().parents[2]
    asks = re.compile(r"\.executor\s*[!=]=|runs_here|isinstance\([^)]*(Slurm|Local)Backend")
    found = [f"{p.relative_to(repo)}:{i}" for p in sorted((repo / "launch").rglob("*.py"))
             if "backends" not in p.parts and p.name != "config.py"  # config declares the knob
             for i, line in enumerate(p.read_text().splitlines(), 1) if asks.search(line)]
    assert not found, f"ask the backend (launch/backends/base.py) instead: {found}"
