"""What the live cluster offers, from ``scontrol`` and ``sacctmgr`` (login-node safe, stdlib only).

``reachable()`` says whether the controller answers; ``partitions()`` and ``nodes()`` parse
``scontrol show partition|node -o`` (one record per line, ``Key=value`` fields);
``accounting()`` asks ``sacctmgr`` (where slurmdbd runs) for the user's associations (accounts,
partitions, allowed and default QOS) and each QOS's MaxWall. Used by
the SLURM backend's ``check_live`` (``launch/backends/slurm_checks.py``) so a request the cluster would refuse (or leave pending
forever) is refused before the first job is queued (sbatch would refuse it only after earlier
stages were submitted).
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
from dataclasses import dataclass, field

_FIELD = re.compile(r"(\w+)=(\S*)")


def _show(kind: str) -> list[dict[str, str]] | None:
    try:
        proc = subprocess.run(["scontrol", "show", kind, "-o"], capture_output=True, text=True,
                              timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    return [dict(_FIELD.findall(line)) for line in proc.stdout.splitlines() if line.strip()]


def reachable() -> str | None:
    """None when the controller answers; else one line saying why not."""
    if not shutil.which("scontrol"):
        return "scontrol is not on PATH"
    try:
        proc = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.SubprocessError) as e:
        return f"scontrol ping failed ({e})"
    if proc.returncode != 0 or "UP" not in proc.stdout:
        return "slurmctld does not answer `scontrol ping`"
    return None


def time_minutes(text: str) -> float | None:
    """SLURM time (``UNLIMITED``, ``MM``, ``HH:MM:SS``, ``D-HH[:MM[:SS]]``) in minutes."""
    if not text or text.upper() in ("UNLIMITED", "INFINITE", "NONE", "N/A"):
        return None
    days, _, rest = text.rpartition("-")
    parts = [float(p) for p in rest.split(":")]
    if days:
        parts += [0] * (3 - len(parts))
        h, m, s = parts
    elif len(parts) == 1:
        h, m, s = 0, parts[0], 0
    elif len(parts) == 2:
        h, m, s = 0, parts[0], parts[1]
    else:
        h, m, s = parts
    return float(days or 0) * 1440 + h * 60 + m + s / 60


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def partitions() -> dict[str, dict] | None:
    """{name: {max_time_min, max_nodes, state, default}} or None when scontrol fails."""
    rows = _show("partition")
    if rows is None:
        return None
    return {r["PartitionName"]: {"max_time_min": time_minutes(r.get("MaxTime", "")),
                                 "max_nodes": _int(r.get("MaxNodes")),
                                 "state": r.get("State", ""),
                                 "default": r.get("Default") == "YES",
                                 "allow_accounts": _allow_list(r.get("AllowAccounts")),
                                 "allow_qos": _allow_list(r.get("AllowQos"))}
            for r in rows if "PartitionName" in r}


def _allow_list(text: str | None) -> list[str] | None:
    """``AllowAccounts``/``AllowQos`` of a partition: None = all."""
    if not text or text.upper() == "ALL":
        return None
    return [x for x in text.split(",") if x]


def _gpus(gres: str) -> int:
    total = 0
    for item in gres.split(","):
        m = re.match(r"gpu(?::[^:()]+)?:(\d+)", item)
        if m:
            total += int(m.group(1))
    return total


def _gpu_types(gres: str) -> list[str]:
    """The GPU types a node's GRES names (``gpu:h100:8`` -> ``["h100"]``; untyped: none)."""
    return [m.group(1) for m in re.finditer(r"gpu:([^:(),]+):\d+", gres)]


def nodes() -> dict[str, dict] | None:
    """{name: {cpus, mem_mb, gpus, gpu_types, partitions, state}} or None when scontrol
    fails."""
    rows = _show("node")
    if rows is None:
        return None
    return {r["NodeName"]: {"cpus": _int(r.get("CPUTot")) or 0,
                            "mem_mb": _int(r.get("RealMemory")) or 0,
                            "gpus": _gpus(r.get("Gres", "")),
                            "gpu_types": _gpu_types(r.get("Gres", "")),
                            "partitions": [p for p in r.get("Partitions", "").split(",") if p],
                            "state": r.get("State", "")}
            for r in rows if "NodeName" in r}


# ---------------------------------------------------------------- accounting (sacctmgr)
@dataclass
class Association:
    account: str
    partition: str  # "" = every partition
    qos: list[str]
    default_qos: str


@dataclass
class Accounting:
    user: str
    cluster: str
    default_account: str | None
    associations: list[Association] = field(default_factory=list)
    qos_max_wall_min: dict[str, float | None] = field(default_factory=dict)  # every QOS


def _sacctmgr(*args: str) -> list[list[str]] | None:
    try:
        proc = subprocess.run(["sacctmgr", "-n", "-P", *args], capture_output=True, text=True,
                              timeout=15)
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    return [line.split("|") for line in proc.stdout.splitlines() if line.strip()]


def user_name() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return os.environ.get("USER", "")


def cluster_name() -> str | None:
    try:
        proc = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True,
                              timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"^ClusterName\s*=\s*(\S+)", proc.stdout, re.M)
    return m.group(1) if proc.returncode == 0 and m else None


def accounting() -> tuple[Accounting | None, str | None]:
    """(what accounting says about this user, None) or (None, why it was not asked)."""
    if not shutil.which("sacctmgr"):
        return None, "sacctmgr is not on PATH"
    cluster = cluster_name()
    if not cluster:
        return None, "scontrol show config names no ClusterName"
    user = user_name()
    rows = _sacctmgr("show", "assoc", "where", f"user={user}", f"cluster={cluster}",
                     "format=Account,Partition,QOS,DefaultQOS")
    users = _sacctmgr("show", "user", user, "format=DefaultAccount")
    qos = _sacctmgr("show", "qos", "format=Name,MaxWall")
    if rows is None or users is None or qos is None:
        return None, "sacctmgr did not answer (no slurmdbd?)"
    assocs = [Association(r[0], r[1], [q for q in r[2].split(",") if q], r[3])
              for r in rows if len(r) >= 4]
    walls = {r[0]: time_minutes(r[1]) for r in qos if len(r) >= 2 and r[0]}
    default = users[0][0] if users and users[0] and users[0][0] else None
    return Accounting(user, cluster, default, assocs, walls), None
