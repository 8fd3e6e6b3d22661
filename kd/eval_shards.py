"""Data-parallel evaluation: one model process per GPU, lm-eval itself in the parent.

``start(build, devices)`` returns an lm-eval ``LM`` whose requests are answered by ``n`` worker processes, each
holding its own copy of the model (``cuda:i``, or the CPU in tests). lm-eval runs unchanged in
the parent process: it builds every task's requests, hands each request type to the model once
(``loglikelihood``, ``generate_until``, ``loglikelihood_rolling``), then filters, scores and
aggregates exactly as in a single-process run. Only the model calls are split: by question
(all requests of one document go to one worker, so lm-eval's shared-context logits cache still
applies), round robin, and the answers are put back in request order. The merged results are
therefore the single-process results: the same questions, the same per-question scores (each
answer is the model's answer to the same request), the same aggregates and stderrs, computed by
the same lm-eval code.

Unlike lm-eval's own data parallel (``accelerate launch``), this needs no process group and
works for models handed over as objects (Puzzletron AnyModel checkpoints).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import traceback
from dataclasses import dataclass

log = logging.getLogger("kdlaunch.evaluate")

METHODS = ("loglikelihood", "loglikelihood_rolling", "generate_until")


@dataclass(frozen=True)
class Request:
    """What a worker needs of an lm-eval ``Instance`` (HFLM reads ``args`` and ``task_name``)."""

    args: tuple
    task_name: str | None
    doc_id: int | None
    idx: int


def processes_for(device: str, requested: int | None = None) -> int:
    """How many eval processes: ``requested``, else ``$KD_EVAL_PROCESSES``, else one per visible
    GPU when the device is plain ``cuda`` (SLURM's ``--gpus-per-node`` sets what is visible)."""
    if requested is None and os.environ.get("KD_EVAL_PROCESSES"):
        value = os.environ["KD_EVAL_PROCESSES"]
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"KD_EVAL_PROCESSES={value!r}: use a positive integer")
        requested = int(value)
    if requested is not None:
        if requested < 1:
            raise ValueError(f"eval processes {requested}: use 1 or more")
        return requested
    if device != "cuda":
        return 1
    import torch

    return max(1, torch.cuda.device_count())


def worker_devices(device: str, n: int) -> list[str]:
    """``cuda`` -> cuda:0..n-1; anything else (cpu) is shared by every worker."""
    return [f"cuda:{i}" for i in range(n)] if device == "cuda" else [device] * n


def _worker(conn, build, device: str, threads: int | None) -> None:
    try:
        if threads:
            import torch

            torch.set_num_threads(threads)
        lm = build(device)
        conn.send(("ready", getattr(lm, "batch_size", None)))
        while True:
            job = conn.recv()
            if job is None:
                return
            method, requests = job
            conn.send(("ok", getattr(lm, method)(list(requests), disable_tqdm=True)))
    except (EOFError, KeyboardInterrupt):
        return
    except BaseException:  # the parent re-raises it with the worker named
        conn.send(("error", traceback.format_exc()))


def _lm_base():
    from lm_eval.api.model import LM

    return LM


def start(build, devices: list[str]):
    """Start one worker per device; ``build(device)`` (picklable) returns its lm-eval LM."""
    base = _lm_base()

    class _Sharded(base):
        def __init__(self, conns, procs):
            super().__init__()
            self.conns, self.procs, self.devices = conns, procs, devices

        def _answer(self, method: str, requests) -> list:
            shards: list[list[int]] = [[] for _ in self.conns]
            owner: dict[tuple, int] = {}
            for i, req in enumerate(requests):
                key = (req.task_name, req.doc_id)
                shards[owner.setdefault(key, len(owner) % len(self.conns))].append(i)
            for conn, shard in zip(self.conns, shards, strict=True):
                conn.send((method, [Request(tuple(requests[i].args), requests[i].task_name,
                                            requests[i].doc_id, requests[i].idx)
                                    for i in shard]))
            out: list = [None] * len(requests)
            for w, (conn, shard) in enumerate(zip(self.conns, shards, strict=True)):
                answers = _receive(conn, w, self.devices[w])
                assert len(answers) == len(shard), (method, w, len(answers), len(shard))
                for i, answer in zip(shard, answers, strict=True):
                    out[i] = answer
            log.info("%s: %d requests over %d processes (%s)", method, len(requests),
                     len(self.conns), ", ".join(str(len(s)) for s in shards))
            return out

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return self._answer("loglikelihood", requests)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            return self._answer("loglikelihood_rolling", requests)

        def generate_until(self, requests, disable_tqdm: bool = False):
            return self._answer("generate_until", requests)

        def close(self) -> None:
            for conn in self.conns:
                try:
                    conn.send(None)
                except (BrokenPipeError, OSError):
                    pass
            # the workers are idle now; their interpreter shutdown (torch) takes seconds and
            # holds nothing worth waiting for
            for proc in self.procs:
                proc.terminate()
            for proc in self.procs:
                proc.join(timeout=30)
                if proc.is_alive():
                    proc.kill()
                    proc.join()

    ctx = mp.get_context("spawn")  # CUDA cannot be forked; spawn is also what CPU tests run
    cpu = [d for d in devices if not d.startswith("cuda")]
    threads = max(1, (os.cpu_count() or 1) // len(devices)) if cpu else None
    conns, procs = [], []
    for device in devices:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=(child, build, device, threads), daemon=True)
        proc.start()
        child.close()
        conns.append(parent)
        procs.append(proc)
    lm = _Sharded(conns, procs)
    try:
        for w, conn in enumerate(conns):
            _receive(conn, w, devices[w], expect="ready")
    except BaseException:
        lm.close()
        raise
    log.info("eval: %d model processes ready on %s", len(devices), ", ".join(devices))
    return lm


def _receive(conn, worker: int, device: str, expect: str = "ok"):
    try:
        kind, payload = conn.recv()
    except (EOFError, ConnectionResetError) as e:
        raise RuntimeError(f"eval process {worker} ({device}) died without an answer "
                           "(out of memory? see the job log)") from e
    if kind == "error":
        raise RuntimeError(f"eval process {worker} ({device}) failed:\n{payload}")
    assert kind == expect, (kind, expect)
    return payload
