"""What actually ran: the provenance of one stage process, kept in its done marker.

``kd.job.StageJob`` calls :func:`amend_marker` after the stage: the marker the stage wrote
(``RUN/stages/<stage>.done``, JSON) gets a ``provenance`` key from :func:`collect`:

* ``packages``: the installed version of each distribution in :data:`PACKAGES` whose module this
  process imported (read from package metadata, only for modules already in ``sys.modules``, so
  nothing is imported to find out; a module without metadata gives its ``__version__``);
* ``compat``: the ``kd.compat`` workarounds active in this process, and those skipped for their
  version (None, with ``compat_reason``, when the stage never imported ``kd.compat``);
* ``cuda``: torch's CUDA build, whether CUDA was available, the visible GPUs' names and the
  driver version (pynvml, else ``/proc/driver/nvidia/version``, else ``nvidia-smi``);
  fields are None with a ``reason`` where there is no CUDA (never an error);
* ``host`` / ``hosts``: this node and every node of the job (SLURM's node list, expanded);
  ``rank`` / ``world_size``; ``job``: the scheduler's ids (SLURM job, array job/task, step,
  restart count, partition; or submitit's local job id);
* ``python``, ``started`` / ``finished`` (UTC) and ``wall_s`` (the stage's wall time in this
  allocation, module import included).

Readers (``launch/status.py --provenance``, the report's "What ran" section) go through
:func:`read_marker` / :func:`version_rows`, which tolerate markers written before provenance
was recorded (no key: None) and markers that are not JSON at all. The manifest's versions are
the login node's (``manifest["login_node"]``; older manifests: ``manifest["versions"]``), read by
:func:`login_versions`.

Stdlib only at import: the login side imports this module too. Nothing here imports a heavy
package; torch is asked only when the stage already imported it.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import logging
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger("kdlaunch.provenance")

SCHEMA = 1
KEY = "provenance"  # the done marker's key
# distribution -> the module whose presence in sys.modules means "this stage imported it"
PACKAGES: dict[str, str] = {
    "kdlaunch": "kd",
    "torch": "torch",
    "megatron-core": "megatron.core",
    "megatron-bridge": "megatron.bridge",
    "nvidia-modelopt": "modelopt",
    "lm-eval": "lm_eval",
    "transformers": "transformers",
    "datasets": "datasets",
    "numpy": "numpy",
    "pandas": "pandas",
    "submitit": "submitit",
}
PROC_DRIVER = "/proc/driver/nvidia/version"
DRIVER_TIMEOUT_S = 10.0  # nvidia-smi: a hung driver must not hold the stage
LOGIN = "login node"  # how readers name the manifest's versions


# --------------------------------------------------------------------------- collection
def collect(stage: str, started: float | None = None, *, modules: Mapping[str, Any] | None = None,
            environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Provenance of this process (``started``: ``time.time()`` at the stage's start).

    ``modules`` and ``environ`` default to ``sys.modules`` and ``os.environ`` (tests pass their
    own). Every field is collected on its own: one that cannot be read is None with a reason,
    never an exception.
    """
    modules = sys.modules if modules is None else modules
    env = os.environ if environ is None else environ
    end = time.time()
    rec: dict[str, Any] = {
        "schema": SCHEMA,
        "stage": stage,
        "started": _iso(started) if started is not None else None,
        "finished": _iso(end),
        "wall_s": round(end - started, 2) if started is not None else None,
        "python": platform.python_version(),
        "executable": sys.executable,
        "packages": _guard(lambda: package_versions(modules), {}),
    }
    rec.update(_guard(lambda: compat_state(modules),
                      {"compat": None, "compat_reason": "could not be read"}))
    rec["cuda"] = _guard(lambda: cuda_info(modules),
                         {"torch_cuda": None, "available": None, "gpus": None, "driver": None,
                          "driver_source": None, "reason": "could not be read"})
    rec.update(_guard(lambda: where(env), {"host": None, "hosts": None, "job": None}))
    return rec


def _guard(fn, fallback: dict) -> dict:
    try:
        return fn()
    except Exception as e:  # noqa: BLE001  provenance never fails a stage
        log.warning("provenance: %s: %s", type(e).__name__, e)
        out = dict(fallback)
        for key in ("reason", "compat_reason"):
            if key in out:
                out[key] = f"{out[key]} ({type(e).__name__}: {e})"
        return out


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="seconds")


