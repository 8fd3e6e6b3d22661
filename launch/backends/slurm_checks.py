"""What SLURM would refuse, checked before the first job is queued (the SLURM backend's
``check_cluster`` and ``check_live``).

``check_cluster``: sbatch is on PATH and the profile names a partition (only the generic
``--cluster slurm`` may lean on the site's default). ``check_live``: every stage of a graph
against what the live cluster offers (``launch.slurm_info``: scontrol, sacctmgr): the partition
exists, each stage's nodes, CPUs, memory, GPUs and time fit its nodes and the partition's
limits, and the account and QOS allow it. sbatch would refuse such a job only after the earlier
stages were queued, or leave it pending forever.
"""

from __future__ import annotations

import os
import shutil

from kd import stages
from launch import slurm_info
from launch.config import Cluster
from launch.schema import ConfigError


def check_cluster(cluster: Cluster, default_partition) -> None:
    """``default_partition()``: the partition sbatch would pick, or None."""
    if not shutil.which("sbatch"):
        raise ConfigError(f"--cluster {cluster.name}: sbatch is not on PATH; run this on a SLURM "
                          f"login node, or use --cluster local")
    if cluster.partition:
        return
    # Only the generic profile may lean on the site's default; named profiles say where they run.
    if cluster.name != "slurm" or not default_partition():
        raise ConfigError(f"cluster.partition is not set for cluster {cluster.name!r}: add "
                          f"`partition: NAME` to the profile or pass cluster.partition=NAME "
                          f"(see `sinfo`; the generic --cluster slurm also reads $SBATCH_PARTITION)")


def check_live(graph, cluster: Cluster, default_partition, echo=print) -> None:
    """Every stage of ``graph`` against what the live cluster offers: the partition exists, and
    each stage's nodes, CPUs, memory, GPUs and time fit its nodes and the partition's limits.
    When the cluster cannot be asked, says so in one line and returns."""
    why = slurm_info.reachable()
    parts = nodes = None
    if why is None:
        parts, nodes = slurm_info.partitions(), slurm_info.nodes()
        if parts is None or nodes is None:
            why = "scontrol show partition/node failed"
    if why:
        echo(f"pre-flight: the live cluster was not asked ({why}); partition and node limits "
             f"are checked by sbatch at submission")
        return
    name = cluster.partition or default_partition() or next(
        (p for p, v in parts.items() if v["default"]), None)
    if name not in parts:
        raise ConfigError(f"cluster.partition={name!r}: no such partition on this cluster "
                          f"(scontrol lists: {', '.join(sorted(parts)) or 'none'}); set "
                          f"cluster.partition to one of them")
    part = parts[name]
    members = {n: v for n, v in nodes.items() if name in v["partitions"]}
    for job in graph.jobs:
        st = stages.get(job.stage)
        where = st.resource_field if st else "cluster.stages"
        _check_job_fits(job, name, part, members, where)
    acct, why = slurm_info.accounting()
    if acct is None:
        echo(f"pre-flight: accounting was not asked ({why}); account and QOS are checked by "
             f"sbatch at submission")
        return
    check_account_qos(graph, cluster, acct, name, part, echo)


