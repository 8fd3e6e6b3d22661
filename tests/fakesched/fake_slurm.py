"""A fake SLURM at the subprocess boundary, for the launcher's logic tier (no daemons).

``bin/sbatch``, ``squeue``, ``sacct``, ``scancel``, ``scontrol``, ``sinfo`` and ``srun`` call
this file with their own name. State lives in ``$KD_FAKESCHED_DIR`` (one JSON file per job,
an id counter under a lock). ``sbatch`` starts a detached runner per job that waits for the
job's ``afterok`` parents and then runs the batch script on the local machine, one task.

What is faithful (checked against slurm 22.05 on the test cluster), because submitit and
``launch/`` parse it: ``Submitted batch job N`` / ``--parsable``; ``sacct --parsable2`` with a
header unless ``--noheader``, one row per allocation with ``-D`` (``REQUEUED`` rows), ``-X``
(no steps), ``CANCELLED by 0``, ``Unknown``/``None`` times and ``None assigned`` for jobs that
never ran; ``squeue -h -o`` with ``%i %T %r %j`` and "Invalid job id specified" (exit 1) when
no id is known; ``afterok`` with ``--kill-on-invalid-dep=yes`` (a failed parent cancels its
dependents without running them) and without it (``DependencyNeverSatisfied``);
``scontrol requeue`` (the running allocation ends as ``REQUEUED``, the job runs again with
``SLURM_RESTART_COUNT`` + 1); ``scontrol ping``, ``show partition|node -o`` and
``sinfo -h -o %P`` for the pre-flight. ``KD_FAKESCHED_REFUSE=TEXT`` makes sbatch refuse the
jobs whose name contains TEXT, as sbatch refuses a bad account. Partitions: ``debug`` (default) and ``high``; nodes
``n1..n4``, 4 CPUs and 4000 MB each, like the test cluster.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

STATE = Path(os.environ.get("KD_FAKESCHED_DIR", "/nonexistent-fakesched"))
PARTITIONS = {"debug": True, "high": False}  # name -> default
NODES = ("n1", "n2", "n3", "n4")
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}
POLL_S = 0.1


def final(job: dict) -> bool:
    return job["state"].split()[0] in FINAL  # "CANCELLED by 0"


def now() -> str:
    return dt.datetime.now().strftime("%Y-%m-%dT%H:%M:%S")


def job_file(jid: str) -> Path:
    return STATE / "jobs" / f"{jid}.json"


@contextlib.contextmanager
def locked():
    STATE.mkdir(parents=True, exist_ok=True)
    with open(STATE / "lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def load(jid: str) -> dict | None:
    try:
        return json.loads(job_file(jid).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def save(job: dict) -> None:
    path = job_file(job["id"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(job))
    os.replace(tmp, path)


def update(jid: str, **fields) -> dict:
    with locked():
        job = load(jid)
        job.update(fields)
        save(job)
        return job


def err(msg: str, code: int = 1):
    print(msg, file=sys.stderr)
    sys.exit(code)


# ---------------------------------------------------------------- sbatch
def sbatch_options(argv: list[str], script_text: str) -> tuple[dict, list[str]]:
    """Options from the #SBATCH header, then the command line (which wins); the rest."""
    header = []
    for line in script_text.splitlines()[1:]:
        if line.startswith("#SBATCH"):
            header += shlex.split(line[len("#SBATCH"):])
        elif line.strip() and not line.startswith("#"):
            break
    opts: dict = {}
    rest: list[str] = []

    def parse(args: list[str], into_rest: bool) -> None:
        i = 0
        while i < len(args):
            a = args[i]
            if a.startswith("--"):
                key, eq, val = a[2:].partition("=")
                if not eq and key in ("parsable", "requeue", "exclusive", "wait", "no-requeue"):
                    val = "1"
                elif not eq:
                    i += 1
                    val = args[i]
                opts[key] = val
            elif a.startswith("-") and len(a) >= 2 and a[1] in "JpotNnd":
                long = {"J": "job-name", "p": "partition", "o": "output", "t": "time",
                        "N": "nodes", "n": "ntasks", "d": "dependency"}[a[1]]
                if len(a) > 2:
                    opts[long] = a[2:]
                else:
                    i += 1
                    opts[long] = args[i]
            elif into_rest:
                rest.extend(args[i:])
                return
            i += 1

    parse(header, False)
    parse(argv, True)
    return opts, rest