def package_versions(modules: Mapping[str, Any]) -> dict[str, str]:
    """{distribution: version} of the :data:`PACKAGES` whose module is in ``modules``."""
    out = {}
    for dist, module in PACKAGES.items():
        if module not in modules:
            continue
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:  # e.g. a source tree on PYTHONPATH
            version = getattr(modules[module], "__version__", None)
            out[dist] = str(version) if version else "unknown (no package metadata)"
    return out


def compat_state(modules: Mapping[str, Any]) -> dict[str, Any]:
    """``{"compat": {"active": [...], "skipped": {name: why}}}``, or None with a reason."""
    compat = modules.get("kd.compat")
    if compat is None:
        return {"compat": None, "compat_reason": "kd.compat not imported by this stage"}
    state = dict(getattr(compat, "_STATE", {}))
    return {"compat": {"active": [n for n, s in state.items() if s == "active"],
                       "skipped": {n: s for n, s in state.items() if s.startswith("skipped")}},
            "compat_reason": None}


def cuda_info(modules: Mapping[str, Any]) -> dict[str, Any]:
    """torch's CUDA build, availability, GPU names and driver; None fields with a reason."""
    out: dict[str, Any] = {"torch_cuda": None, "available": None, "gpus": None, "driver": None,
                           "driver_source": None, "reason": None}
    torch = modules.get("torch")
    if torch is None:
        out["reason"] = "torch not imported by this stage"
        return out
    out["torch_cuda"] = getattr(getattr(torch, "version", None), "cuda", None)
    out["available"] = bool(torch.cuda.is_available())
    if not out["available"]:
        out["reason"] = ("CUDA not available: torch is a CPU build" if out["torch_cuda"] is None
                         else "CUDA not available: no GPU visible to this process")
        return out
    try:
        out["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception as e:  # noqa: BLE001  the driver answered is_available but not this
        out["reason"] = f"GPU names could not be read ({type(e).__name__}: {e})"
    out["driver"], out["driver_source"] = driver_version()
    if out["driver"] is None and out["reason"] is None:
        out["reason"] = "driver version unknown (no pynvml, /proc/driver/nvidia/version or " \
                        "nvidia-smi)"
    return out


def driver_version() -> tuple[str | None, str | None]:
    """(version, how it was read): pynvml, else the kernel module's /proc file, else
    nvidia-smi; (None, None) when none answers."""
    try:
        import pynvml  # nvidia-ml-py: ctypes only, present in NVIDIA's containers

        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
        return (version.decode() if isinstance(version, bytes) else str(version)), "pynvml"
    except Exception:  # noqa: BLE001  not installed, or NVML could not start: next way
        pass
    try:  # the kernel module's version line (Linux; visible inside containers too)
        text = Path(PROC_DRIVER).read_text(errors="replace")
        m = re.search(r"Kernel Module(?: for \S+)?\s+(\d+(?:\.\d+)+)", text)
        if m:
            return m.group(1), PROC_DRIVER
    except OSError:
        pass
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=DRIVER_TIMEOUT_S)
            first = out.stdout.strip().splitlines()[:1]
            if out.returncode == 0 and first:
                return first[0].strip(), "nvidia-smi"
        except (OSError, subprocess.SubprocessError):
            pass
    return None, None  # (torch 2.11 has no public driver query: torch._C has none either)


def where(env: Mapping[str, str]) -> dict[str, Any]:
    """This node, every node of the job, this process's rank, and the scheduler's ids."""
    host = env.get("SLURMD_NODENAME") or socket.gethostname()
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    hosts = expand_nodelist(nodelist) if nodelist else [host]
    world = _first(env, "WORLD_SIZE", "SLURM_NTASKS", "SUBMITIT_LOCAL_NTASKS")
    if env.get("SLURM_JOB_ID"):
        job = {"scheduler": "slurm", "job_id": env["SLURM_JOB_ID"],
               "array_job_id": env.get("SLURM_ARRAY_JOB_ID"),
               "array_task_id": env.get("SLURM_ARRAY_TASK_ID"),
               "step_id": env.get("SLURM_STEP_ID") or env.get("SLURM_STEPID"),
               "restart_count": _int(env.get("SLURM_RESTART_COUNT"), 0),
               "partition": env.get("SLURM_JOB_PARTITION"),
               "nodelist": nodelist}
    elif env.get("SUBMITIT_LOCAL_JOB_ID"):
        job = {"scheduler": "local", "job_id": env["SUBMITIT_LOCAL_JOB_ID"], "restart_count": 0}
    else:
        job = None
    return {"host": host, "hostname": socket.gethostname(), "hosts": hosts,
            "rank": rank(env), "world_size": _int(world, 1), "job": job}