def check_account_qos(graph, cluster: Cluster, acct, partition: str, part: dict,
                      echo=print) -> None:
    """The account and QOS (of the profile, else the user's defaults) are allowed for this user
    on this partition, and every stage's time limit is within the QOS's MaxWall."""
    if not acct.associations:
        echo(f"pre-flight: accounting lists no association for user {acct.user} on cluster "
             f"{acct.cluster}; account and QOS are checked by sbatch at submission")
        return
    accounts = sorted({a.account for a in acct.associations})
    account = cluster.account or os.environ.get("SBATCH_ACCOUNT") or acct.default_account
    src = "cluster.account" if cluster.account else "the default account"
    if account is None:
        return
    rows = [a for a in acct.associations if a.account == account]
    if not rows:
        raise ConfigError(f"{src}={account!r}: user {acct.user} has no association with this "
                          f"account on cluster {acct.cluster} (sacctmgr lists: "
                          f"{', '.join(accounts)}); set cluster.account to one of them")
    rows = [a for a in rows if a.partition in ("", partition)]
    if not rows:
        raise ConfigError(f"{src}={account!r} is not associated with partition {partition} "
                          f"for user {acct.user}; set cluster.partition or cluster.account")
    if part.get("allow_accounts") is not None and account not in part["allow_accounts"]:
        raise ConfigError(f"{src}={account!r}: partition {partition} allows only accounts "
                          f"{', '.join(part['allow_accounts'])}; set cluster.account")
    allowed = sorted({q for a in rows for q in a.qos})
    qos = cluster.qos or os.environ.get("SBATCH_QOS")
    qsrc = "cluster.qos"
    if qos is None:
        defaults = {a.default_qos for a in rows if a.default_qos}
        qos = next(iter(defaults)) if len(defaults) == 1 else (
            allowed[0] if len(allowed) == 1 else None)
        qsrc = "the default QOS"
    if qos is None:
        return
    if qos not in acct.qos_max_wall_min:
        raise ConfigError(f"{qsrc}={qos!r}: no such QOS on cluster {acct.cluster} (sacctmgr "
                          f"lists: {', '.join(sorted(acct.qos_max_wall_min)) or 'none'}); set "
                          f"cluster.qos to one allowed for account {account}: "
                          f"{', '.join(allowed) or 'none'}")
    if allowed and qos not in allowed:
        raise ConfigError(f"{qsrc}={qos!r} is not allowed for user {acct.user} with account "
                          f"{account} (allowed: {', '.join(allowed)}); set cluster.qos to one "
                          f"of them or remove it")
    if part.get("allow_qos") is not None and qos not in part["allow_qos"]:
        raise ConfigError(f"{qsrc}={qos!r}: partition {partition} allows only QOS "
                          f"{', '.join(part['allow_qos'])}; set cluster.qos")
    wall = acct.qos_max_wall_min.get(qos)
    for job in graph.jobs:
        if wall is not None and job.time_min > wall:
            field = stages.time_field(job.stage)
            raise ConfigError(f"stage {job.stage}: {field}={job.time_min} min is over QOS "
                              f"{qos}'s MaxWall of {wall:.0f} min (sbatch would refuse it or "
                              f"leave it pending); lower {field} or use another cluster.qos")


def _check_job_fits(job, name: str, part: dict, members: dict[str, dict], where: str) -> None:
    stage = f"stage {job.stage}"
    if part["max_time_min"] is not None and job.time_min > part["max_time_min"]:
        field = stages.time_field(job.stage)
        raise ConfigError(f"{stage}: {field}={job.time_min} min is over partition {name}'s "
                          f"MaxTime of {part['max_time_min']:.0f} min; lower {field} or choose "
                          f"another cluster.partition")
    if part["max_nodes"] is not None and job.nodes > part["max_nodes"]:
        raise ConfigError(f"{stage}: {job.nodes} nodes, partition {name} allows "
                          f"{part['max_nodes']}; lower cluster.nodes")
    cpus = job.tasks_per_node * job.cpus_per_task
    mem_mb = job.mem_gb * 1024 if job.mem_gb is not None else 0
    need = f"{cpus} CPUs, {job.gpus_per_node} GPUs" + (f", {job.mem_gb} GB" if mem_mb else "")
    fit = [n for n, v in members.items()
           if v["cpus"] >= cpus and v["mem_mb"] >= mem_mb and v["gpus"] >= job.gpus_per_node]
    if len(fit) >= job.nodes:
        return
    biggest = ", ".join(f"{n}: {v['cpus']} CPUs, {v['mem_mb'] / 1024:.1f} GB, {v['gpus']} GPUs"
                        for n, v in sorted(members.items())[:4]) or "no nodes"
    if mem_mb and not any(v["mem_mb"] >= mem_mb for v in members.values()):
        field = f"{where}.mem_gb={job.mem_gb}"
    elif not any(v["gpus"] >= job.gpus_per_node for v in members.values()):
        field = f"gpus_per_node={job.gpus_per_node}"
    elif not any(v["cpus"] >= cpus for v in members.values()):
        field = f"{where}.cpus_per_task={job.cpus_per_task} x {job.tasks_per_node} task(s)"
    else:
        field = f"cluster.nodes={job.nodes}"
    raise ConfigError(f"{stage}: {field}: needs {job.nodes} node(s) with {need} each in "
                      f"partition {name}, which has {len(fit)} such node(s) ({biggest}); "
                      f"lower the request")
