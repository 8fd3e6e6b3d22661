"""Which Megatron checkpoints are complete: the one rule every reader goes through.

A save writes ``checkpoints/iter_NNNNNNN/`` (the torch_dist shards, ``common.pt``, ``.metadata``,
``metadata.json``) and only *after* every rank finished writes the tracker file
``latest_checkpointed_iteration.txt`` (megatron-core's finalize step; with ``async_save`` that
step runs once the background writes of every rank are done). So a checkpoint is complete when its iteration is at most the tracker's
and its directory holds the files a finished save leaves. An ``iter_*`` directory past the
tracker is a save that was killed midway (SIGKILL after scancel, a node failure): no directory
name alone makes a checkpoint.

Incomplete directories are moved to ``checkpoints/incomplete/`` on the next start of distill
(``quarantine_incomplete``), never deleted: nothing already written is lost, and no reader that
globs ``iter_*`` sees them. Stdlib only: ``launch/`` (login node) uses it too.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

TRACKER = "latest_checkpointed_iteration.txt"
QUARANTINE = "incomplete"
# a finished torch_dist save always leaves these (common.pt: non-sharded state; .metadata:
# the distributed-checkpoint index written last, by the coordinator, at finalize)
REQUIRED_FILES = ("common.pt", ".metadata", "metadata.json")


def tracker_iteration(checkpoints: str | Path) -> int | None:
    """The iteration in Megatron's tracker file, or None when there is none (or it is unreadable)."""
    path = Path(checkpoints) / TRACKER
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def iteration_of(path: Path) -> int | None:
    name = path.name
    if not name.startswith("iter_"):
        return None
    digits = name.removeprefix("iter_")
    return int(digits) if digits.isdigit() else None


def is_complete(checkpoints: str | Path, iteration: int) -> bool:
    """True when ``iter_<iteration>`` is a finished save (see the module docstring)."""
    tracked = tracker_iteration(checkpoints)
    if tracked is None or iteration > tracked:
        return False
    d = Path(checkpoints) / f"iter_{iteration:07d}"
    return d.is_dir() and all((d / f).exists() for f in REQUIRED_FILES)


def complete_iterations(checkpoints: str | Path) -> list[int]:
    """The iterations of the complete checkpoints, ascending."""
    root = Path(checkpoints)
    if not root.is_dir():
        return []
    its = sorted(i for p in root.glob("iter_*") if (i := iteration_of(p)) is not None)
    return [i for i in its if is_complete(root, i)]


def latest_complete(checkpoints: str | Path) -> int | None:
    its = complete_iterations(checkpoints)
    return its[-1] if its else None


def incomplete_dirs(checkpoints: str | Path) -> list[Path]:
    root = Path(checkpoints)
    if not root.is_dir():
        return []
    out = []
    for p in sorted(root.glob("iter_*")):
        i = iteration_of(p)
        if i is not None and p.is_dir() and not is_complete(root, i):
            out.append(p)
    return out


def quarantine_incomplete(checkpoints: str | Path) -> list[Path]:
    """Move every incomplete ``iter_*`` directory into ``checkpoints/incomplete/`` (renamed with
    a timestamp so repeated kills never collide). Returns the new paths. Call it only while no
    save can be running (the start of distill, before training)."""
    moved = []
    for p in incomplete_dirs(checkpoints):
        dest_dir = p.parent / QUARANTINE
        dest_dir.mkdir(exist_ok=True)
        dest = dest_dir / f"{p.name}.{time.strftime('%Y%m%dT%H%M%S')}"
        n = 0
        while dest.exists():
            n += 1
            dest = dest_dir / f"{p.name}.{time.strftime('%Y%m%dT%H%M%S')}.{n}"
        p.rename(dest)
        moved.append(dest)
    return moved


def describe(checkpoints: str | Path) -> str:
    """One line for status: the latest complete checkpoint and any incomplete ones."""
    latest = latest_complete(checkpoints)
    bad = incomplete_dirs(checkpoints)
    text = f"latest complete checkpoint: {latest if latest is not None else 'none'}"
    if bad:
        text += f"; incomplete (ignored): {', '.join(p.name for p in bad)}"
    return text


def resolve_checkpoint(path: str | Path, field: str = "student.megatron_checkpoint") -> tuple[Path, int]:
    """A checkpoint given by path as (checkpoints root, iteration): one ``iter_N`` directory, or a
    ``checkpoints/`` directory (its latest complete save). ValueError unless it is complete."""
    given = Path(path).expanduser()
    it = iteration_of(given)
    root, it = (given.parent, it) if it is not None else (given, latest_complete(given))
    if it is None or not is_complete(root, it):
        found = complete_iterations(root)
        raise ValueError(
            f"{field}={str(path)!r}: not a complete Megatron checkpoint (give an iter_N dir of a "
            f"finished save, written before {TRACKER} and holding {', '.join(REQUIRED_FILES)}, "
            f"or a checkpoints/ dir holding one); complete iterations there: {found or 'none'}")
    return root, it


# ---------------------------------------------------------------- retention (checkpoint.keep_last)
TRASH_PREFIX = ".deleting-"


