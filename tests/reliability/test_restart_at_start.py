"""Everything distill writes on start is safe to redo (issue 24 item 6): a SIGKILL (node failure,
SLURM's KillWait) in the middle of the model build, of the dataset index build or of the
checkpoint load leaves nothing the next start trips over, and the run that finally completes
gives the losses of an uninterrupted run.

One output directory goes through five starts, each killed at one point by
``tests/reliability/_kill_at.py`` (whole process group, as SLURM does): the model build, halfway
through writing the last index file of the train split (before kd.compat's
``mcore-index-torn-writes`` that file stayed truncated under its final name and every later
start died loading it), just after the first checkpoint (iteration 3), in the checkpoint load,
then a start that runs to the end. A second, cheap test covers the repair of index files torn
before that fix.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy
import pytest

from kd import checkpoints as ckpts
from kd.distill import spec_to_json
from tests.conftest import build_lock
from tests.kd.conftest import build_token_dataset, losses_of, make_spec

REPO = Path(__file__).resolve().parents[2]
KILL_AT = REPO / "tests" / "reliability" / "_kill_at.py"


@pytest.fixture(scope="module")
def models(fixture_cache: Path, tiny_tokenizer: Path, tiny_teacher: Path) -> tuple:
    """(student, teacher, data prefix): tests/kd's dense student and token data, same builders."""
    from assets.tiny import build_llama

    prefix = fixture_cache / "data" / "random_text_document"
    with build_lock(fixture_cache):
        student = build_llama(fixture_cache / "student_dense", tiny_tokenizer, layers=2,
                              hidden=64, ffn=128, seed=1)
        if not Path(str(prefix) + ".idx").is_file():
            build_token_dataset(prefix, documents=400, seed=0)
    return student, tiny_teacher, str(prefix)


def start(spec_file: Path, log: Path, kill_at: str | None = None) -> subprocess.CompletedProcess:
    """One start of the stage in its own process group (the kill takes the whole group)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                "MASTER_PORT", "KD_KILL_AT", "KD_KILL_NTH"):
        env.pop(key, None)
    if kill_at:
        env["KD_KILL_AT"] = kill_at
    proc = subprocess.run([sys.executable, str(KILL_AT), "--spec", str(spec_file)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300,
                          start_new_session=True)
    log.write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    tail = (proc.stdout + proc.stderr)[-3000:]
    if kill_at:
        assert proc.returncode == -9 and f"KD_KILLED_AT {kill_at}" in proc.stdout, (log, tail)
    else:
        assert proc.returncode == 0, (log, tail)
    return proc


def index_files(cache: Path) -> dict[str, int]:
    """{name: elements} of every index file under its final name; each must load in full."""
    return {p.name: numpy.load(p).size for p in sorted(cache.glob("*.npy"))}


def test_kill_at_each_start_point_then_resume_matches_uninterrupted(tmp_path, models):
    t0 = time.time()
    student, teacher, prefix = models
    specs = {
        name: spec_to_json(make_spec(student, teacher, prefix, tmp_path / name, train_iters=6,
                                     save_interval=3), tmp_path / f"{name}.json")
        for name in ("reference", "run")
    }
    reference = losses_of(start(specs["reference"], tmp_path / "reference.log").stdout)
    assert sorted(reference) == [1, 2, 3, 4, 5, 6]

    out = tmp_path / "run"
    checkpoints, cache = out / "checkpoints", out / "dataset_cache"

    # 1. model build (the teacher's turn): nothing written yet
    start(specs["run"], tmp_path / "1-model_build.log", "model_build")
    assert not checkpoints.exists() or not list(checkpoints.glob("iter_*"))
    assert not cache.exists() or not list(cache.glob("*.npy"))

    # 2. halfway through the train split's shuffle index, its last file: the two files before
    # it are complete, the torn one is only a temporary file, never under the final name
    start(specs["run"], tmp_path / "2-index_write.log", "index_write")
    built = index_files(cache)
    assert sorted(n.rsplit("-", 1)[1] for n in built) == ["document_index.npy",
                                                          "sample_index.npy"], built
    assert len(list(cache.glob("*-train-shuffle_index.npy.*.kdtmp"))) == 1

    # 3. a start that rebuilds the index and trains; killed right after the iteration-3 save
    third = start(specs["run"], tmp_path / "3-after_save.log", "after_save")
    assert losses_of(third.stdout) == {i: reference[i] for i in (1, 2, 3)}
    assert len(index_files(cache)) == 6  # train and valid splits, 3 files each
    assert not list(cache.glob("*.kdtmp")), "the dead writer's temporary file stays"
    assert ckpts.complete_iterations(checkpoints) == [3]

    # 4. in the checkpoint load: it read the checkpoint, nothing applied; nothing changes
    fourth = start(specs["run"], tmp_path / "4-checkpoint_load.log", "checkpoint_load")
    assert "resuming from iteration 3" in fourth.stdout
    assert ckpts.complete_iterations(checkpoints) == [3]
    assert not ckpts.incomplete_dirs(checkpoints)

    # 5. the start that runs to the end resumes from 3 with the uninterrupted run's losses
    last = start(specs["run"], tmp_path / "5-complete.log")
    assert "resuming from iteration 3" in last.stdout
    assert losses_of(last.stdout) == {i: reference[i] for i in (4, 5, 6)}
    assert ckpts.complete_iterations(checkpoints) == [3, 6]
    assert len(index_files(cache)) == 6 and not list(cache.glob("*.kdtmp"))
    print(f"kill-at-start sequence: {time.time() - t0:.0f}s")


def test_index_files_torn_before_the_fix_are_dropped_and_rebuilt(tmp_path):
    """What an in-place write killed midway left (kdlaunch before mcore-index-torn-writes, or
    another writer): the files that do not load go, so megatron-core rebuilds the set; complete
    files, other datasets' files and a live writer's temporary file stay."""
    from kd.compat.patches import INDEX_TMP_SUFFIX, _AtomicIndexNumpy, drop_torn_index_files

    h = "0123abcd"
    whole = tmp_path / f"{h}-GPTDataset-train-document_index.npy"
    numpy.save(whole, numpy.arange(100, dtype=numpy.int32))
    data = whole.read_bytes()
    torn = {f"{h}-GPTDataset-train-shuffle_index.npy": data[: len(data) // 2],
            f"{h}-GPTDataset-train-sample_index.npy": b"",
            f"{h}-GPTDataset-train-x.npy": data[:60],  # inside the header
            "other-GPTDataset-train-shuffle_index.npy": b""}
    for name, content in torn.items():
        (tmp_path / name).write_bytes(content)
    dead = tmp_path / f"{h}-GPTDataset-train-y.npy.1{INDEX_TMP_SUFFIX}"
    dead.write_bytes(data[:10])
    live = tmp_path / f"{h}-GPTDataset-train-y.npy.2{INDEX_TMP_SUFFIX}"
    with open(live, "wb") as writer:
        fcntl.flock(writer, fcntl.LOCK_EX)
        gone = drop_torn_index_files(tmp_path, h)
    assert sorted(Path(p).name for p in gone) == sorted(
        [n for n in torn if n.startswith(h)] + [dead.name])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [whole.name, "other-GPTDataset-train-shuffle_index.npy", live.name])
    # the replacement numpy.save: the final name appears only complete, nothing else is left
    _AtomicIndexNumpy(numpy).save(str(tmp_path / f"{h}-new"), numpy.ones(5))
    assert numpy.load(tmp_path / f"{h}-new.npy").tolist() == [1.0] * 5
    assert not list(tmp_path.glob(f"{h}-new*{INDEX_TMP_SUFFIX}"))
