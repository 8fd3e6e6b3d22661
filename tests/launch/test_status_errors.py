"""The "first error" line status prints for a failed stage, from realistic rank logs: the
exception that ended a rank's process and the frame that raised it, read through the prefixes
launchers put before lines (torch's ``[rank0]: ``, srun's ``0: ``), through chains and
multi-line messages, and preferring a rank's own failure to another rank's echo of it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from launch import status
from tests.launch.test_status_faults import fake_tool, make_run

REPO = Path(__file__).resolve().parents[2]


def starting(host: str, at: str = "2026-03-02 11:40:01,112") -> str:
    return (f"submitit INFO ({at}) - Starting with JobEnvironment(job_id=11, hostname={host})\n"
            f"{at} [distill] INFO kdlaunch: stage distill starting (module kd.distill, "
            f"host {host}, restart 0)\n")


def with_submitit(traceback: str) -> str:
    return traceback.replace(HEADER, HEADER + SUBMITIT_FRAMES, 1)


def prefixed(prefix: str, text: str) -> str:
    return "".join(f"{prefix}{ln}\n" for ln in text.splitlines())


HEADER = "Traceback (most recent call last):\n"
# the frames submitit puts above a stage's own (``with_submitit`` adds them to a traceback)
SUBMITIT_FRAMES = '''\
  File "<frozen runpy>", line 198, in _run_module_as_main
  File "<frozen runpy>", line 88, in _run_code
  File "/opt/venv/lib/python3.12/site-packages/submitit/core/_submit.py", line 11, in <module>
    submitit_main()
  File "/opt/venv/lib/python3.12/site-packages/submitit/core/submission.py", line 65, in process_job
    result = delayed.result()
             ^^^^^^^^^^^^^^^^
  File "/workspace/kdlaunch/kd/job.py", line 55, in __call__
    result = self._distill(module)
             ^^^^^^^^^^^^^^^^^^^^^
'''

DISTRIB_OPTIMIZER = '''\
Traceback (most recent call last):
  File "/workspace/kdlaunch/kd/distill.py", line 160, in run
    distill_with_callbacks(config, training_callbacks(spec, env.rank))
  File "/opt/Megatron-Bridge/src/megatron/bridge/training/checkpointing.py", line 512, in save_checkpoint
    state_dict = generate_state_dict(cfg, model, optimizer, opt_param_scheduler, rng_state)
[W302 11:52:10.123456789 ProcessGroupNCCL.cpp:4561] Warning: TORCH_NCCL_AVOID_RECORD_STREAMS is the default now
  File "/x/megatron/core/optimizer/distrib_optimizer.py", line 642, in state_dict
    assert len(steps) == 1
AssertionError'''  # the last thing in the log: no newline after it

GLOO_ECHO = '''\
Traceback (most recent call last):
  File "/workspace/kdlaunch/kd/distill.py", line 171, in run
    _barrier()
  File "/opt/venv/lib/python3.12/site-packages/torch/distributed/distributed_c10d.py", line 4631, in barrier
    work.wait()
RuntimeError: [/opt/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [10.0.0.1]:23456
'''

RECEIVED_SIZE_ECHO = '''\
Traceback (most recent call last):
  File "/opt/venv/lib/python3.12/site-packages/torch/distributed/distributed_c10d.py", line 3212, in all_gather_object
    all_gather(object_size_list, local_size, group=group)
RuntimeError: [enforce fail at /opt/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:446] op.preamble.length <= op.nbytes. 8 vs 4. Received data size doesn't match expected size
'''

NCCL_ECHO = '''\
Traceback (most recent call last):
  File "/opt/venv/lib/python3.12/site-packages/torch/distributed/c10d_logger.py", line 81, in wrapper
    return func(*args, **kwargs)
torch.distributed.DistBackendError: [0] is setting up NCCL communicator and retrieving ncclUniqueId from [0] via c10d key-value store by key '0:1', but store->get('0:1') got error: Connection reset by peer
Exception raised from recvBytes at /opt/pytorch/torch/csrc/distributed/c10d/Utils.hpp:670 (most recent call first):
frame #0: c10::Error::Error(c10::SourceLocation, std::string) + 0x99 (0x7f3c2b8f1f89 in /opt/venv/lib/python3.12/site-packages/torch/lib/libc10.so)
frame #1: <unknown function> + 0x5bd5d4e (0x7f3c1a2b3d4e in /opt/venv/lib/python3.12/site-packages/torch/lib/libtorch_cpu.so)

'''

VALUE_ERROR = '''\
Traceback (most recent call last):
  File "/workspace/kdlaunch/kd/job.py", line 57, in __call__
    result = module.run(self.spec)
             ^^^^^^^^^^^^^^^^^^^^^
  File "/workspace/kdlaunch/kd/export.py", line 88, in run
    raise ValueError(f"vocab mismatch: student {student_vocab} vs teacher {teacher_vocab}\\n  {hint}")
ValueError: vocab mismatch: student 128256 vs teacher 128000
  set export.hf_template to the student's directory
2026-03-02 11:41:07,020 [export_hf] INFO kdlaunch: shutting down
'''

CHAINED = '''\
Traceback (most recent call last):
  File "/workspace/kdlaunch/kd/checkpoints.py", line 40, in latest_iteration
    return int(tracker.read_text())
           ^^^^^^^^^^^^^^^^^^^^^^^^
ValueError: invalid literal for int() with base 10: ''

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File "/workspace/kdlaunch/kd/job.py", line 57, in __call__
    result = module.run(self.spec)
  File "/workspace/kdlaunch/kd/checkpoints.py", line 44, in latest_iteration
    raise RuntimeError(f"unreadable tracker {tracker}") from None
RuntimeError: unreadable tracker /ckpt/latest_checkpointed_iteration.txt
'''

WRAPPED_IN_SYSTEMEXIT = '''\
Traceback (most recent call last):
  File "/workspace/kdlaunch/kd/prepare_data.py", line 120, in build
    raise FileNotFoundError(errno.ENOENT, "No such file or directory", idx)
FileNotFoundError: [Errno 2] No such file or directory: '/lustre/data/corpus_text_document.idx'

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File "/workspace/kdlaunch/kd/prepare_data.py", line 61, in main
    raise SystemExit(2) from e
SystemExit: 2
'''

CUDA_OOM = '''\
Traceback (most recent call last):
  File "/workspace/kdlaunch/kd/distill.py", line 160, in run
    distill_with_callbacks(config, training_callbacks(spec, env.rank))
  File "/opt/venv/lib/python3.12/site-packages/torch/nn/modules/linear.py", line 125, in forward
    return F.linear(input, self.weight, self.bias)
           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.11 GiB of which 1.02 GiB is free.
'''

EVAL_WORKER = '''\
Traceback (most recent call last):
  File "/workspace/kdlaunch/kd/eval_shards.py", line 174, in _receive
    raise RuntimeError(f"eval process {worker} ({device}) failed:\\n{payload}")
RuntimeError: eval process 1 (cuda:1) failed:
Traceback (most recent call last):
  File "/workspace/kdlaunch/kd/eval_shards.py", line 80, in _worker
    results = evaluator.simple_evaluate(**kwargs)
  File "/opt/venv/lib/python3.12/site-packages/lm_eval/tasks/__init__.py", line 610, in get_task_dict
    raise KeyError(f"task {name!r} not found")
KeyError: "task 'mmlu_pro' not found"
'''

MESSAGE_ON_NEXT_LINE = '''\
Traceback (most recent call last):
  File "/workspace/kdlaunch/kd/distill.py", line 88, in check_resume
    raise RuntimeError("\\n".join(problems))
RuntimeError:{SPACE}
checkpoint iter_0000020 was written with tp=4, this run has tp=8
'''.format(SPACE=" ")  # Python prints "RuntimeError: " and the message's first line after it

OWN_CLASS = '''\
Traceback (most recent call last):
  File "/workspace/kdlaunch/kd/job.py", line 70, in _distill
    raise
  File "/workspace/kdlaunch/kd/distill.py", line 174, in run
    raise DistillInterrupted(iteration, spec.train.train_iters)
kd.distill.DistillInterrupted: training stopped at iteration 20 of 100
'''

OTHER_SHAPE = '''\
Traceback (most recent call last):
  File "/workspace/kdlaunch/kd/data.py", line 31, in first_document
    return next(iter(documents))
           ^^^^^^^^^^^^^^^^^^^^^
StopIteration
'''

CASES = {
    # a reported failure: every line of the traceback behind torch's "[rank0]: "
    "distrib_optimizer_assert_with_rank_prefixes": (
        {"11_0_log.out": starting("n1") + prefixed("[rank0]: ", with_submitit(DISTRIB_OPTIMIZER)).replace(
             "[rank0]: [W302", "[rank0]:[W302").rstrip("\n"),
         "11_1_log.out": starting("n2", "2026-03-02 11:40:01,100")
         + prefixed("[rank1]: ", GLOO_ECHO)},
        "rank 0 on n1: AssertionError (at /x/megatron/core/optimizer/distrib_optimizer.py:642 "
        "in state_dict: assert len(steps) == 1)"),
    # rank 1's echo is stamped earlier, rank 0's own failure still wins
    "gloo_echo_on_rank1_value_error_on_rank0": (
        {"11_0_log.out": starting("n1", "2026-03-02 11:40:09,000"),
         "11_0_log.err": with_submitit(VALUE_ERROR),
         "11_1_log.out": starting("n2", "2026-03-02 11:40:01,000"),
         "11_1_log.err": with_submitit(RECEIVED_SIZE_ECHO)},
        "rank 0 on n1: ValueError: vocab mismatch: student 128256 vs teacher 128000 "
        "(at /workspace/kdlaunch/kd/export.py:88 in run)"),  # its code line is too long
    "chained_reports_the_last": (
        {"11_0_log.out": starting("n1") + with_submitit(CHAINED)},
        "rank 0 on n1: RuntimeError: unreadable tracker /ckpt/latest_checkpointed_iteration.txt "
        "(at /workspace/kdlaunch/kd/checkpoints.py:44 in latest_iteration: "
        "raise RuntimeError(f\"unreadable tracker {tracker}\") from None)"),
    "chain_closed_by_systemexit_reports_the_cause": (
        {"11_0_log.out": starting("n1") + WRAPPED_IN_SYSTEMEXIT},
        "rank 0 on n1: FileNotFoundError: [Errno 2] No such file or directory: "
        "'/lustre/data/corpus_text_document.idx' (at /workspace/kdlaunch/kd/prepare_data.py:120 "
        "in build: raise FileNotFoundError(errno.ENOENT, \"No such file or directory\", idx))"),
    "srun_labels_on_rank1_oom": (
        {"11_0_log.out": prefixed("0: ", starting("n1") + NCCL_ECHO),
         "11_1_log.out": prefixed("1: ", starting("n2") + CUDA_OOM)},
        "rank 1 on n2: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. "
        "GPU 0 has a total capacity of 79.11 GiB of which 1.02 GiB is free. "
        "(at torch/nn/modules/linear.py:125 in forward: "
        "return F.linear(input, self.weight, self.bias))"),
    "srun_label_and_rank_prefix_together": (
        {"11_0_log.out": prefixed("0: ", starting("n1")) + prefixed("0: [rank0]: ", CHAINED)},
        "rank 0 on n1: RuntimeError: unreadable tracker /ckpt/latest_checkpointed_iteration.txt "
        "(at /workspace/kdlaunch/kd/checkpoints.py:44 in latest_iteration: "
        "raise RuntimeError(f\"unreadable tracker {tracker}\") from None)"),
    # every rank only echoes: the earliest echo
    "only_echoes_earliest_wins": (
        {"11_0_log.out": starting("n1", "2026-03-02 11:45:00,000") + NCCL_ECHO,
         "11_1_log.out": starting("n2", "2026-03-02 11:44:00,000") + GLOO_ECHO},
        "rank 1 on n2: RuntimeError: [/opt/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:534] "
        "Connection closed by peer [10.0.0.1]:23456 (at torch/distributed/distributed_c10d.py:4631 "
        "in barrier: work.wait())"),
    # a rank killed without a traceback beats the echoes of the others
    "oom_killed_rank_beats_echo": (
        {"11_0_log.out": starting("n1") + "slurmstepd: error: Detected 1 oom_kill event in "
         "StepId=11.0. Some of the step tasks have been OOM Killed.\n",
         "11_1_log.out": starting("n2", "2026-03-02 11:39:00,000") + GLOO_ECHO},
        "rank 0 on n1: slurmstepd: error: Detected 1 oom_kill event in StepId=11.0. "
        "Some of the step tasks have been OOM Killed."),
    # a worker's traceback carried in the message: the worker's exception ended it all
    "eval_worker_traceback_in_message": (
        {"11_0_log.out": starting("n1") + EVAL_WORKER},
        "rank 0 on n1: KeyError: \"task 'mmlu_pro' not found\" "
        "(at lm_eval/tasks/__init__.py:610 in get_task_dict: "
        "raise KeyError(f\"task {name!r} not found\"))"),
    "message_starting_on_the_next_line": (
        {"11_0_log.out": starting("n1") + MESSAGE_ON_NEXT_LINE},
        "rank 0 on n1: RuntimeError: checkpoint iter_0000020 was written with tp=4, this run has "
        "tp=8 (at /workspace/kdlaunch/kd/distill.py:88 in check_resume: "
        "raise RuntimeError(\"\\n\".join(problems)))"),
    "own_exception_class": (
        {"11_0_log.out": starting("n1") + OWN_CLASS},
        "rank 0 on n1: kd.distill.DistillInterrupted: training stopped at iteration 20 of 100 "
        "(at /workspace/kdlaunch/kd/distill.py:174 in run: "
        "raise DistillInterrupted(iteration, spec.train.train_iters))"),
    "exception_without_the_usual_suffix": (
        {"11_0_log.out": starting("n1") + "2026-03-02 11:40:02,000 [distill] INFO x: loading\n"
         + OTHER_SHAPE},
        "rank 0 on n1: StopIteration (at /workspace/kdlaunch/kd/data.py:31 in first_document: "
        "return next(iter(documents)))"),
}


def failed_distill(tmp_path: Path, logs: dict[str, str]) -> tuple[Path, dict, dict]:
    folder = tmp_path / "run" / "jobs" / "distill"
    folder.mkdir(parents=True)
    for name, text in logs.items():
        (folder / name).write_text(text)
    rows = {"distill": {"job_id": "11", "state": "FAILED", "elapsed": "00:12:09",
                        "exit_code": "1:0", "log": str(folder / "11_0_log.out"), "error": "",
                        "restarts": "", "deps": [], "folder": str(folder)}}
    manifest = {"config_hash": "abc", "cluster": {"name": "test", "executor": "slurm"}}
    return tmp_path / "run", manifest, rows


def first_error_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if "first error" in ln]


@pytest.mark.parametrize("logs,expected", CASES.values(), ids=CASES.keys())
def test_first_error_line(tmp_path, logs, expected):
    run, manifest, rows = failed_distill(tmp_path, logs)
    text, code = status.render_rows(run, manifest, rows)
    assert code == 1
    assert first_error_lines(text) == [f"    first error: {expected}"], text
    assert "Traceback" not in text


def test_cli_prints_the_exception_not_the_traceback_header(tmp_path, monkeypatch):
    """A reported failure end to end: ``python launch/status.py RUN_DIR`` with sacct saying the
    distill job failed."""
    logs, expected = CASES["distrib_optimizer_assert_with_rank_prefixes"]
    run = make_run(tmp_path, logs)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake_tool(bindir, "sacct", "10|COMPLETED|0:0|00:00:05|a|b|n1\n11|FAILED|1:0|00:12:09|a|b|n[1-2]\n"
              "12|CANCELLED|0:0|00:00:00|a|b|None\n13|CANCELLED|0:0|00:00:00|a|b|None")
    fake_tool(bindir, "squeue", rc=1, stderr="slurm_load_jobs error: Invalid job id specified")
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}
    res = subprocess.run([sys.executable, "launch/status.py", str(run)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1, res.stdout + res.stderr
    assert first_error_lines(res.stdout) == [f"    first error: {expected}"], res.stdout


@pytest.mark.parametrize("line,expected", [
    ("[rank0]: Traceback (most recent call last):", "Traceback (most recent call last):"),
    ("[rank0]:   File \"x.py\", line 3, in f", "  File \"x.py\", line 3, in f"),
    ("[rank12]:[W302 11:52:10.1 ProcessGroupNCCL.cpp:1] x", "[W302 11:52:10.1 ProcessGroupNCCL.cpp:1] x"),
    ("[default3]:AssertionError", "AssertionError"),
    ("0: ValueError: x", "ValueError: x"),
    (" 7:     assert x", "    assert x"),
    ("0: [rank0]: KeyError: 'a'", "KeyError: 'a'"),
    ("12:", ""),
    ("2026-03-02 11:40:01,112 [distill] INFO x", "2026-03-02 11:40:01,112 [distill] INFO x"),
    ("10:00:05 ready", "10:00:05 ready"),
])
def test_launcher_prefixes_are_removed(line, expected):
    assert status._unprefixed(line) == expected
