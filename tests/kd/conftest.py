"""Session fixtures for the compute-side tests: tiny students, a token dataset, and a helper
that runs one Megatron job in its own process (Megatron state is global per process)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kd.dist_env import free_port, local_job_env
from kd.specs import DistillSpec, KDOptions, replace_fields

REPO = Path(__file__).resolve().parents[2]
VOCAB = 256  # assets.tiny.build_tokenizer's default


@pytest.fixture(scope="session")
def dense_student(fixture_cache: Path, tiny_tokenizer: Path) -> Path:
    """A standard Llama student: same shape as the teacher, other random weights."""
    from assets.tiny import build_llama

    return build_llama(
        fixture_cache / "student_dense", tiny_tokenizer, layers=2, hidden=64, ffn=128, seed=1
    )


@pytest.fixture(scope="session")
def anymodel_student(fixture_cache: Path, tiny_teacher: Path) -> Path:
    """The teacher in Puzzletron AnyModel form, attention 0 no-op and FFN 1 halved."""
    from assets.tiny import build_pruned_anymodel

    return build_pruned_anymodel(tiny_teacher, fixture_cache / "student_anymodel")


@pytest.fixture(scope="session")
def token_prefix(fixture_cache: Path) -> str:
    """A Megatron indexed dataset (<prefix>.bin/.idx) of random documents, ids < VOCAB."""
    prefix = fixture_cache / "data" / "random_text_document"
    if not Path(str(prefix) + ".idx").is_file():
        build_token_dataset(prefix, documents=400, seed=0)
    return str(prefix)


def build_token_dataset(prefix: Path, documents: int, seed: int) -> None:
    import numpy as np
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    prefix.parent.mkdir(parents=True, exist_ok=True)
    tmp = prefix.with_name(prefix.name + f".tmp{os.getpid()}")
    rng = np.random.default_rng(seed)
    builder = IndexedDatasetBuilder(str(tmp) + ".bin", dtype=np.int32)
    for _ in range(documents):
        # a repetitive bigram structure gives the models something learnable
        start = int(rng.integers(4, VOCAB))
        doc = (start + np.arange(int(rng.integers(20, 120))) * 7) % (VOCAB - 4) + 4
        builder.add_document(torch.from_numpy(np.append(doc, 2).astype(np.int32)), [len(doc) + 1])
    builder.finalize(str(tmp) + ".idx")
    os.replace(str(tmp) + ".bin", str(prefix) + ".bin")
    os.replace(str(tmp) + ".idx", str(prefix) + ".idx")


def make_spec(student: Path, teacher: Path, prefix: str, out: Path, **overrides) -> DistillSpec:
    """A CPU-sized DistillSpec; ``overrides`` replace any field of it or of its sections."""
    spec = DistillSpec(student=str(student), teacher=str(teacher), data_blend=((1.0, prefix),),
                       output_dir=str(out), kd=KDOptions(), device="cpu")
    base = dict(
        seq_length=32,
        micro_batch_size=2,
        global_batch_size=4,
        train_iters=6,
        lr=5e-3,
        min_lr=5e-4,
        lr_warmup_iters=1,
        eval_interval=1000,
        eval_iters=1,
        log_interval=1,
        save_interval=3,
        precision="fp32",
        split="98,2,0",
    )
    base.update(overrides)
    return replace_fields(spec, **base)


def run_python(
    args: list[str], log: Path, env: dict | None = None, timeout: int = 300, check: bool = True
) -> subprocess.CompletedProcess:
    """Run ``python ARGS`` from the repo root, tee its output to ``log``."""
    full_env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
        **(env or {}),
    }
    for key in (
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "LOCAL_WORLD_SIZE",
        "MASTER_ADDR",
        "MASTER_PORT",
    ):
        if env is None or key not in env:
            full_env.pop(key, None)
    proc = subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{args} exited {proc.returncode}; log: {log}\n{(proc.stdout + proc.stderr)[-4000:]}"
        )
    return proc


LOSS_LINE = re.compile(r"iteration\s+(\d+)/\s*\d+ \|.*?total loss: ([0-9.Ee+-]+)")


def losses_of(text: str) -> dict[int, float]:
    """{iteration: total loss} from Megatron's training log lines."""
    return {int(m.group(1)): float(m.group(2)) for m in LOSS_LINE.finditer(text)}


