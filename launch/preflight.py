"""Pre-flight checks: everything that can be known before a job is queued.

``check(exp, cluster, run_dir)`` raises ``ConfigError`` naming the field, the bad value and
the fix. It reads small files only (``config.json``, tokenizer files, file existence) and asks
``sinfo`` for a default partition on the generic SLURM profile — never imports torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

from launch.config import Cluster, Experiment, tasks_per_node
from launch.layout import require_resolved
from launch.memory import distributed_optimizer, estimate, head_counts
from launch.schema import ConfigError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


MEMORY_HEADROOM = 0.92  # CUDA context, allocator fragmentation and NCCL buffers need the rest


def check(exp: Experiment, cluster: Cluster) -> None:
    """``exp`` as ``launch.layout.resolve`` returns it (no ``auto`` left)."""
    check_layout(exp, cluster)
    check_paths(exp)
    check_models(exp)
    check_memory(exp, cluster)
    check_cluster(cluster)


def check_memory(exp: Experiment, cluster: Cluster) -> None:
    """Refuse a layout whose estimated peak (launch/memory.py) does not fit one GPU."""
    if not (cluster.gpus_per_node and cluster.gpu_memory_gib):
        return
    require_resolved(exp)
    t = exp.train
    dp = max(1, cluster.nodes * tasks_per_node(cluster) // (t.tp * t.pp * t.cp))
    est = estimate(_config(exp.student.path), _config(exp.teacher.path), tp=t.tp, pp=t.pp,
                   seq=t.seq_length, mbs=t.micro_batch_size, recompute=t.recompute == "full",
                   dp=dp, sharded_optimizer=distributed_optimizer(
                       getattr(t, "distributed_optimizer", "auto"), dp))
    budget = MEMORY_HEADROOM * cluster.gpu_memory_gib
    if est.total > budget:
        raise ConfigError(
            f"train.tp={t.tp}, train.pp={t.pp}, train.micro_batch_size={t.micro_batch_size}, "
            f"train.recompute={t.recompute}, train.seq_length={t.seq_length}: estimated peak "
            f"{est.total:.1f} GiB per GPU "
            f"(student states {est.student_states:.1f}, teacher {est.teacher_weights:.1f}, "
            f"activations {est.activations:.1f}, KD logits {est.logits:.1f}) exceeds "
            f"{budget:.1f} GiB ({MEMORY_HEADROOM:.0%} of cluster.gpu_memory_gib="
            f"{cluster.gpu_memory_gib:g}): raise train.tp or train.pp, lower "
            f"train.micro_batch_size or train.seq_length, set train.recompute=full, or let "
            f"train.tp/pp/micro_batch_size/recompute=auto choose")


# ---------------------------------------------------------------- parallel layout
def world_size(cluster: Cluster) -> int:
    return cluster.nodes * tasks_per_node(cluster)


def check_layout(exp: Experiment, cluster: Cluster) -> None:
    require_resolved(exp)
    t = exp.train
    ws = world_size(cluster)
    mp = t.tp * t.pp * t.cp
    if ws % mp:
        raise ConfigError(
            f"train.tp x train.pp x train.cp = {t.tp} x {t.pp} x {t.cp} = {mp} does not divide the "
            f"world size {ws} (cluster.nodes={cluster.nodes} x {tasks_per_node(cluster)} tasks per "
            f"node): change tp/pp or the number of nodes/GPUs")
    if cluster.gpus_per_node and t.tp > tasks_per_node(cluster):
        raise ConfigError(f"train.tp={t.tp} is larger than the {tasks_per_node(cluster)} GPUs of one "
                          f"node: tensor parallelism must stay inside a node; lower train.tp")
    dp = ws // mp
    if t.global_batch_size % (t.micro_batch_size * dp):
        raise ConfigError(
            f"train.global_batch_size={t.global_batch_size} is not divisible by "
            f"train.micro_batch_size x data-parallel size = {t.micro_batch_size} x {dp}: use a "
            f"multiple of {t.micro_batch_size * dp}")


# ---------------------------------------------------------------- files
def _is_local(path: str) -> bool:
    """Hub ids (org/name) are allowed only where noted; everything else is a local path."""
    return path.startswith(("/", ".", "~")) or os.path.exists(path)


def _need_dir(path: str, field: str, what: str) -> Path:
    p = Path(os.path.expanduser(path))
    if not p.exists():
        raise ConfigError(f"{field}={path!r}: no such directory; point it at {what}")
    if not p.is_dir():
        raise ConfigError(f"{field}={path!r}: not a directory; point it at {what}")
    if not os.access(p, os.R_OK | os.X_OK):
        raise ConfigError(f"{field}={path!r}: not readable by you; fix its permissions")
    return p


def check_paths(exp: Experiment) -> None:
    for field, ref in (("student.path", exp.student.path), ("teacher.path", exp.teacher.path)):
        p = _need_dir(ref, field, "an HF checkpoint directory (config.json + safetensors)")
        if not (p / "config.json").is_file():
            raise ConfigError(f"{field}={ref!r} has no config.json: not an HF checkpoint directory")
    if exp.data.tokenizer and _is_local(exp.data.tokenizer):
        _need_dir(exp.data.tokenizer, "data.tokenizer", "an HF tokenizer directory")
    if exp.export.enabled and exp.export.hf_template and _is_local(exp.export.hf_template):
        p = _need_dir(exp.export.hf_template, "export.hf_template", "an HF model directory")
        if not (p / "config.json").is_file():
            raise ConfigError(f"export.hf_template={exp.export.hf_template!r} has no config.json")
    if exp.eval.enabled and exp.eval.include_path:
        _need_dir(exp.eval.include_path, "eval.include_path", "a folder of lm-eval task YAMLs")
    for i, s in enumerate(exp.data.sources):
        where = f"data.sources[{i}]"
        if s.jsonl:
            p = Path(os.path.expanduser(s.jsonl))
            if not p.is_file():
                raise ConfigError(f"{where}.jsonl={s.jsonl!r}: no such file")
            if not os.access(p, os.R_OK):
                raise ConfigError(f"{where}.jsonl={s.jsonl!r}: not readable by you")
        if s.prefix:
            missing = [ext for ext in (".bin", ".idx")
                       if not Path(os.path.expanduser(s.prefix) + ext).is_file()]
            if missing:
                raise ConfigError(
                    f"{where}.prefix={s.prefix!r}: {' and '.join(s.prefix + m for m in missing)} "
                    f"missing; a Megatron dataset prefix needs both .bin and .idx (give the path "
                    f"without extension, e.g. data/wiki_text_document)")


# ---------------------------------------------------------------- models
def _config(path: str) -> dict:
    return json.loads((Path(os.path.expanduser(path)) / "config.json").read_text())


def tokenizer_fingerprint(path: str) -> str | None:
    d = Path(os.path.expanduser(path))
    h = hashlib.sha256()
    found = False
    for name in TOKENIZER_FILES[:3]:
        f = d / name
        if f.is_file():
            h.update(name.encode() + f.read_bytes())
            found = True
    return h.hexdigest()[:16] if found else None


def check_models(exp: Experiment) -> None:
    require_resolved(exp)
    tp = exp.train.tp
    cfgs = {}
    for role in ("student", "teacher"):
        cfg = cfgs[role] = _config(getattr(exp, role).path)
        heads, kv = head_counts(cfg)
        if heads % tp:
            raise ConfigError(f"train.tp={tp} does not divide the {role}'s {heads} attention heads "
                              f"({role}.path): choose a tp that divides {heads}")
        bad = sorted({n for n in kv if n % tp})
        if bad:
            raise ConfigError(f"train.tp={tp} does not divide the {role}'s key/value heads "
                              f"({', '.join(map(str, bad))}): choose a tp that divides them")
        max_pos = cfg.get("max_position_embeddings")
        if max_pos and exp.train.seq_length > max_pos:
            raise ConfigError(f"train.seq_length={exp.train.seq_length} exceeds the {role}'s "
                              f"max_position_embeddings={max_pos}: lower train.seq_length")
    sv, tv = cfgs["student"].get("vocab_size"), cfgs["teacher"].get("vocab_size")
    if sv != tv:
        raise ConfigError(f"student and teacher vocabularies differ (student.path vocab_size={sv}, "
                          f"teacher.path vocab_size={tv}): logit distillation needs the same "
                          f"tokenizer; pick a student pruned from this teacher")
    fs, ft = tokenizer_fingerprint(exp.student.path), tokenizer_fingerprint(exp.teacher.path)
    if fs and ft and fs != ft:
        raise ConfigError("student and teacher tokenizers differ (tokenizer files in student.path "
                          "and teacher.path are not identical): logit distillation needs the same "
                          "tokenizer; copy the teacher's tokenizer files into the student")


# ---------------------------------------------------------------- cluster
def default_partition() -> str | None:
    """The partition sbatch would pick: $SBATCH_PARTITION, else sinfo's default (marked '*')."""
    env = os.environ.get("SBATCH_PARTITION") or os.environ.get("SLURM_PARTITION")
    if env:
        return env
    if not shutil.which("sinfo"):
        return None
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True,
                             timeout=15).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for name in out.split():
        if name.endswith("*"):
            return name[:-1]
    return None


def check_cluster(cluster: Cluster) -> None:
    if cluster.executor != "slurm":
        return
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
