#!/usr/bin/env python3
"""Run control from any shell, using only the run directory.

    python launch/status.py RUN_DIR                 # table of stages: state, job, elapsed, log
    python launch/status.py RUN_DIR --logs distill  # tail of one stage's log
    python launch/status.py RUN_DIR --cancel        # cancel every queued/running job of the run
    python launch/status.py RUN_DIR --wait          # block until the run ends
    python launch/status.py RUN_DIR --provenance    # what each stage ran: versions, GPUs, hosts

Exit code: 0 when every stage completed (or, without --wait, nothing failed yet), 1 when a
stage failed or was cancelled, 2 on a usage error, 3 when neither the SLURM controller (squeue)
nor accounting (sacct) could be asked (the table is then only the manifest's last known states).
When one of them cannot be asked, a line above the table says which and what the table is based
on. A job requeued after a node failure or preemption shows REQUEUED ("requeued after node
failure, restart 1").

A failed stage shows its first error, with rank and host: the exception that ended a rank's
process (type and the first line of its message) and the frame that raised it, e.g.
``first error: rank 0 on n1: AssertionError (at megatron/core/optimizer/distrib_optimizer.py:642
in state_dict: assert len(steps) == 1)``. Logs are read through the prefixes launchers add
(torch's ``[rank0]:``, srun's ``0:``); of a chain of exceptions the last counts, unless it only
wraps the one before (SystemExit, ChildFailedError); an exception that only echoes another
rank's death (gloo/NCCL connection errors, watchdog, SIGTERM) counts only when no rank shows
anything else (then the earliest); a rank killed without a traceback shows its error line
(``Killed``, slurmstepd's OOM kill).

``--provenance`` shows what each finished stage actually ran, from its done marker
(``kd.provenance``): hosts, job/step id and restarts, wall time, active compat workarounds,
GPUs/driver/CUDA, and each package's version over the stages that imported it beside the login
node's (the manifest's); ``!`` marks a version that differs between stages or from the login
node. The default table adds one line when anything differs. Stages finished before provenance
was recorded say so.
"""

from __future__ import annotations

import re
import sys
import textwrap
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kd import checkpoints as ckpts  # noqa: E402
from kd import provenance as prov  # noqa: E402
from kd import stages as registry  # noqa: E402
from kd.paths import RunPaths  # noqa: E402
from launch import backends, cli  # noqa: E402
from launch import manifest as mf  # noqa: E402
from launch.backends import FAILED  # noqa: E402
from launch.schema import ConfigError  # noqa: E402

ERROR_WORDS = ("Error", "error:", "Traceback", "Killed", "CANCELLED", "DUE TO TIME LIMIT",
               "Exception", "FAILED")
# lines that are consequences of another rank's failure, not causes
ECHO_ERRORS = ("Connection closed by peer", "Connection reset by peer", "[gloo]", "NCCL WARN",
               "Broken pipe", "BrokenPipeError", "ProcessGroupNCCL", "watchdog", "ChildFailedError",
               "SIGTERM", "Terminated", "CANCELLED AT", "DUE TO", "srun: error",
               "submitit WARNING", "Bypassing signal", "Received data size doesn't match",
               "gloo/transport", "DistBackendError", "remote process exit", "ncclRemoteError",
               "NCCL communicator was aborted")
# the line closing a traceback: ``ValueError: msg``, ``torch.OutOfMemoryError: ...``, ``AssertionError``
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Interrupted|Exit)\b")
# any other class name (``DistillInterrupted``, ``StopIteration``), used only where a traceback
# has no line like the above: a dotted name with a lower-case letter, then ``:`` or the end
TRACEBACK_END = re.compile(r"^[A-Za-z_][\w.]*[a-z][\w.]*(:|$)")
# exceptions that only wrap the one that ended the process: in a chain, the one before is shown
WRAPPER_EXCEPTIONS = ("SystemExit", "ChildFailedError", "FailedJobError", "UncompletedJobError")
CHAIN_LINES = ("During handling of the above exception, another exception occurred:",
               "The above exception was the direct cause of the following exception:")