def sbatch(argv: list[str]) -> None:
    opts, rest = sbatch_options(argv, "")
    if "wrap" in opts:
        script = f"#!/bin/sh\n{opts['wrap']}\n"
    elif rest:
        script = Path(rest[0]).read_text()
    else:
        err("sbatch: error: Batch script is empty!")
    opts, _ = sbatch_options(argv, script)
    default = next(p for p, d in PARTITIONS.items() if d)
    partition = opts.get("partition") or os.environ.get("SBATCH_PARTITION") or default
    if partition not in PARTITIONS:
        err("sbatch: error: invalid partition specified: " + partition)
    refuse = os.environ.get("KD_FAKESCHED_REFUSE")  # a test's way to make sbatch refuse a job
    if refuse and refuse in opts.get("job-name", ""):
        err("sbatch: error: Batch job submission failed: Invalid account or account/partition "
            "combination specified")
    deps = []
    for part in filter(None, opts.get("dependency", "").split(",")):
        kind, _, ids = part.partition(":")
        if kind != "afterok":
            err(f"sbatch: error: fake scheduler: dependency type {kind!r} not supported")
        deps += ids.split(":")
    with locked():
        for d in deps:
            if load(d) is None:
                err("sbatch: error: Batch job submission failed: Job dependency problem")
        counter = STATE / "next_id"
        jid = str(int(counter.read_text()) if counter.exists() else 1000)
        counter.write_text(str(int(jid) + 1))
        spool = STATE / "spool"
        spool.mkdir(exist_ok=True)
        (spool / f"{jid}.sh").write_text(script)
        save({"id": jid, "name": opts.get("job-name", "sbatch"), "partition": partition,
              "deps": deps, "kill_on_invalid": opts.get("kill-on-invalid-dep") == "yes",
              "output": opts.get("output", "slurm-%j.out"), "error": opts.get("error"),
              "cwd": opts.get("chdir", os.getcwd()), "nodes": int(opts.get("nodes", 1)),
              "state": "PENDING", "reason": "Dependency" if deps else "None",
              "submit": now(), "start": None, "end": None, "exit": "0:0", "restarts": 0,
              "history": [], "pid": None, "requeue_asked": False})
    log = open(STATE / f"runner-{jid}.log", "w")  # noqa: SIM115  (kept by the child)
    subprocess.Popen([sys.executable, __file__, "_run", jid], stdin=subprocess.DEVNULL,
                     stdout=log, stderr=log, start_new_session=True, env=os.environ.copy())
    print(f"{jid}" if "parsable" in opts else f"Submitted batch job {jid}")


# ---------------------------------------------------------------- the runner of one job
def runner(jid: str) -> None:
    while True:
        job = load(jid)
        if final(job):
            return
        parents = [load(d) for d in job["deps"]]
        if any(final(p) and p["state"] != "COMPLETED" for p in parents):
            if job["kill_on_invalid"]:  # cancelled without ever starting
                update(jid, state="CANCELLED by 0", end=now(), reason="None", exit="0:0")
                return
            update(jid, reason="DependencyNeverSatisfied")
        elif all(p["state"] == "COMPLETED" for p in parents):
            if run_allocation(jid):
                return
            continue
        time.sleep(POLL_S)