def rank(env: Mapping[str, str] | None = None) -> int:
    """This process's global rank (torch's RANK, else SLURM's or submitit's task id)."""
    env = os.environ if env is None else env
    return _int(_first(env, "RANK", "SLURM_PROCID", "SUBMITIT_LOCAL_GLOBALID"), 0)


def _first(env: Mapping[str, str], *names: str) -> str | None:
    return next((env[n] for n in names if env.get(n)), None)


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


def expand_nodelist(nodelist: str) -> list[str] | None:
    """SLURM's compressed node list (``n[1-3,5],gpu-[08-09]``) as names; None when it cannot be
    read (the raw list stays in ``job.nodelist``)."""
    out: list[str] = []
    for item in _split_top(nodelist):
        names = _expand_one(item)
        if names is None:
            return None
        out += names
    return out


def _split_top(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return [p for p in [*parts, cur] if p]


def _expand_one(item: str) -> list[str] | None:
    m = re.match(r"^([^\[\]]*)\[([^\[\]]+)\](.*)$", item)
    if m is None:
        return None if "[" in item or "]" in item else [item]
    head, ranges, tail = m.groups()
    rest = _expand_one(tail) if tail else [""]
    if rest is None:
        return None
    names = []
    for r in ranges.split(","):
        lo, _, hi = r.partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            return None
        width = len(lo)
        for i in range(int(lo), int(hi or lo) + 1):
            names += [f"{head}{i:0{width}d}{t}" for t in rest]
    return names


# --------------------------------------------------------------------------- the marker
def marker_stat(path: str | Path | None) -> tuple | None:
    """What tells one write of a marker from another (written by rename: a new inode)."""
    try:
        st = os.stat(path) if path else None
    except OSError:
        return None
    return None if st is None else (st.st_ino, st.st_mtime_ns, st.st_size)


def amend_marker(path: str | Path, record: dict[str, Any]) -> bool:
    """Add ``record`` as the marker's ``provenance`` (atomically: temp file + rename). A marker
    that is not a JSON object (a hand-written or test stage's text) is left as it is."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    if not isinstance(data, dict):
        return False
    data[KEY] = record
    tmp = path.with_name(f".{path.name}.{os.getpid()}.provenance.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)
    return True


def read_marker(path: str | Path) -> tuple[dict | None, str]:
    """(provenance, why) of a done marker: (None, reason) when it has none (no marker, a marker
    written before provenance was recorded, not JSON, a newer schema's shape)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None, "no done marker"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None, "done marker is not JSON (written by hand or by an older stage)"
    rec = data.get(KEY) if isinstance(data, dict) else None
    if not isinstance(rec, dict):
        return None, "no provenance in the done marker (written before it was recorded)"
    return rec, ""


def login_versions(manifest: Mapping[str, Any] | None) -> dict[str, str | None]:
    """The login node's installed versions (and Python) from a manifest (older manifests: the
    top-level ``versions``, without Python)."""
    if not isinstance(manifest, Mapping):
        return {}
    login = manifest.get("login_node")
    versions = login.get("versions") if isinstance(login, Mapping) else manifest.get("versions")
    out = dict(versions) if isinstance(versions, Mapping) else {}
    if isinstance(login, Mapping) and login.get("python"):
        out["python"] = login["python"]
    return out


# --------------------------------------------------------------------------- comparison
def version_rows(records: Mapping[str, dict | None],
                 login: Mapping[str, str | None] | None = None) -> list[dict[str, Any]]:
    """One row per package (and Python) over the stages that imported it and the login node:
    ``{"package", "versions": {version: [stage or "login node", ...]}, "differs": bool}``.

    ``differs``: two stages ran different versions, or a stage ran another version than the
    login node has installed (a container or another venv on the compute nodes)."""
    login = login or {}
    seen: dict[str, dict[str, list[str]]] = {}
    for stage, rec in records.items():
        if not isinstance(rec, dict):
            continue
        items = dict(rec.get("packages") or {})
        if rec.get("python"):
            items["python"] = rec["python"]
        for pkg, version in items.items():
            seen.setdefault(str(pkg), {}).setdefault(str(version), []).append(stage)
    rows = []
    for pkg in sorted(seen, key=lambda p: (p != "python", p)):
        versions = seen[pkg]
        ran = set(versions)
        there = str(login[pkg]) if login.get(pkg) else None
        if there is not None:
            versions.setdefault(there, []).append(LOGIN)
        rows.append({"package": pkg, "versions": versions, "differs": len(versions) > 1,
                     "between_stages": len(ran) > 1,
                     "from_login": there is not None and any(v != there for v in ran)})
    return rows


def describe_versions(row: Mapping[str, Any], stages: int | None = None) -> str:
    """``0.16.1 (distill, export_hf); 0.16.0 (login node)`` where versions differ; where they
    agree and ``stages`` (how many stages recorded provenance) is given, a count instead of the
    names: ``2.13.0 (6 of 7 stages, login node)``, ``(all 7 stages)``."""
    parts = []
    for version, where in row["versions"].items():
        named = [w for w in where if w != LOGIN]
        if stages is not None and not row["differs"] and len(named) > 1:
            named = [f"all {stages} stages" if len(named) == stages
                     else f"{len(named)} of {stages} stages"]
        parts.append(f"{version} ({', '.join(named + [w for w in where if w == LOGIN])})")
    return "; ".join(parts)


def differences_line(rows: list[Mapping[str, Any]]) -> str:
    """One line naming what differs (empty when nothing does): ``megatron-core differs between
    stages; torch, python differ from the login node``."""
    between = [r["package"] for r in rows if r["between_stages"]]
    login = [r["package"] for r in rows if r["from_login"] and not r["between_stages"]]
    parts = []
    if between:
        parts.append(f"{', '.join(between)} {'differs' if len(between) == 1 else 'differ'} "
                     "between stages")
    if login:
        parts.append(f"{', '.join(login)} {'differs' if len(login) == 1 else 'differ'} from "
                     f"the {LOGIN}")
    return "; ".join(parts)


def gpu_text(rec: Mapping[str, Any]) -> str:
    """``2 x NVIDIA H100 80GB HBM3, driver 570.86.15, CUDA 12.8`` or ``none (reason)``."""
    cuda = rec.get("cuda") or {}
    gpus = cuda.get("gpus")
    if not gpus:
        return f"none ({cuda.get('reason') or 'not recorded'})"
    names = sorted(set(gpus))
    text = ", ".join(f"{gpus.count(n)} x {n}" for n in names)
    if cuda.get("driver"):
        text += f", driver {cuda['driver']}"
    if cuda.get("torch_cuda"):
        text += f", CUDA {cuda['torch_cuda']}"
    return text


def hosts_text(rec: Mapping[str, Any]) -> str:
    hosts = rec.get("hosts") or ([rec["host"]] if rec.get("host") else [])
    return ", ".join(hosts) if hosts else "?"


def job_text(rec: Mapping[str, Any]) -> str:
    """``slurm 123 step 0, restart 1`` / ``local 4242`` / ``-``."""
    job = rec.get("job") or {}
    if not job.get("job_id"):
        return "-"
    text = f"{job.get('scheduler', '?')} {job['job_id']}"
    if job.get("array_task_id") is not None:
        text += f"[{job['array_task_id']}]"
    if job.get("step_id") is not None:
        text += f" step {job['step_id']}"
    if job.get("restart_count"):
        text += f", restart {job['restart_count']}"
    return text


def compat_text(rec: Mapping[str, Any]) -> str:
    compat = rec.get("compat")
    if not isinstance(compat, Mapping):
        return "-"
    text = f"{len(compat.get('active') or [])} active"
    skipped = compat.get("skipped") or {}
    return text + (f", {len(skipped)} skipped" if skipped else "")


def wall_text(rec: Mapping[str, Any]) -> str:
    wall = rec.get("wall_s")
    if not isinstance(wall, (int, float)):
        return "-"
    return f"{wall:.1f} s" if wall < 600 else f"{wall / 60:.1f} min"


def summary_line(rec: Mapping[str, Any]) -> str:
    """The job log's one line: versions, compat, GPU, hosts."""
    pkgs = ", ".join(f"{k} {v}" for k, v in (rec.get("packages") or {}).items())
    return (f"provenance: python {rec.get('python')}; {pkgs or 'no listed package imported'}; "
            f"compat {compat_text(rec)}; GPU {gpu_text(rec)}; hosts {hosts_text(rec)}; "
            f"job {job_text(rec)}; wall {wall_text(rec)}")
