"""Shared test fixtures: one cache of tiny models/tokenizers for the whole session (and across
sessions: builders in assets/ are idempotent), the real SLURM cluster, the fake scheduler, and
the tiers: markers are assigned here from what a test uses (see TIERS)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# ---------------------------------------------------------------- tiers (markers follow cost)
# unit:    pure logic, no real model/framework work, no cluster (the fake scheduler is unit)
# compute: starts real torch / Megatron / lm-eval / datasets work (tiny models, CPU)
# slurm:   the real SLURM test cluster;  e2e: a whole pipeline;  dist: gloo process groups;
# gpu:     CUDA (skipped elsewhere). A test gets every marker that applies; `unit` only if none.
COMPUTE_FIXTURES = {
    "tiny_tokenizer", "tiny_teacher", "demo_assets", "demo_prefix", "dense_student",
    "anymodel_student", "token_prefix", "mmlu_dataset", "mmlu_tasks", "always_c_model",
    "always_c_anymodel", "kd_runs", "dense_tp1_run", "dense_tp2_run", "hetero_run",
}
COMPUTE_DIRS = ("tests/kd/", "tests/eval/", "tests/data/")  # every test there runs the stack
# unit-looking tests that start real compute work in a subprocess (a child killed mid-save,
# the compat table that imports Megatron-Bridge)
COMPUTE_TESTS = ("tests/reliability/test_checkpoints.py::test_sig",
                 "tests/docs/test_documented_commands.py::test_compat_table_command")
TIERS = ("unit", "compute", "slurm", "e2e", "dist", "gpu")


def _tier_markers(item) -> set[str]:
    rel = item.nodeid
    names = set(getattr(item, "fixturenames", ()))
    marks = {m.name for m in item.iter_markers()} & set(TIERS)
    if "slurm_cluster" in names:
        marks.add("slurm")
    if names & COMPUTE_FIXTURES or rel.startswith(COMPUTE_DIRS) or rel.startswith(COMPUTE_TESTS) \
            or marks & {"dist", "e2e", "gpu"}:
        marks.add("compute")
    if not marks:
        marks.add("unit")
    return marks


# ---------------------------------------------------------------- order (2+ xdist workers)
# `--dist worksteal` first hands worker i the i-th contiguous chunk of the collection (sizes
# N//k, then what is left over the others) and later lets an idle worker steal from the end of
# another's queue. So the order decides who runs what first:
# - chunk 0: the cluster-exclusive faults run first, then the other real-cluster tests;
# - chunk 1: the local demo (longer than the faults run, so the exclusive lock is free again
#   when it ends), then the documented sweep on the cluster;
# - then the longest compute tests, round-robin over the chunks after 0, then the rest.
# No worker then sits blocked on the cluster lock while another holds it exclusively (seen:
# 160 s of a blocked worker per CI run), and the longest tests do not start last.
SLURM_FIRST = (
    "tests/reliability/test_faults.py::",  # CLUSTER_EXCLUSIVE
    "tests/e2e/test_pipeline.py::test_slurm_pipeline",
    "tests/e2e/test_pipeline.py::test_standalone_sbatch_scripts_run_on_slurm",
    "tests/bad_inputs/test_bad_boundary.py::test_concurrent_launches_queue_one_job_set",
)
SECOND_CHUNK = (
    "tests/docs/test_documented_commands.py::test_local_demo_commands",
    "tests/docs/test_documented_commands.py::test_sweep_and_status_commands_on_slurm",
)
COMPUTE_FIRST = (
    "tests/kd/test_layout_matrix.py::",
    "tests/reliability/test_restart_at_start.py::",
    "tests/kd/test_export.py::",
    "tests/kd/test_benchmark.py::",
    "tests/kd/test_parallel.py::",
    "tests/kd/test_options.py::",
    "tests/eval/test_eval_benchmark.py::",
    "tests/kd/test_distill.py::",
    "tests/kd/test_parity.py::",
)


def _rank(item, prefixes: tuple[str, ...]) -> int:
    return next((i for i, p in enumerate(prefixes) if item.nodeid.startswith(p)), len(prefixes))


def order_for_workers(items: list, workers: int) -> list:
    """The collection in the order described above (stable otherwise)."""
    second = sorted((i for i in items if _rank(i, SECOND_CHUNK) < len(SECOND_CHUNK)),
                    key=lambda i: _rank(i, SECOND_CHUNK))
    items = [i for i in items if i not in second]
    slurm = sorted((i for i in items if i.get_closest_marker("slurm")),
                   key=lambda i: _rank(i, SLURM_FIRST))
    rest = sorted((i for i in items if not i.get_closest_marker("slurm")),
                  key=lambda i: _rank(i, COMPUTE_FIRST))
    heavy = [i for i in rest if _rank(i, COMPUTE_FIRST) < len(COMPUTE_FIRST)]
    light = rest[len(heavy):]
    sizes, left = [], len(items) + len(second)
    for k in range(workers, 0, -1):  # xdist's split: len(pending) // workers_left
        sizes.append(left // k)
        left -= sizes[-1]
    chunks = [slurm, second] + [[] for _ in range(workers - 2)]
    for n, item in enumerate(heavy):  # round-robin over the chunks after the first
        chunks[1 + (n + 1) % (workers - 1)].append(item)
    for chunk, size in zip(chunks, sizes, strict=True):  # fill each chunk to its size
        take = max(0, size - len(chunk))
        chunk += light[:take]
        light = light[take:]
    chunks[-1] += light
    return [item for chunk in chunks for item in chunk]


class _WorkerOrder:
    @pytest.hookimpl(trylast=True)  # after -m / -k deselection: the chunk sizes are final
    def pytest_collection_modifyitems(self, config, items):
        workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
        if workers >= 2 and any(i.get_closest_marker("slurm") for i in items):
            items[:] = order_for_workers(items, workers)


def pytest_configure(config):
    config.pluginmanager.register(_WorkerOrder(), "kdlaunch-worker-order")


@pytest.hookimpl(tryfirst=True)  # the tier markers exist before -m selects on them
def pytest_collection_modifyitems(config, items):
    for item in items:
        for name in _tier_markers(item) - {m.name for m in item.iter_markers()}:
            item.add_marker(getattr(pytest.mark, name))
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:
        has_gpu = False
    if has_gpu:
        return
    skip = pytest.mark.skip(reason="needs CUDA GPUs: run on the device machine (see CONTRIBUTING.md)")
    for item in items:
        # the marker, not item.keywords: keywords hold every path part, so a checkout in a
        # folder named "gpu" would skip the whole suite
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)


@contextlib.contextmanager
def build_lock(cache: Path):
    """One builder at a time across processes (pytest-xdist workers share the fixture cache)."""
    with open(cache / ".build.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


@pytest.fixture(scope="session")
def fixture_cache() -> Path:
    """Where built fixtures live; shared by every test and kept between runs."""
    path = Path(os.environ.get("KD_TEST_CACHE", REPO / ".cache" / "test-fixtures")).absolute()
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def tiny_tokenizer(fixture_cache: Path) -> Path:
    from assets.tiny import build_tokenizer

    with build_lock(fixture_cache):
        return build_tokenizer(fixture_cache / "tokenizer")


@pytest.fixture(scope="session")
def demo_assets(fixture_cache: Path) -> dict:
    """The embedded demo's assets (assets.demo): trained tiny teacher, pruned AnyModel student,
    corpus, held-out kd_synth task and local MMLU, built once into the fixture cache."""
    from assets.demo import build

    with build_lock(fixture_cache):
        return build(fixture_cache / "demo")


@pytest.fixture(scope="session")
def demo_prefix(demo_assets: dict, fixture_cache: Path) -> dict:
    """Demo models + the demo corpus tokenized once (a ready Megatron prefix: no data stage)."""
    from kd import data
    from kd.sections import Data
    from kd.specs import DataSource, DataSpec

    spec = DataSpec(data=Data(sources=(DataSource(name="synthetic",
                                                  jsonl=str(demo_assets["corpus"])),),
                              tokenizer=str(demo_assets["teacher"]), workers=1),
                    out_dir=str(fixture_cache / "demo_tokenized"))
    with build_lock(fixture_cache):
        result = data.run(spec)
    return {**demo_assets, "prefix": result["blend"][0][1]}


def asset_overrides(assets: dict) -> list[str]:
    """Experiment overrides that point tiny_demo at the fixture-cache demo assets."""
    return [f"student.path={assets['student']}", f"teacher.path={assets['teacher']}",
            f"export.hf_template={assets['teacher']}", f"eval.include_path={assets['tasks']}",
            f"data.sources=[{{name: synthetic, jsonl: {assets['corpus']}}}]"]


@pytest.fixture(scope="session")
def tiny_teacher(fixture_cache: Path, tiny_tokenizer: Path) -> Path:
    from assets.tiny import build_llama

    with build_lock(fixture_cache):
        return build_llama(fixture_cache / "teacher", tiny_tokenizer, layers=2, hidden=64, ffn=128)


# ---------------------------------------------------------------- the real SLURM test cluster
START_SCRIPT = REPO / "scripts" / "slurm" / "start_cluster.sh"


def _sinfo_answers() -> bool:
    # `scontrol ping` fails at once when slurmctld is down; `sinfo` retries for about 9 s.
    for cmd in (["scontrol", "ping"], ["sinfo", "-h"]):
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=15)
        except (FileNotFoundError, subprocess.TimeoutExpired):
            return False
        if proc.returncode != 0 or not proc.stdout.strip():
            return False
    return True


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    """A running local SLURM cluster; returns the start script's one-line summary. Checked under
    the shared cluster lock: a controller the faults test stopped on purpose is not restarted
    from another worker (that would end its outage early)."""
    with cluster_lock(exclusive=False):
        return _start_cluster()


def _start_cluster() -> str:
    if _sinfo_answers():
        return "already running"
    if os.geteuid() != 0:
        pytest.skip(f"no SLURM cluster and not root: run `sudo {START_SCRIPT.relative_to(REPO)}`")
    proc = subprocess.run(["bash", str(START_SCRIPT)], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(
            f"{START_SCRIPT.name} failed (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}",
            pytrace=False,
        )
    return proc.stdout.strip()


# Tests that disturb the whole cluster (a node down, slurmctld stopped, an exclusive preemptor)
# hold this lock exclusively; every other slurm test holds it shared, so parallel workers
# (pytest-xdist) never run one beside them.
CLUSTER_EXCLUSIVE = ("tests/reliability/test_faults.py::",)
CLUSTER_LOCK = Path("/run/lock/kdlaunch-slurm-tests.lock")


@contextlib.contextmanager
def cluster_lock(exclusive: bool):
    try:
        fh = open(CLUSTER_LOCK, "a+")  # noqa: SIM115
    except OSError:  # not root: no shared lock directory, no parallel cluster tests either
        yield
        return
    with fh:
        fcntl.flock(fh, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield


@pytest.fixture(autouse=True)
def _cluster_sharing(request):
    if "slurm" not in request.keywords:
        yield
        return
    with cluster_lock(request.node.nodeid.startswith(CLUSTER_EXCLUSIVE)):
        yield


@pytest.fixture
def submitit_folder(slurm_cluster: str, tmp_path: Path) -> str:
    """A fresh submitit folder per test.

    Never reuse one across cluster rebuilds: a wiped StateSaveLocation restarts job ids at 1 and
    submitit would return the stale `<id>_0_result.pkl` of an earlier job.
    """
    return str(tmp_path / "submitit" / "%j")


@pytest.fixture
def slurm_executor(submitit_folder: str):
    """An AutoExecutor on the `debug` partition with small defaults; update_parameters() freely."""
    import submitit

    executor = submitit.AutoExecutor(folder=submitit_folder, cluster="slurm")
    executor.update_parameters(
        slurm_partition="debug",
        timeout_min=5,
        cpus_per_task=1,
        # torch on 4 virtual nodes x 4 CPUs overcommits the real cores: one thread per task
        slurm_setup=["export OMP_NUM_THREADS=1"],
    )
    return executor


# ---------------------------------------------------------------- the fake scheduler (logic tier)
FAKESCHED_BIN = REPO / "tests" / "fakesched" / "bin"


@pytest.fixture
def fake_slurm(tmp_path: Path, monkeypatch):
    """A fake SLURM on PATH (tests/fakesched): sbatch/squeue/sacct/scancel/scontrol/sinfo/srun
    with a state directory of its own; jobs run on this machine. Returns the state directory.
    Whatever is still running at the end is stopped (only this test's jobs: its own state)."""
    import json
    import signal
    import sys

    state = tmp_path / "fakesched"
    state.mkdir()
    monkeypatch.setenv("PATH", f"{FAKESCHED_BIN}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("KD_FAKESCHED_DIR", str(state))
    monkeypatch.setenv("KD_FAKESCHED_PYTHON", sys.executable)
    monkeypatch.delenv("SBATCH_PARTITION", raising=False)
    yield state
    subprocess.run(["scancel", *[p.stem for p in (state / "jobs").glob("*.json")]],
                   capture_output=True, check=False)
    for path in (state / "jobs").glob("*.json"):
        pid = json.loads(path.read_text()).get("pid")
        if pid:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