def retention_victims(checkpoints: str | Path, keep_last: int | None,
                      protect: tuple[int, ...] | list[int] = ()) -> list[int]:
    """The complete checkpoints ``checkpoint.keep_last`` lets go: all complete iterations but the
    newest ``keep_last`` and the ``protect``ed ones (export.iteration, checkpoint candidates).

    Only complete checkpoints count and only complete ones go: a save in flight or one a kill
    cut short (past the tracker) is neither kept in the k nor deleted (distill quarantines it). The
    latest complete checkpoint is the one a rerun resumes from; ``keep_last >= 1`` keeps it
    always. ``keep_last`` None keeps everything."""
    if keep_last is None:
        return []
    if keep_last < 1:
        raise ValueError(f"checkpoint.keep_last={keep_last}: must be >= 1 (the latest complete "
                         f"checkpoint is the one a rerun resumes from), or null to keep all")
    complete = complete_iterations(checkpoints)
    kept = set(complete[-keep_last:]) | {int(i) for i in protect}
    return [i for i in complete if i not in kept]


def prune(checkpoints: str | Path, keep_last: int | None,
          protect: tuple[int, ...] | list[int] = ()) -> list[int]:
    """Delete the ``retention_victims``; returns their iterations. Each directory is first renamed
    to ``.deleting-iter_N`` (one atomic step: no reader ever sees a half-deleted ``iter_*``), then
    removed; leftovers of a deletion that was itself killed are removed on the next call.
    Call it on one rank only."""
    import shutil

    root = Path(checkpoints)
    for stale in root.glob(TRASH_PREFIX + "iter_*") if root.is_dir() else ():
        shutil.rmtree(stale, ignore_errors=True)
    gone = []
    for it in retention_victims(root, keep_last, protect):
        src = root / f"iter_{it:07d}"
        trash = root / (TRASH_PREFIX + src.name)
        src.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)
        gone.append(it)
    return gone


# ---------------------------------------------------------------- the layout a save was made at
LAYOUTS = "layouts.json"  # kdlaunch's record, one entry per start of distill with a new layout


@dataclass(frozen=True)
class SavedLayout:
    """The parallel layout the latest complete checkpoint was saved at. ``dp`` is None for
    checkpoints saved before kdlaunch recorded layouts (read from Bridge's run_config.yaml)."""

    iteration: int
    tp: int
    pp: int
    dp: int | None
    distributed_optimizer: bool

    def describe(self) -> str:
        dp = "?" if self.dp is None else self.dp
        return (f"tp={self.tp} pp={self.pp} dp={dp} distributed optimizer "
                f"{'on' if self.distributed_optimizer else 'off'}")


def record_layout(checkpoints: str | Path, start: int, *, tp: int, pp: int, dp: int,
                  distributed_optimizer: bool) -> list[dict]:
    """Append the layout of this start (training from iteration ``start``) to ``layouts.json``
    when it differs from the last entry; written atomically (rank 0 only)."""
    path = Path(checkpoints) / LAYOUTS
    entries = _read_layouts(path)
    entry = {"from_iteration": int(start), "tp": int(tp), "pp": int(pp), "dp": int(dp),
             "distributed_optimizer": bool(distributed_optimizer)}
    last = entries[-1] if entries else None
    if last is None or {k: v for k, v in last.items() if k != "from_iteration"} != {
            k: v for k, v in entry.items() if k != "from_iteration"}:
        entries.append(entry)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(entries, indent=1) + "\n")
        os.replace(tmp, path)
    return entries


def saved_layout(checkpoints: str | Path) -> SavedLayout | None:
    """The layout of the latest complete checkpoint, or None when there is none."""
    ckpt = Path(checkpoints)
    it = latest_complete(ckpt)
    if it is None:
        return None
    made_by = [e for e in _read_layouts(ckpt / LAYOUTS) if e["from_iteration"] < it]
    if made_by:
        e = made_by[-1]
        return SavedLayout(it, e["tp"], e["pp"], e["dp"], e["distributed_optimizer"])
    return _layout_from_run_config(ckpt / f"iter_{it:07d}" / "run_config.yaml", it)


def _read_layouts(path: Path) -> list[dict]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    keys = ("from_iteration", "tp", "pp", "dp", "distributed_optimizer")
    if not isinstance(data, list) or not all(isinstance(e, dict) and all(k in e for k in keys)
                                              for e in data):
        return []
    return data


def _layout_from_run_config(path: Path, iteration: int) -> SavedLayout | None:
    """Bridge's own record of the save (YAML, read with regexes: stdlib only)."""
    try:
        text = path.read_text()
    except OSError:
        return None

    def first(key: str) -> str | None:
        m = re.search(rf"^\s*{key}:\s*(\S+)\s*$", text, re.M)
        return m.group(1) if m else None

    tp, pp, sharded = (first("tensor_model_parallel_size"), first("pipeline_model_parallel_size"),
                       first("use_distributed_optimizer"))
    if not (tp and tp.isdigit() and pp and pp.isdigit() and sharded in ("true", "false")):
        return None
    return SavedLayout(iteration, int(tp), int(pp), None, sharded == "true")