# what launchers put before every line: ``[rank0]: `` / ``[rank0]:[W...]`` (torch.distributed),
# ``[default0]:`` (torchrun --tee), `` 0: `` (srun --label)
LINE_PREFIX = re.compile(r"^(?: *\d+:(?: |$)|\[(?:rank|default)\d+\]: ?)")
FRAME_LINE = re.compile(r'^ {2}File "(?P<file>[^"]+)", line (?P<line>\d+)(?:, in (?P<fn>.+))?$')
STAMP = re.compile(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d")  # submitit's and our logging's
CODE_MAX = 80  # a frame's code line longer than this is left out of the status line
EXIT_SLURM_UNREACHABLE = 3  # neither squeue nor sacct answered: the table is the manifest's


def backend_of(manifest: dict) -> backends.Backend:
    """The backend the run was launched with (``backends.for_manifest``)."""
    return backends.for_manifest(manifest)


def stage_states(run_dir: Path) -> tuple[dict, dict[str, dict]]:
    """Manifest + per-stage state merged from done markers, the manifest and the backend.

    The manifest gets a ``_slurm`` entry: {"accounting": error|None, "controller": error|None}.
    """
    paths = RunPaths(run_dir)
    manifest = mf.read(paths.manifest)
    if manifest is None:
        raise mf.ManifestError(f"{run_dir} has no manifest.json: not a kdlaunch run directory; "
                               f"pass the directory the launcher printed")
    stages = manifest.get("stages", {})
    ids = [str(s["job_id"]) for s in stages.values() if s.get("job_id")]
    live, errors = backend_of(manifest).states(ids) if ids else ({}, {})
    manifest["_slurm"] = {"accounting": errors.get("accounting"),
                          "controller": errors.get("controller")}
    out: dict[str, dict] = {}
    for stage, rec in stages.items():
        row = {"job_id": rec.get("job_id", ""), "state": rec.get("state", "NOT SUBMITTED"),
               "elapsed": "", "exit_code": "", "log": rec.get("log", ""),
               "error": rec.get("error", ""), "restarts": "", "deps": rec.get("deps", []),
               "folder": rec.get("folder", "")}
        found = live.get(str(rec.get("job_id")), {})
        row.update({k: v for k, v in found.items()
                    if k in ("state", "elapsed", "exit_code", "restarts", "error")})
        if paths.stage_done(stage).exists():
            row["state"] = "COMPLETED"
        out[stage] = row
    _explain_cancelled(out)
    return manifest, out


def _explain_cancelled(rows: dict[str, dict]) -> None:
    """A stage cancelled because a dependency failed names that dependency (transitively: the
    stage whose own failure started it)."""
    def root_failure(stage: str, seen: set) -> str | None:
        for dep in rows.get(stage, {}).get("deps", []):
            if dep in seen or dep not in rows:
                continue
            seen.add(dep)
            d = rows[dep]
            if d["state"] in FAILED and not d["error"].startswith("dependency failed"):
                return dep
            if d["state"] in FAILED:
                found = root_failure(dep, seen)
                if found:
                    return found
        return None

    for stage, r in rows.items():
        if r["state"] == "CANCELLED" and not r["error"]:
            cause = root_failure(stage, set())
            if cause:
                r["error"] = f"dependency failed: {cause}"


def error_lines(log: str, n: int = 8) -> list[str]:
    """The lines of a log that matter when a stage failed: errors and the traceback's tail."""
    try:
        lines = Path(log).read_text(errors="replace").splitlines()
    except OSError:
        return []
    hits = [ln for ln in lines if any(w in ln for w in ERROR_WORDS)]
    return (hits or lines)[-n:]


def rank_logs(log: str, job_id: str) -> list[tuple[int, Path]]:
    """[(task, path)] of every rank's stdout and stderr for the job whose log is ``log``."""
    if not log or not job_id:
        return []
    folder = Path(log).parent
    out = []
    for p in sorted(folder.glob(f"{job_id}_*_log.*")):
        task = p.name.removeprefix(f"{job_id}_").split("_", 1)[0]
        if task.isdigit() and p.suffix in (".out", ".err"):
            out.append((int(task), p))
    return sorted(out)


def _is_cause(line: str) -> bool:
    return any(w in line for w in ERROR_WORDS) and not _is_echo(line)


def _is_echo(line: str) -> bool:
    return any(e in line for e in ECHO_ERRORS)


def first_error(log: str, job_id: str) -> dict | None:
    """{rank, host, line, exception, frame, context} of the first real error over every rank's
    log; ``line`` is what status prints: the exception and the frame that raised it.

    Of each rank's log, the exception that ended the process counts: the last traceback's (a
    wrapper closing a chain, ``SystemExit``/``ChildFailedError``, gives way to the exception it
    wraps). Lines are read without the prefixes launchers put before them (``[rank0]: ``,
    srun's ``0: ``). An exception that only echoes another rank's death (``[gloo] Connection
    closed by peer``, NCCL watchdog, SIGTERM) counts only when no rank has anything else; an
    error line outside any traceback (``Killed``, slurmstepd's OOM kill) beats such echoes.
    Of the ranks at the same level, the earliest by the timestamp before the error wins (lines
    without one come last), then the lowest rank.
    """
    found = []
    host_of: dict[int, str] = {}
    for task, path in rank_logs(log, job_id):
        try:
            raw = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for ln in raw:
            m = re.search(r"host ([\w.-]+)", ln)
            if m and task not in host_of and "starting" in ln:
                host_of[task] = m.group(1)
        hit = _log_error([_unprefixed(ln) for ln in raw])
        if hit is not None:
            level, exc = hit
            found.append((level, _stamp(raw, exc.index) or "~", task, exc,
                          raw[max(0, exc.index - 3): exc.index + 1]))
    if not found:
        return None
    _, _, task, exc, ctx = min(found, key=lambda f: f[:3])
    return {"rank": task, "host": host_of.get(task, "?"), "line": exc.show(),
            "exception": exc.text, "frame": exc.frame, "context": ctx}


class _Exception:
    """One exception as a log shows it: the line index, its first line, the raising frame."""

    def __init__(self, index: int, text: str, frame: str = "") -> None:
        self.index, self.text, self.frame = index, text, frame

    @property
    def name(self) -> str:
        return self.text.split(":", 1)[0].rsplit(".", 1)[-1]

    def show(self) -> str:
        return f"{self.text} (at {self.frame})" if self.frame else self.text


def _unprefixed(line: str) -> str:
    """A log line without the launchers' prefixes (srun's label, torch's ``[rank0]:``)."""
    for _ in range(3):
        m = LINE_PREFIX.match(line)
        if not m:
            break
        line = line[m.end():]
    return line.rstrip()


def _log_error(lines: list[str]) -> tuple[int, _Exception] | None:
    """(level, error) of one rank's log (prefixes removed): level 0 the exception that ended
    the process, 1 the first error line outside tracebacks, 2 the first exception that only
    echoes another rank's failure; None when the log shows none of these."""
    chains, in_tracebacks = _tracebacks(lines)
    shown = [_raised(chain) for chain in chains]
    real = [e for e in shown if not _is_echo(e.text)]
    if real:
        return 0, ([e for e in real if e.name not in WRAPPER_EXCEPTIONS] or real)[-1]
    for i, ln in enumerate(lines):
        if i not in in_tracebacks and not ln.startswith(" ") and _is_cause(ln):
            return 1, _Exception(i, ln.strip())
    return (2, shown[0]) if shown else None


def _raised(chain: list[_Exception]) -> _Exception:
    """The exception of a chain to report: the last, unless it only wraps an earlier one."""
    for exc in reversed(chain):
        if exc.name not in WRAPPER_EXCEPTIONS:
            return exc
    return chain[-1]


def _tracebacks(lines: list[str]) -> tuple[list[list[_Exception]], set[int]]:
    """The exception chains in a log, in order (each oldest first, as Python prints them), and
    the indices of the lines that belong to tracebacks."""
    chains: list[list[_Exception]] = []
    inside: set[int] = set()
    linked = False
    i = 0
    while i < len(lines):
        if lines[i].startswith("Traceback (most recent call last)"):
            exc, end = _traceback(lines, i + 1)
            inside.update(range(i, end))
            if exc is not None:
                j = end  # the message's further lines, up to a blank line or a log line
                while j < len(lines) and lines[j].strip() and not _starts_traceback(lines[j]) \
                        and not STAMP.search(lines[j]):
                    inside.add(j)
                    j += 1
                if linked and chains:
                    chains[-1].append(exc)
                else:
                    chains.append([exc])
            linked = False
            i = end
            continue
        if lines[i].strip() in CHAIN_LINES:
            linked = True
        i += 1
    return chains, inside


def _traceback(lines: list[str], i: int) -> tuple[_Exception | None, int]:
    """The exception closing the traceback whose frames start at line i (None when the log
    ends or another traceback starts first), and the index after it. Unindented lines that
    other threads printed in between are skipped."""
    frame: re.Match | None = None
    code = ""
    loose = None  # a closing line of another shape, if no exception line comes
    while i < len(lines):
        ln = lines[i]
        if _starts_traceback(ln):
            break
        m = FRAME_LINE.match(ln)
        if m:
            frame, code, loose = m, "", None
        elif ln.startswith(" "):
            if frame is not None and not code and ln.startswith("    ") \
                    and not set(ln.strip()) <= set("^~ "):
                code = ln.strip()
        elif EXCEPTION_LINE.match(ln):
            return _Exception(i, _message(lines, i), _where(frame, code)), i + 1
        elif loose is None and frame is not None and TRACEBACK_END.match(ln):
            loose = i
        i += 1
    if loose is not None:
        return _Exception(loose, _message(lines, loose), _where(frame, code)), loose + 1
    return None, i


def _starts_traceback(line: str) -> bool:
    return line.startswith("Traceback (most recent call last)") or line.strip() in CHAIN_LINES


def _message(lines: list[str], i: int) -> str:
    """The exception line's first line of message (the next line when it starts on one)."""
    text = lines[i].strip()
    name, colon, msg = text.partition(":")
    if colon and not msg.strip() and i + 1 < len(lines):
        nxt = lines[i + 1].strip()
        if any(c.isalnum() for c in nxt) and not _starts_traceback(nxt):
            return f"{name}: {nxt}"
    return text


def _where(frame: re.Match | None, code: str) -> str:
    """``file:line in function: code`` of a traceback frame (an installed package's file from
    its package directory on; the code only when short)."""
    if frame is None:
        return ""
    path = re.sub(r"^.*/(site|dist)-packages/", "", frame["file"])
    out = f"{path}:{frame['line']}" + (f" in {frame['fn']}" if frame["fn"] else "")
    return out + (f": {code}" if code and len(code) <= CODE_MAX else "")


def _stamp(lines: list[str], i: int) -> str | None:
    """The last timestamp at or before line i (submitit/our logging print ISO-like times)."""
    for ln in reversed(lines[: i + 1]):
        m = STAMP.search(ln)
        if m:
            return m.group(0).replace("T", " ")
    return None


def slurm_lines(manifest: dict) -> tuple[list[str], bool]:
    """One line per SLURM daemon that could not be asked, and whether neither answered."""
    s = manifest.get("_slurm") or {}
    acct, ctl = s.get("accounting"), s.get("controller")
    if acct and ctl:
        return [f"SLURM unreachable: controller (squeue: {ctl}) and accounting (sacct: {acct}); "
                "table from the manifest and done markers only, states may be stale"], True
    if ctl:
        return [f"controller unreachable (squeue: {ctl}); table from accounting (sacct), "
                "the manifest and done markers"], False
    if acct:
        return [f"accounting unreachable (sacct: {acct}); table from the controller (squeue), "
                "the manifest and done markers"], False
    return [], False


def render(run_dir: Path) -> tuple[str, int]:
    manifest, rows = stage_states(run_dir)
    return render_rows(run_dir, manifest, rows)


def render_rows(run_dir: Path, manifest: dict, rows: dict[str, dict]) -> tuple[str, int]:
    header = f"run {run_dir}  (config {manifest.get('config_hash')}, {manifest.get('cluster', {}).get('name')})"
    notes, neither = slurm_lines(manifest)
    lines = [header, *notes,
             f"{'stage':<20} {'state':<12} {'job':<10} {'elapsed':<10} {'restarts':<8} log"]
    code = 0
    for stage, r in rows.items():
        lines.append(f"{stage:<20} {r['state']:<12} {r['job_id'] or '-':<10} "
                     f"{r['elapsed'] or '-':<10} {r['restarts'] if r['restarts'] != '' else '-':<8} "
                     f"{r['log'] or '-'}")
        st = registry.get(stage)
        if st and st.checkpoints:
            ckpt = RunPaths(run_dir).checkpoints
            if ckpt.is_dir():
                lines.append(f"    {ckpts.describe(ckpt)}")
        if r["state"] == "REQUEUED":
            lines.append(f"    -> {r['error']}")
            continue
        if r["state"] in FAILED:
            code = 1
            detail = r["error"] or (f"exit code {r['exit_code']}" if r["exit_code"] else "")
            if detail:
                lines.append(f"    -> {detail}")
            if r["state"] == "CANCELLED" and r["error"]:
                continue
            first = first_error(r["log"], str(r["job_id"]))
            if first:
                lines.append(f"    first error: rank {first['rank']} on {first['host']}: "
                             f"{first['line']}")
            else:
                lines += [f"    | {ln}" for ln in error_lines(r["log"])]
    differs = prov.differences_line(prov.version_rows(
        stage_provenance(run_dir, rows), prov.login_versions(manifest)))
    if differs:
        lines.append(f"! what ran: {differs} (--provenance shows each stage's)")
    from kd import runcost  # predicted at launch (launch/cost.py) against what the stages wrote

    spent = runcost.compare(run_dir, manifest)
    if spent is not None:
        lines += runcost.status_lines(spent)
    if neither:
        code = EXIT_SLURM_UNREACHABLE
    return "\n".join(lines), code


def stage_provenance(run_dir: Path, stages) -> dict[str, dict | None]:
    """{stage: provenance from its done marker, or None} for the given stages."""
    paths = RunPaths(run_dir)
    return {s: prov.read_marker(paths.stage_done(s))[0] for s in stages}


def render_provenance(run_dir: Path) -> str:
    """What each stage ran (``--provenance``): from the done markers and the manifest only."""
    paths = RunPaths(run_dir)
    manifest = mf.read(paths.manifest)
    if manifest is None:
        raise mf.ManifestError(f"{run_dir} has no manifest.json: not a kdlaunch run directory; "
                               f"pass the directory the launcher printed")
    lines = [f"run {run_dir}  (config {manifest.get('config_hash')}): what each stage ran, "
             f"from its done marker",
             f"{'stage':<20} {'hosts':<16} {'job':<24} {'wall':<9} {'compat':<20} GPU"]
    records = {}
    for stage in manifest.get("stages", {}):
        rec, why = prov.read_marker(paths.stage_done(stage))
        records[stage] = rec
        if rec is None:
            lines.append(f"{stage:<20} - {why}")
            continue
        lines.append(f"{stage:<20} {prov.hosts_text(rec):<16} {prov.job_text(rec):<24} "
                     f"{prov.wall_text(rec):<9} {prov.compat_text(rec):<20} {prov.gpu_text(rec)}")
    recorded = sum(r is not None for r in records.values())
    rows = prov.version_rows(records, prov.login_versions(manifest))
    if rows:
        lines.append(f"versions, over the stages that imported each ({prov.LOGIN}: what the "
                     f"launcher saw; ! differs):")
        lines += [f"{'!' if r['differs'] else ' '} {r['package']:<16} "
                  f"{prov.describe_versions(r, recorded)}" for r in rows]
    for stage, rec in records.items():
        if rec and (rec.get("compat") or {}).get("active"):
            lines.append(textwrap.fill(f"compat in {stage}: {', '.join(rec['compat']['active'])}",
                                       100, initial_indent="  ", subsequent_indent="      ",
                                       break_on_hyphens=False))
    return "\n".join(lines)


def is_finished(rows: dict[str, dict]) -> bool:
    return all(r["state"] == "COMPLETED" or r["state"] in FAILED for r in rows.values())


def wait_for_run(run_dir: Path, echo=print, poll_s: float = 5.0, timeout_s: float | None = None,
                 max_poll_s: float = 60.0, sleep=time.sleep) -> int:
    """Block until every stage ended. While SLURM cannot be asked, nothing is decided from the
    manifest's stale states: poll again with a doubling delay (up to ``max_poll_s``)."""
    start = time.time()
    last = None
    delay = poll_s
    while True:
        manifest, rows = stage_states(run_dir)
        notes, _ = slurm_lines(manifest)
        summary = " | ".join(notes + [", ".join(f"{s}={r['state']}" for s, r in rows.items())])
        if summary != last:
            echo(f"[{time.strftime('%H:%M:%S')}] {summary}")
            last = summary
        blind = bool(notes)
        if not blind and is_finished(rows):
            text, code = render_rows(run_dir, manifest, rows)
            echo(text)
            return code
        if timeout_s is not None and time.time() - start > timeout_s:
            echo("timed out waiting for the run")
            return EXIT_SLURM_UNREACHABLE if blind else 1
        delay = min(delay * 2, max_poll_s) if blind else poll_s
        sleep(delay)


def tail(run_dir: Path, stage: str, n: int) -> str:
    _, rows = stage_states(run_dir)
    if stage not in rows:
        raise ConfigError(f"--logs {stage!r}: no such stage; stages: {', '.join(rows)}")
    log = rows[stage]["log"]
    if not log or not Path(log).exists():
        return f"{stage}: no log yet ({rows[stage]['state']})"
    lines = Path(log).read_text(errors="replace").splitlines()
    return "\n".join([f"==> {log} <=="] + lines[-n:])


def cancel(run_dir: Path) -> str:
    manifest, rows = stage_states(run_dir)
    ids = [str(r["job_id"]) for r in rows.values()
           if r["job_id"] and r["state"] not in FAILED and r["state"] != "COMPLETED"]
    try:
        backend_of(manifest).cancel(ids)
    except backends.SubmitError as e:
        return f"could not cancel {' '.join(ids)}: {e}"
    return f"cancelled {len(ids)} job(s): {' '.join(ids) or '-'}"


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__)
    p.add_argument("run_dir", type=str)
    p.add_argument("--logs", metavar="STAGE", help="print the tail of STAGE's log")
    p.add_argument("-n", type=int, default=40, help="lines for --logs (default 40)")
    p.add_argument("--cancel", action="store_true", help="cancel the run's unfinished jobs")
    p.add_argument("--wait", action="store_true", help="wait until every stage has ended")
    p.add_argument("--provenance", action="store_true",
                   help="what each finished stage ran: versions, compat set, GPUs, hosts, jobs")
    args = p.parse_args(argv)
    if not args.run_dir.strip():
        return cli.input_error("RUN_DIR is empty; pass the run directory the launcher printed")
    run_dir = Path(args.run_dir).absolute()
    if run_dir.exists() and not run_dir.is_dir():
        return cli.input_error(f"{run_dir} is a file, not a run directory; pass the directory "
                               f"that holds manifest.json")
    try:
        if args.logs:
            print(tail(run_dir, args.logs, args.n))
            return 0
        if args.cancel:
            print(cancel(run_dir))
            return 0
        if args.provenance:
            print(render_provenance(run_dir))
            return 0
        if args.wait:
            return wait_for_run(run_dir)
        text, code = render(run_dir)
    except ConfigError as e:  # a bad manifest (mf.ManifestError) or a bad argument
        return cli.input_error(str(e))
    print(text)
    return code


if __name__ == "__main__":
    sys.exit(main())
