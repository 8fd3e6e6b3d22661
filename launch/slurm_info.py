"""What the live cluster offers, from ``scontrol`` (login-node safe, stdlib only).

``reachable()`` says whether the controller answers; ``partitions()`` and ``nodes()`` parse
``scontrol show partition|node -o`` (one record per line, ``Key=value`` fields). Used by
``launch.preflight.check_live`` so a request no node can satisfy is refused before the first
job is queued (sbatch would refuse it only after earlier stages were submitted).
"""

from __future__ import annotations

import re
import shutil
import subprocess

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
                                 "default": r.get("Default") == "YES"}
            for r in rows if "PartitionName" in r}


def _gpus(gres: str) -> int:
    total = 0
    for item in gres.split(","):
        m = re.match(r"gpu(?::[^:()]+)?:(\d+)", item)
        if m:
            total += int(m.group(1))
    return total


def nodes() -> dict[str, dict] | None:
    """{name: {cpus, mem_mb, gpus, partitions, state}} or None when scontrol fails."""
    rows = _show("node")
    if rows is None:
        return None
    return {r["NodeName"]: {"cpus": _int(r.get("CPUTot")) or 0,
                            "mem_mb": _int(r.get("RealMemory")) or 0,
                            "gpus": _gpus(r.get("Gres", "")),
                            "partitions": [p for p in r.get("Partitions", "").split(",") if p],
                            "state": r.get("State", "")}
            for r in rows if "NodeName" in r}
