"""Run kd.distill's CLI and SIGKILL it at one point of its start, the way a node failure or
SLURM's KillWait ends a job step (no handler runs, nothing is flushed or cleaned up).

    KD_KILL_AT=POINT python tests/reliability/_kill_at.py --spec S.json

POINT (unset: an ordinary run):
  model_build      the teacher's ``AutoBridge.from_hf_pretrained`` (the student is built)
  index_write      megatron-core's dataset index build, midway through writing one ``.npy``
                   (``KD_KILL_NTH``-th array written, default 3: the train split's last file;
                   half its bytes reach the file, then the kill)
  checkpoint_load  ``dist_checkpointing.load`` has read the checkpoint, nothing applied yet
  after_save       the first checkpoint save has returned (a way to get a checkpoint)

The kill takes the whole process group when this process leads one (start it with
``start_new_session=True``): megatron-core's spawned helper processes die with it, as in a
SLURM step. ``KD_KILLED_AT POINT`` is printed just before.
"""

from __future__ import annotations

import io
import os
import signal
import sys

POINTS = ("model_build", "index_write", "checkpoint_load", "after_save")


def die(point: str) -> None:
    print(f"KD_KILLED_AT {point}", flush=True)
    sys.stderr.flush()
    if os.getpgrp() == os.getpid():
        os.killpg(os.getpgrp(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def install(point: str) -> None:
    if point == "model_build":
        from megatron.bridge import AutoBridge

        original = AutoBridge.from_hf_pretrained.__func__
        calls = []

        def from_hf_pretrained(cls, *args, **kwargs):
            calls.append(args)
            if len(calls) == 2:  # the teacher; the student's provider exists
                die(point)
            return original(cls, *args, **kwargs)

        AutoBridge.from_hf_pretrained = classmethod(from_hf_pretrained)
    elif point == "index_write":
        import numpy.lib.format as npy_format

        write_array = npy_format.write_array
        nth = int(os.environ.get("KD_KILL_NTH", "3"))
        calls = []

        def partial_write(fp, array, *args, **kwargs):
            calls.append(1)
            if len(calls) < nth:
                return write_array(fp, array, *args, **kwargs)
            buffer = io.BytesIO()
            write_array(buffer, array, *args, **kwargs)
            data = buffer.getvalue()
            fp.write(data[: len(data) // 2])
            fp.flush()
            os.fsync(fp.fileno())
            die(point)

        npy_format.write_array = partial_write
    elif point == "checkpoint_load":
        from megatron.core import dist_checkpointing

        load = dist_checkpointing.load

        def load_then_die(*args, **kwargs):
            load(*args, **kwargs)
            die(point)

        dist_checkpointing.load = load_then_die
    elif point == "after_save":
        import megatron.bridge.training.train as train_module

        save = train_module.save_checkpoint_and_time

        def save_then_die(*args, **kwargs):
            save(*args, **kwargs)
            die(point)

        train_module.save_checkpoint_and_time = save_then_die
    else:
        raise SystemExit(f"KD_KILL_AT={point!r}: choose one of {', '.join(POINTS)}")


def main() -> int:
    from kd import compat

    compat.activate("cpu")  # before anything imports megatron.bridge
    point = os.environ.get("KD_KILL_AT")
    if point:
        install(point)
    from kd import distill

    return distill.main()


if __name__ == "__main__":  # megatron-core spawns Manager processes that import __main__
    sys.exit(main())