def tagged_json(text: str, tag: str) -> dict:
    lines = [ln for ln in text.splitlines() if ln.startswith(tag + " ")]
    assert lines, f"no {tag} line in the output"
    return json.loads(lines[-1].removeprefix(tag + " "))


def run_ranks(
    args: list[str], world: int, log_dir: Path, extra_env: dict | None = None, timeout: int = 400
) -> list[str]:
    """Start ``world`` processes of ``python ARGS`` as one torch.distributed job (the env vars
    kd.dist_env keeps); return each rank's output."""
    port = free_port()
    procs, logs = [], []
    for rank in range(world):
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": "1",
            **local_job_env(rank, world, port),
            **(extra_env or {}),
        }
        log = log_dir / f"rank{rank}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        handle = log.open("w")
        procs.append(
            subprocess.Popen(
                [sys.executable, *args], cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT
            )
        )
        logs.append((log, handle))
    codes = []
    for proc in procs:
        try:
            codes.append(proc.wait(timeout=timeout))
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
    outputs = []
    for log, handle in logs:
        handle.close()
        outputs.append(log.read_text())
    if any(codes):
        raise AssertionError(f"ranks exited {codes}; logs in {log_dir}\n{outputs[0][-4000:]}")
    return outputs


@pytest.fixture(scope="session")
def kd_runs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("kd_runs")


@pytest.fixture(scope="session")
def dense_tp1_run(kd_runs, dense_student, tiny_teacher, token_prefix) -> dict:
    """8 iterations, TP=1, standard student, through the teacher-gradient probe."""
    from kd.distill import spec_to_json

    out = kd_runs / "dense_tp1"
    spec = make_spec(
        dense_student, tiny_teacher, token_prefix, out, train_iters=8, save_interval=None
    )
    spec_file = spec_to_json(spec, kd_runs / "dense_tp1.json")
    t0 = time.time()
    proc = run_python(
        [str(REPO / "tests/kd/_probe_distill.py"), "--spec", str(spec_file)],
        kd_runs / "dense_tp1.log",
    )
    return {"spec": spec, "out": proc.stdout, "seconds": time.time() - t0}


@pytest.fixture(scope="session")
def dense_tp2_run(kd_runs, dense_student, tiny_teacher, token_prefix) -> dict:
    """The same run as dense_tp1_run with TP=2 over 2 gloo processes."""
    from kd.distill import spec_to_json

    out = kd_runs / "dense_tp2"
    spec = make_spec(
        dense_student, tiny_teacher, token_prefix, out, train_iters=8, save_interval=None, tp=2
    )
    spec_file = spec_to_json(spec, kd_runs / "dense_tp2.json")
    t0 = time.time()
    outputs = run_ranks(["-m", "kd.distill", "--spec", str(spec_file)], 2, kd_runs / "tp2_logs")
    # Megatron prints losses on the last rank, kd's summary on rank 0
    return {"spec": spec, "out": "\n".join(outputs), "seconds": time.time() - t0}


@pytest.fixture(scope="session")
def hetero_run(kd_runs, anymodel_student, tiny_teacher, token_prefix) -> dict:
    """6 iterations of the AnyModel student, checkpoints every 3, a done marker."""
    from kd.distill import spec_to_json

    out = kd_runs / "hetero"
    spec = make_spec(
        anymodel_student,
        tiny_teacher,
        token_prefix,
        out,
        train_iters=6,
        save_interval=3,
        done_marker=str(kd_runs / "stages" / "distill.done"),
    )
    spec_file = spec_to_json(spec, kd_runs / "hetero.json")
    t0 = time.time()
    proc = run_python(["-m", "kd.distill", "--spec", str(spec_file)], kd_runs / "hetero.log")
    return {"spec": spec, "out": proc.stdout, "seconds": time.time() - t0}
