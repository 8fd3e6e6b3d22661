"""Pre-flight checks: everything that can be known before a job is queued.

``check(exp, cluster, run_dir)`` raises ``ConfigError`` naming the field, the bad value and
the fix. It reads small files only (``config.json``, tokenizer files, file existence) and asks
the cluster's backend what it refuses of the profile (``Backend.check_cluster``; the live
cluster is ``Backend.check_live``, run by ``launch/start.py``) — never imports torch.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
from pathlib import Path

from launch import backends
from launch.config import Cluster, Experiment, tasks_per_node
from launch.layout import data_parallel, estimate_layout, require_model_counts, require_resolved
from launch.memory import head_counts
from launch.schema import ConfigError, read_yaml

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


MEMORY_HEADROOM = 0.92  # CUDA context, allocator fragmentation and NCCL buffers need the rest


def check(exp: Experiment, cluster: Cluster) -> None:
    """``exp`` as ``launch.layout.resolve`` returns it (no ``auto`` left)."""
    check_layout(exp, cluster)
    check_paths(exp)
    check_models(exp)
    check_model_shapes(exp)
    check_eval_tasks(exp)
    check_memory(exp, cluster)
    backends.for_cluster(cluster).check_cluster()  # SLURM: sbatch, a partition
    check_options(exp, cluster)
    check_time(exp, cluster)


def check_time(exp: Experiment, cluster: Cluster, echo=print) -> None:
    """The distill time limit (pinned, or auto capped by the partition/QOS) can finish
    ``train.train_iters`` within ``cluster.max_requeues`` restarts, by the cost estimate
    (launch/cost.py ``check_time_limits``: the refusal names the field, the restarts it would
    take and the fix)."""
    from launch.cost import check_time_limits

    check_time_limits(exp, cluster, echo)


def check_options(exp: Experiment, cluster: Cluster) -> None:
    """The options of Model-Optimizer's distill.py that depend on the cluster or on files."""
    if exp.checkpoint.async_save and not cluster.gpus_per_node:
        raise ConfigError(
            f"checkpoint.async_save=true needs CUDA GPUs (cluster {cluster.name!r} has none): "
            f"megatron-core's async checkpoint worker binds a CUDA device; set "
            f"checkpoint.async_save=false")
    if "layernorm" in exp.train.recompute_modules and not cluster.gpus_per_node:
        raise ConfigError(
            "train.recompute_modules has 'layernorm': megatron-core recomputes it with "
            "output-discarding checkpointing, which needs Transformer Engine (GPU containers); "
            f"cluster {cluster.name!r} has no GPUs: use core_attn and/or mlp")
    if exp.student.megatron_checkpoint is not None:
        from kd.checkpoints import resolve_checkpoint

        try:
            resolve_checkpoint(exp.student.megatron_checkpoint)
        except ValueError as err:
            raise ConfigError(str(err)) from None


def check_memory(exp: Experiment, cluster: Cluster) -> None:
    """Refuse a layout whose estimated peak (launch/memory.py) does not fit one GPU."""
    if not (cluster.gpus_per_node and cluster.gpu_memory_gib):
        return
    require_resolved(exp)
    t = exp.train
    data_parallel(cluster, t.tp, t.pp, t.cp)  # refuses a world the layout does not divide
    est = estimate_layout(_config(exp.student.path, "student.path"),
                          _config(exp.teacher.path, "teacher.path"),
                          world=world_size(cluster), tp=t.tp, pp=t.pp, cp=t.cp,
                          seq=t.seq_length, mbs=t.micro_batch_size, recompute=t.recompute,
                          sharded=t.distributed_optimizer, sequence_parallel=t.sequence_parallel)
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
    dp = data_parallel(cluster, t.tp, t.pp, t.cp)
    if cluster.gpus_per_node and t.tp > tasks_per_node(cluster):
        raise ConfigError(f"train.tp={t.tp} is larger than the {tasks_per_node(cluster)} GPUs of one "
                          f"node: tensor parallelism must stay inside a node; lower train.tp")
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
    if exp.data.index_cache:
        check_index_cache(exp.data.index_cache)
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


def check_index_cache(path: str) -> None:
    """``data.index_cache`` is a directory Megatron reads and writes index files in (distill
    creates it, and a lock file in it): refuse a file, or a path under a file."""
    p = Path(os.path.expanduser(path)).absolute()
    fix = ("point data.index_cache at a directory (it is created when missing), or remove it "
           "to use the run's own data/index_cache")
    if p.exists() and not p.is_dir():
        raise ConfigError(f"data.index_cache={path!r}: is a file, not a directory; {fix}")
    probe = p
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"data.index_cache={path!r}: {probe} is a file, so the directory "
                          f"cannot be created; {fix}")


# ---------------------------------------------------------------- models
def _config(path: str, field: str = "student.path/teacher.path") -> dict:
    """A model's config.json, refused (naming the file) when unreadable, not JSON or headless."""
    f = Path(os.path.expanduser(path)) / "config.json"
    try:
        cfg = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{field}: cannot read {f} ({e.__class__.__name__}); point {field} at "
                          f"an HF checkpoint directory") from None
    except ValueError as e:
        raise ConfigError(f"{field}: {f} is not valid JSON ({e}); restore it from the "
                          f"checkpoint") from None
    return require_model_counts(cfg, f, field)