def run_allocation(jid: str) -> bool:
    """Run the batch script once; False when it was requeued (run it again)."""
    job = update(jid, state="RUNNING", reason="None", start=now(), end=None)
    if job["state"] != "RUNNING":
        return True
    node = NODES[0]
    env = {**os.environ, "SLURM_JOB_ID": jid, "SLURM_JOBID": jid, "SLURM_JOB_NAME": job["name"],
           "SLURM_JOB_PARTITION": job["partition"], "SLURM_JOB_NUM_NODES": "1",
           "SLURM_NNODES": "1", "SLURM_JOB_NODELIST": node, "SLURMD_NODENAME": node,
           "SLURM_RESTART_COUNT": str(job["restarts"]), "SLURM_SUBMIT_DIR": job["cwd"],
           "SLURM_CLUSTER_NAME": "fake"}
    out = Path(job["cwd"], job["output"].replace("%j", jid).replace("%x", job["name"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as fh:
        proc = subprocess.Popen(["bash", str(STATE / "spool" / f"{jid}.sh")], cwd=job["cwd"],
                                env=env, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
        update(jid, pid=proc.pid)
        code = proc.wait()
    with locked():
        job = load(jid)
        row = {"state": "REQUEUED", "exit": "0:0", "start": job["start"], "end": now()}
        if job["requeue_asked"]:
            job.update(history=[*job["history"], row], requeue_asked=False, state="PENDING",
                       restarts=job["restarts"] + 1, start=None, pid=None, reason="BeginTime")
            save(job)
            return False
        if not job["state"].startswith("CANCELLED"):
            job.update(state="COMPLETED" if code == 0 else "FAILED",
                       exit=f"{code if code >= 0 else 0}:{-code if code < 0 else 0}")
        job.update(end=row["end"], pid=None)
        save(job)
    return True


# ---------------------------------------------------------------- queries and control
def ids_of(argv: list[str]) -> list[str]:
    """Every -j/--jobs list (submitit repeats -j once per job)."""
    ids = []
    for i, a in enumerate(argv):
        if a in ("-j", "--jobs"):
            ids += argv[i + 1].split(",")
        elif a.startswith("--jobs="):
            ids += a.split("=", 1)[1].split(",")
    return ids or sorted(p.stem for p in (STATE / "jobs").glob("*.json"))


def elapsed(start: str | None, end: str | None) -> str:
    if not start:
        return "00:00:00"
    t0 = dt.datetime.fromisoformat(start)
    t1 = dt.datetime.fromisoformat(end) if end else dt.datetime.now()
    s = max(0, int((t1 - t0).total_seconds()))
    return f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}"


def sacct(argv: list[str]) -> None:
    fields = "JobID,JobName,Partition,Account,AllocCPUS,State,ExitCode"
    for i, a in enumerate(argv):
        if a in ("-o", "--format"):
            fields = argv[i + 1]
        elif a.startswith("--format="):
            fields = a.split("=", 1)[1]
    fields = fields.split(",")
    rows = []
    for jid in ids_of(argv):
        job = load(jid)
        if job is None:
            continue
        allocations = job["history"] if "-D" in argv or "--duplicates" in argv else []
        current = {"state": job["state"], "exit": job["exit"], "start": job["start"],
                   "end": job["end"]}
        for alloc in [*allocations, current]:
            ran = alloc["start"] is not None
            val = {"JobID": jid, "JobIDRaw": jid, "JobName": job["name"],
                   "Partition": job["partition"], "State": alloc["state"],
                   "ExitCode": alloc["exit"], "Elapsed": elapsed(alloc["start"], alloc["end"]),
                   "Start": alloc["start"] or ("None" if alloc["end"] else "Unknown"),
                   "End": alloc["end"] or "Unknown", "NNodes": str(job["nodes"]),
                   "NodeList": NODES[0] if ran else "None assigned"}
            rows.append([val.get(f, "") for f in fields])
            if ran and alloc["end"] and not ("-X" in argv or "--allocations" in argv):
                for step in ("batch", "0"):  # the steps of a finished allocation
                    rows.append([f"{jid}.{step}" if f in ("JobID", "JobIDRaw") else val.get(f, "")
                                 for f in fields])
    if not ("--noheader" in argv or "-n" in argv):
        print("|".join(fields))
    for r in rows:
        print("|".join(r))


def squeue(argv: list[str]) -> None:
    fmt = "%i %T %r"
    for i, a in enumerate(argv):
        if a in ("-o", "--format"):
            fmt = argv[i + 1]
    ids = ids_of(argv)
    jobs = [j for j in (load(i) for i in ids) if j is not None]
    if not jobs and any(a in ("-j", "--jobs") for a in argv):
        err("slurm_load_jobs error: Invalid job id specified")
    for job in jobs:
        if job["state"] not in ("PENDING", "RUNNING"):
            continue
        codes = {"i": job["id"], "T": job["state"], "r": job["reason"], "j": job["name"],
                 "P": job["partition"], "t": "PD" if job["state"] == "PENDING" else "R"}
        print(re.sub(r"%([a-zA-Z])", lambda m, c=codes: c.get(m.group(1), ""), fmt))


def scancel(argv: list[str]) -> None:
    sig = None
    ids = []
    for i, a in enumerate(argv):
        if a.startswith("--signal"):
            sig = a.split("=", 1)[1] if "=" in a else argv[i + 1]
        elif re.fullmatch(r"\d+", a) and not (i and argv[i - 1] == "--signal"):
            ids.append(a)
    for jid in ids:
        job = load(jid)
        if job is None:
            err(f"scancel: error: Kill job error on job id {jid}: Invalid job id specified")
        if sig:
            if job["pid"]:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(job["pid"], getattr(signal, "SIG" + sig.removeprefix("SIG")))
            continue
        if final(job):
            continue
        update(jid, state="CANCELLED by 0", end=now(), reason="None", exit="0:15")
        if job["pid"]:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(job["pid"], signal.SIGTERM)


def scontrol(argv: list[str]) -> None:
    if argv[:1] == ["ping"]:
        print("Slurmctld(primary) at fake is UP")
    elif argv[:2] == ["show", "partition"]:
        for name, default in PARTITIONS.items():
            print(f"PartitionName={name} Default={'YES' if default else 'NO'} "
                  f"MaxNodes=UNLIMITED MaxTime=UNLIMITED MinNodes=0 Nodes=n[1-4] "
                  f"State=UP TotalCPUs=16 TotalNodes=4 MaxMemPerNode=UNLIMITED")
    elif argv[:2] == ["show", "node"]:
        for n in NODES:
            print(f"NodeName={n} CPUTot=4 Gres=(null) RealMemory=4000 State=IDLE "
                  f"Partitions=debug,high")
    elif argv[:1] == ["requeue"]:
        for jid in argv[1].split(","):
            job = update(jid, requeue_asked=True)
            if job["pid"]:  # SLURM ends the running allocation
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(job["pid"], signal.SIGTERM)
    else:
        err(f"scontrol: fake scheduler: {' '.join(argv)} not supported")


def sinfo(argv: list[str]) -> None:
    for name, default in PARTITIONS.items():
        print(name + ("*" if default else ""))


def srun(argv: list[str]) -> None:
    """One task of the current job: --output with %j/%t, then exec the command."""
    out = None
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        a = argv[i]
        key, eq, val = a.partition("=")
        if key in ("--output", "-o", "--error", "-e") and not eq:
            i += 1
            val = argv[i]
        if key in ("--output", "-o"):
            out = val
        i += 1
    env = {**os.environ, "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
           "SLURM_NTASKS": "1", "SLURM_STEP_ID": "0", "SLURM_STEP_NODELIST": NODES[0]}
    if out:
        path = out.replace("%j", os.environ.get("SLURM_JOB_ID", "0")).replace("%t", "0")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
    os.execvpe(argv[i], argv[i:], env)


def main() -> None:
    name, argv = sys.argv[1], sys.argv[2:]
    if name == "_run":
        return runner(argv[0])
    {"sbatch": sbatch, "sacct": sacct, "squeue": squeue, "scancel": scancel,
     "scontrol": scontrol, "sinfo": sinfo, "srun": srun}[name](argv)


if __name__ == "__main__":
    main()
