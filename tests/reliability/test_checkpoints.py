"""A checkpoint counts only once complete; a kill mid-save leaves nothing any reader would pick.

Cheap: fabricated checkpoint directories laid out as a Megatron-Bridge torch_dist save leaves
them (shards, ``common.pt``, ``.metadata``, ``metadata.json``, ``train_state.pt``, then the
tracker file), and a real child process running the kill-path guard of ``kd.distill``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from kd import checkpoints as ckpts
from kd.export import resolve_iteration
from kd.paths import iteration_dir, latest_iteration
from kd.sections import Export
from kd.specs import ExportSpec

FINISHED_FILES = ("__0_0.distcp", "__0_1.distcp", "common.pt", ".metadata", "metadata.json",
                  "train_state.pt")


def _save(root: Path, iteration: int, files=FINISHED_FILES, track: bool = True) -> Path:
    d = iteration_dir(root, iteration)
    d.mkdir(parents=True)
    for name in files:
        (d / name).write_text(f"{name} of {iteration}")
    if track:
        (root / ckpts.TRACKER).write_text(str(iteration))
    return d


def _export(root: Path, tmp_path: Path, iteration: int | None = None) -> int:
    spec = ExportSpec(checkpoints=str(root), out_dir=str(tmp_path / "hf"), student="unused",
                      export=Export(hf_template="unused", iteration=iteration))
    return resolve_iteration(spec)


def _killed_mid_save(tmp_path: Path) -> Path:
    """The state issue 17 found: iter 40 saved; the save of 60 died after the data shards and
    common.pt, so the tracker still says 40."""
    root = tmp_path / "checkpoints"
    _save(root, 20)
    _save(root, 40)
    _save(root, 60, files=("__0_0.distcp", "common.pt"), track=False)
    return root


def test_kill_mid_save_is_never_picked(tmp_path):
    root = _killed_mid_save(tmp_path)
    assert ckpts.complete_iterations(root) == [20, 40]
    assert ckpts.latest_complete(root) == 40
    assert latest_iteration(root) == 40  # resume / completed_iteration
    assert [p.name for p in ckpts.incomplete_dirs(root)] == ["iter_0000060"]
    assert "incomplete (ignored): iter_0000060" in ckpts.describe(root)
    # export (and sweep selection, which exports chosen iterations) picks the complete one
    assert _export(root, tmp_path) == 40
    with pytest.raises(ValueError, match=r"export.iteration=60.*incomplete.*\[20, 40\]"):
        _export(root, tmp_path, 60)


def test_directory_name_alone_is_not_a_checkpoint(tmp_path):
    root = tmp_path / "checkpoints"
    assert ckpts.latest_complete(root) is None  # no directory at all
    _save(root, 10, track=False)  # every file, but the tracker never written: the save died
    assert ckpts.latest_complete(root) is None
    (root / ckpts.TRACKER).write_text("10")
    assert ckpts.latest_complete(root) == 10
    _save(root, 20, files=FINISHED_FILES[:-1], track=False)  # finalize not reached
    (root / ckpts.TRACKER).write_text("garbage")
    assert ckpts.latest_complete(root) is None  # an unreadable tracker proves nothing


def test_quarantine_moves_and_never_deletes(tmp_path):
    root = _killed_mid_save(tmp_path)
    first = ckpts.quarantine_incomplete(root)
    assert [p.parent.name for p in first] == [ckpts.QUARANTINE]
    assert (first[0] / "common.pt").read_text() == "common.pt of 60"  # contents kept
    assert sorted(p.name for p in root.glob("iter_*")) == ["iter_0000020", "iter_0000040"]
    # killed again at the same iteration: a second quarantine never overwrites the first
    _save(root, 60, files=("common.pt",), track=False)
    second = ckpts.quarantine_incomplete(root)
    assert second[0] != first[0] and first[0].is_dir() and second[0].is_dir()
    assert ckpts.quarantine_incomplete(root) == []
    assert ckpts.complete_iterations(root) == [20, 40]


# The kill path: a child process installs kd.distill's SIGTERM guard around a stand-in for
# Megatron-Bridge's save (the real one needs a trained model; the guard is what is under test),
# saves slowly in a loop, and the parent sends SIGTERM (as scancel / a node failure does).
CHILD = textwrap.dedent("""
    import sys, time, types
    from pathlib import Path
    root = Path(sys.argv[1])
    saves = []
    def save_checkpoint_and_time(it):
        d = root / f"iter_{it:07d}"
        d.mkdir(parents=True)
        (root / "saving").write_text(str(it))
        for name in ("__0_0.distcp", "common.pt", ".metadata", "metadata.json"):
            (d / name).write_text(name)
            time.sleep(0.3)
        (d / "train_state.pt").write_text("state")
        (root / "latest_checkpointed_iteration.txt").write_text(str(it))
        (root / "saving").unlink()
    train = types.ModuleType("megatron.bridge.training.train")
    train.save_checkpoint_and_time = save_checkpoint_and_time
    for name in ("megatron", "megatron.bridge", "megatron.bridge.training"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["megatron.bridge.training.train"] = train
    from kd.distill import guard_saves_against_termination
    guard_saves_against_termination()
    (root / "ready").write_text("1")
    it = 0
    while True:  # the training loop: a few steps, then a save
        time.sleep(float(sys.argv[2]))
        it += 10
        train.save_checkpoint_and_time(it)
""")


def _start(tmp_path: Path, step_s: float) -> tuple[subprocess.Popen, Path]:
    root = tmp_path / "checkpoints"
    root.mkdir()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(root), str(step_s)], env=env)
    deadline = time.time() + 60
    while not (root / "ready").exists():
        assert proc.poll() is None and time.time() < deadline, "child did not start"
        time.sleep(0.05)
    return proc, root


def _wait_for(cond, proc, timeout=20.0):
    deadline = time.time() + timeout
    while not cond():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.02)


def test_sigterm_during_save_finishes_it_and_starts_no_other(tmp_path):
    proc, root = _start(tmp_path, step_s=0.1)
    _wait_for(lambda: (root / "saving").exists(), proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 128 + signal.SIGTERM
    saved = sorted(root.glob("iter_*"))
    assert len(saved) == 1 and ckpts.complete_iterations(root) == [10]
    assert ckpts.incomplete_dirs(root) == []


def test_sigterm_between_saves_exits_without_saving(tmp_path):
    proc, root = _start(tmp_path, step_s=2.0)
    _wait_for(lambda: ckpts.latest_complete(root) == 10, proc)  # first save done, training on
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=5) == 128 + signal.SIGTERM
    assert sorted(p.name for p in root.glob("iter_*")) == ["iter_0000010"]


def test_sigkill_mid_save_leaves_nothing_a_reader_picks(tmp_path):
    proc, root = _start(tmp_path, step_s=0.1)
    _wait_for(lambda: ckpts.latest_complete(root) == 10 and (root / "saving").exists(), proc)
    proc.kill()  # SIGKILL after KillWait, or a dead node: no handler runs
    proc.wait(timeout=10)
    assert [p.name for p in ckpts.incomplete_dirs(root)] == ["iter_0000020"]
    assert ckpts.latest_complete(root) == 10 and latest_iteration(root) == 10
    assert _export(root, tmp_path) == 10
    ckpts.quarantine_incomplete(root)  # what the next distill start does
    assert sorted(p.name for p in root.glob("iter_*")) == ["iter_0000010"]