def ffn_widths(cfg: dict) -> list[int]:
    """FFN width of every layer that has one (AnyModel ``block_configs`` aware)."""
    base = cfg.get("intermediate_size")
    blocks = cfg.get("block_configs")
    if not blocks:
        return [int(base)] if isinstance(base, int) and base > 0 else []
    out = []
    for b in blocks:
        mlp = b.get("ffn", {}) if isinstance(b, dict) else {}
        if not isinstance(mlp, dict) or mlp.get("no_op") or mlp.get("replace_with_linear"):
            continue
        width = mlp.get("intermediate_size") or base
        if isinstance(width, int) and width > 0:
            out.append(width)
    return out


def check_model_shapes(exp: Experiment) -> None:
    """PP divides the layer counts; TP divides the vocabulary and every FFN width."""
    require_resolved(exp)
    tp, pp = exp.train.tp, exp.train.pp
    for role in ("student", "teacher"):
        cfg = _config(getattr(exp, role).path, f"{role}.path")
        layers = cfg["num_hidden_layers"]
        if layers % pp:
            raise ConfigError(f"train.pp={pp} does not divide the {role}'s {layers} layers "
                              f"({role}.path): choose a pp that divides {layers}")
        vocab = cfg["vocab_size"]
        if vocab % tp:
            raise ConfigError(f"train.tp={tp} does not divide the {role}'s vocabulary of {vocab} "
                              f"({role}.path vocab_size): choose a tp that divides {vocab}")
        bad = sorted({w for w in ffn_widths(cfg) if w % tp})
        if bad:
            raise ConfigError(f"train.tp={tp} does not divide the {role}'s FFN width(s) "
                              f"{', '.join(map(str, bad))} ({role}.path): choose a tp that "
                              f"divides every FFN width")


# ---------------------------------------------------------------- eval tasks (no lm_eval import)
# top-level `task:`, `group:`, `tag:` (keys may be quoted), and block lists under `tag:`
_TASK_LINE = re.compile(r"^['\"]?(?:task|group|tag)['\"]?\s*:\s*['\"]?([A-Za-z0-9_.\-]+)", re.M)
_TAG_ITEM = re.compile(r"^['\"]?tag['\"]?\s*:\s*\n((?:[ \t]*-[ \t]*\S+[ \t]*\n?)+)", re.M)
_installed_tasks: set[str] | None = None


def _task_names_in(text: str) -> set[str]:
    names = set(_TASK_LINE.findall(text))
    for block in _TAG_ITEM.findall(text):
        names.update(item.strip().lstrip("-").strip().strip("'\"") for item in block.splitlines()
                     if item.strip())
    return names


def _scan(folder: Path) -> set[str]:
    names: set[str] = set()
    for f in folder.rglob("*.yaml"):
        try:
            names |= _task_names_in(f.read_text(encoding="utf-8", errors="replace"))
        except OSError:
            continue
    return names


def installed_task_names() -> set[str] | None:
    """Task, group and tag names of the installed lm-eval, read from its task YAMLs (never
    importing it); None when lm-eval is not installed on this node."""
    global _installed_tasks
    if _installed_tasks is None:
        spec = importlib.util.find_spec("lm_eval")
        if spec is None or not spec.submodule_search_locations:
            return None
        folder = Path(list(spec.submodule_search_locations)[0]) / "tasks"
        _installed_tasks = _scan(folder) if folder.is_dir() else set()
    return _installed_tasks


def check_eval_tasks(exp: Experiment) -> None:
    """Every eval task is in lm-eval's registry or in eval.include_path."""
    e = exp.eval
    if not e.enabled:
        return
    local: set[str] = set()
    if e.include_path:
        folder = Path(os.path.expanduser(e.include_path))
        if folder.is_dir():
            for f in folder.rglob("*.yaml"):
                try:
                    data = read_yaml(f, tags_as_text=True)
                except ConfigError as err:
                    raise ConfigError(f"eval.include_path: {err}") from None
                if isinstance(data, dict):
                    for key in ("task", "group", "tag"):
                        v = data.get(key)
                        local.update([v] if isinstance(v, str) else
                                     [x for x in v if isinstance(x, str)] if isinstance(v, list)
                                     else [])
    installed = installed_task_names()
    if installed is None and not local:
        print("pre-flight: lm-eval is not installed here; eval task names are not checked")
        return
    known = local | (installed or set())
    for i, task in enumerate(e.tasks):
        if task not in known:
            near = sorted(n for n in known if n.startswith(task[:3]))[:5]
            raise ConfigError(f"eval.tasks[{i}]={task!r}: no such lm-eval task"
                              f"{' in eval.include_path' if e.include_path else ''} or in the "
                              f"installed lm-eval{'; similar: ' + ', '.join(near) if near else ''}. "
                              f"Fix the name, or add its YAML to eval.include_path")


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
        cfg = cfgs[role] = _config(getattr(exp, role).path, f"{role}.path")
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
