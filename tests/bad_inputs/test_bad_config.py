"""Bad configs through the real CLI (``launch/distill.py``): one table, five categories.

Every case runs twice, in-process through ``main(argv)`` (fast): ``--dry-run --cluster local`` and
a real launch on ``--cluster ci``. Each asserts exit code 2, the offending field named in the
message, no traceback, a short message (no flood), no run directory and nothing written in the
working directory. A few run as real subprocesses, and ``squeue`` shows none of their jobs.

    python tests/bad_inputs/test_bad_config.py      # prints the case count per category
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

YAML_FORM = "YAML form"
TYPES = "types and ranges"
PATHS = "paths"
LAYOUT = "layout and model consistency"
PROFILE = "the cluster profile"
CATEGORIES = (YAML_FORM, TYPES, PATHS, LAYOUT, PROFILE)
TP2 = ("train.tp=2", "cluster.tasks_per_node=2")  # a world where tp=2 fits, on both profiles


@dataclass(frozen=True)
class Case:
    category: str
    id: str
    field: str  # must appear in the message
    overrides: tuple[str, ...] = ()
    text: Callable[[str], str | bytes] | None = None  # rewrites the experiment YAML
    models: Callable[[Path, Path], None] | None = None  # mutates student/teacher dirs
    config: Callable[[Path, Path], str] | None = None  # (world, yaml) -> the --config argument
    cluster: Callable[[Path], str] | None = None  # world -> the --cluster argument


def _edit_config(role: str, **changes):
    def edit(s: Path, t: Path) -> None:
        d = s if role == "student" else t
        cfg = json.loads((d / "config.json").read_text())
        for k, v in changes.items():
            if v is _DROP:
                cfg.pop(k, None)
            else:
                cfg[k] = v
        (d / "config.json").write_text(json.dumps(cfg))
    return edit


def _write(role: str, content: bytes):
    def edit(s: Path, t: Path) -> None:
        ((s if role == "student" else t) / "config.json").write_bytes(content)
    return edit


_DROP = object()
BOMB = "\n".join(["x_bomb:", "  a: &a [x, x, x, x, x, x, x, x, x]"]
                 + [f"  {c}: &{c} [{', '.join(['*' + p] * 9)}]"
                    for p, c in zip("abcdefgh", "bcdefghi", strict=True)]) + "\n"


def _section(name: str, body: str):
    return lambda text: text + f"{name}:\n{body}\n"


CASES: list[Case] = [
    # ------------------------------------------------------------ YAML form
    Case(YAML_FORM, "second-train-section", "duplicate key 'train'",
         text=_section("train", "  lr: 0.5")),
    Case(YAML_FORM, "duplicate-nested-key", "duplicate key 'lr'",
         text=lambda t: t.replace("  lr: 0.001\n", "  lr: 0.001\n  lr: 0.5\n")),
    Case(YAML_FORM, "duplicate-name", "duplicate key 'name'",
         text=lambda t: t + "name: other\n"),
    Case(YAML_FORM, "alias-bomb", "aliases", text=lambda t: t + BOMB),
    Case(YAML_FORM, "recursive-alias", "aliases", text=lambda t: t + "x_loop: &l [*l]\n"),
    Case(YAML_FORM, "not-utf8", "not UTF-8",
         text=lambda t: t.encode() + b"# caf\xe9 \xff\n"),
    Case(YAML_FORM, "too-large", "bytes", text=lambda t: t + ("#" * 100 + "\n") * 11000),
    Case(YAML_FORM, "unclosed-bracket", "not valid YAML", text=lambda t: t + "extra: [a, b\n"),
    Case(YAML_FORM, "tab-indent", "not valid YAML",
         text=lambda t: t.replace("  lr: 0.001", "\tlr: 0.001")),
    Case(YAML_FORM, "top-level-list", "expected a mapping at the top level",
         text=lambda t: "- a\n- b\n"),
    Case(YAML_FORM, "empty-file", "expected a mapping at the top level", text=lambda t: ""),
    Case(YAML_FORM, "unknown-top-level-key", "unknown key(s) trian",
         text=lambda t: t + "trian:\n  lr: 1\n"),
    Case(YAML_FORM, "section-is-scalar", "kd: expected a mapping",
         text=lambda t: t + "kd: 5\n"),
    Case(YAML_FORM, "missing-required-student", "student is required",
         text=lambda t: re.sub(r"^student:\n  path: .*\n", "", t, flags=re.M)),
    Case(YAML_FORM, "override-not-key-value", "is not key=value", overrides=("train.lr",)),
    Case(YAML_FORM, "override-empty-key", "empty key", overrides=("=3",)),
    Case(YAML_FORM, "override-into-scalar", "name is not a mapping", overrides=("name.x=1",)),
    Case(YAML_FORM, "override-duplicate-key", "duplicate key 'name'",
         overrides=("data.sources=[{name: a, name: b, jsonl: x}]",)),
    Case(YAML_FORM, "override-alias-bomb", "aliases",
         overrides=("kd.x={a: &a [x,x,x,x,x,x,x,x,x], b: &b [*a,*a,*a,*a,*a,*a,*a,"
                    "*a,*a], c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b], d: &d [*c,*c,*c,*c,*c,*c,*c,*c,"
                    "*c], e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d], f: [*e,*e,*e,*e,*e,*e,*e,*e,*e]}",)),
    Case(YAML_FORM, "config-is-directory", "is a directory",
         config=lambda world, path: str(world)),
    Case(YAML_FORM, "config-missing", "cannot read config",
         config=lambda world, path: str(world / "nope.yaml")),
    # ------------------------------------------------------------ types and ranges
    Case(TYPES, "lr-nan", "train.lr", overrides=("train.lr=.nan",)),
    Case(TYPES, "lr-inf", "train.lr", overrides=("train.lr=.inf",)),
    Case(TYPES, "lr-nan-string", "train.lr", overrides=("train.lr=nan",)),
    Case(TYPES, "lr-zero", "train.lr", overrides=("train.lr=0",)),
    Case(TYPES, "lr-bool", "train.lr", overrides=("train.lr=true",)),
    Case(TYPES, "min-lr-negative", "train.min_lr", overrides=("train.min_lr=-1",)),
    Case(TYPES, "temperature-nan", "kd.logit_kl_temperature",
         overrides=("kd.logit_kl_temperature=.nan",)),
    Case(TYPES, "temperature-negative", "kd.logit_kl_temperature",
         overrides=("kd.logit_kl_temperature=-1",)),
    Case(TYPES, "kd-scale-inf", "kd.kd_loss_scale", overrides=("kd.kd_loss_scale=-.inf",)),
    Case(TYPES, "topk-zero", "kd.logit_kl_topk", overrides=("kd.logit_kl_topk=0",)),
    Case(TYPES, "weight-nan", "data.sources[0].weight",
         text=lambda t: t.replace("weight: 1.0", "weight: .nan")),
    Case(TYPES, "train-iters-zero", "train.train_iters", overrides=("train.train_iters=0",)),
    Case(TYPES, "train-iters-negative", "train.train_iters", overrides=("train.train_iters=-5",)),
    Case(TYPES, "seq-length-zero", "train.seq_length", overrides=("train.seq_length=0",)),
    Case(TYPES, "tp-word", "train.tp", overrides=("train.tp=two",)),
    Case(TYPES, "tp-zero", "train.tp", overrides=("train.tp=0",)),
    Case(TYPES, "pp-negative", "train.pp", overrides=("train.pp=-1",)),
    Case(TYPES, "mbs-word", "train.micro_batch_size", overrides=("train.micro_batch_size=abc",)),
    Case(TYPES, "recompute-unknown", "train.recompute", overrides=("train.recompute=partial",)),
    Case(TYPES, "precision-fp16", "train.precision", overrides=("train.precision=fp16",)),
    Case(TYPES, "split-zeros", "train.split", overrides=("train.split='0,0,0'",)),
    Case(TYPES, "split-no-train", "train.split", overrides=("train.split='0,1,0'",)),
    Case(TYPES, "split-words", "train.split", overrides=("train.split=a,b,c",)),
    Case(TYPES, "split-two", "train.split", overrides=("train.split='1,1'",)),
    Case(TYPES, "warmup-too-long", "train.lr_warmup_iters",
         overrides=("train.lr_warmup_iters=1000",)),
    Case(TYPES, "save-interval-zero", "train.save_interval", overrides=("train.save_interval=0",)),
    Case(TYPES, "eval-iters-negative", "train.eval_iters", overrides=("train.eval_iters=-1",)),
    Case(TYPES, "cp-2", "train.cp", overrides=("train.cp=2",)),
    # sequence parallelism, fusions, the compiled teacher (kd/sections.py Train, KD)
    Case(TYPES, "fuse-unknown", "train.fuse", overrides=("train.fuse=[norm, layernorm]",)),
    Case(TYPES, "fuse-word", "train.fuse", overrides=("train.fuse=all",)),
    Case(TYPES, "sequence-parallel-word", "train.sequence_parallel",
         overrides=("train.sequence_parallel=sometimes",)),
    Case(TYPES, "compile-teacher-word", "kd.compile_teacher",
         overrides=("kd.compile_teacher=maybe",)),
    Case(LAYOUT, "sequence-parallel-at-tp1", "train.sequence_parallel",
         overrides=("train.tp=1", "train.sequence_parallel=true")),
    Case(LAYOUT, "sequence-parallel-auto-tp-chose-1", "train.sequence_parallel",
         overrides=("train.tp=auto", "train.sequence_parallel=true")),
    Case(TYPES, "workers-zero", "data.workers", overrides=("data.workers=0",)),
    # the options of Model-Optimizer's distill.py: kd/sections.py Train, Optimizer, Checkpoint,
    # Logging
    Case(TYPES, "recompute-module-moe", "train.recompute_modules[0]",
         overrides=("train.recompute=selective", "train.recompute_modules=[moe]")),
    Case(TYPES, "recompute-module-typo", "train.recompute_modules[1]",
         overrides=("train.recompute=selective", "train.recompute_modules=[mlp, core_atn]")),
    Case(TYPES, "recompute-modules-not-selective", "train.recompute_modules",
         overrides=("train.recompute=full", "train.recompute_modules=[mlp]")),
    Case(TYPES, "adam-beta2-one", "optimizer.adam_beta2", overrides=("optimizer.adam_beta2=1.0",)),
    Case(TYPES, "weight-decay-negative", "optimizer.weight_decay",
         overrides=("optimizer.weight_decay=-0.1",)),
    Case(TYPES, "clip-grad-nan", "optimizer.clip_grad", overrides=("optimizer.clip_grad=.nan",)),
    Case(TYPES, "lr-decay-style", "optimizer.lr_decay_style",
         overrides=("optimizer.lr_decay_style=cosine_annealing",)),
    Case(TYPES, "keep-last-zero", "checkpoint.keep_last", overrides=("checkpoint.keep_last=0",)),
    Case(TYPES, "async-save-word", "checkpoint.async_save",
         overrides=("checkpoint.async_save=sometimes",)),
    Case(TYPES, "timers-three", "logging.timers", overrides=("logging.timers=3",)),
    Case(TYPES, "wandb-mode", "logging.wandb_mode", overrides=("logging.wandb_mode=offlne",)),
    Case(TYPES, "wandb-project-empty", "logging.wandb_project",
         overrides=("logging.wandb_project=' '",)),
    Case(TYPES, "wandb-key-in-config", "logging.wandb_api_key",
         overrides=("logging.wandb_api_key=0123456789abcdef",)),
    Case(TYPES, "teacher-megatron-checkpoint", "teacher.megatron_checkpoint",
         overrides=("teacher.megatron_checkpoint=/some/ckpt",)),
    Case(TYPES, "trust-remote-code-word", "trust_remote_code",
         overrides=("trust_remote_code=maybe",)),
    Case(TYPES, "eval-batch-zero", "eval.batch_size", overrides=("eval.batch_size=0",)),
    Case(TYPES, "eval-batch-negative", "eval.batch_size", overrides=("eval.batch_size=-3",)),
    Case(TYPES, "eval-batch-word", "eval.batch_size", overrides=("eval.batch_size=autox",)),
    Case(TYPES, "eval-tasks-empty", "eval.tasks", overrides=("eval.tasks=[]",)),
    Case(TYPES, "eval-task-shell", "eval.tasks[0]", overrides=("eval.tasks=['x; rm -rf ~']",)),
    Case(TYPES, "fewshot-negative", "eval.num_fewshot", overrides=("eval.num_fewshot=-1",)),
    Case(TYPES, "fewshot-word", "eval.num_fewshot", overrides=("eval.num_fewshot=five",)),
    Case(TYPES, "fewshot-six", "eval.num_fewshot", overrides=("eval.num_fewshot=6",)),
    Case(TYPES, "eval-tasks-mmlu-not-first", "eval.tasks", overrides=("eval.tasks=[kd_ok, mmlu]",)),
    Case(TYPES, "eval-tasks-without-mmlu", "eval.tasks", overrides=("eval.tasks=[kd_ok]",)),
    Case(TYPES, "eval-task-twice", "eval.tasks", overrides=("eval.tasks=[mmlu, kd_ok, kd_ok]",)),
    Case(TYPES, "eval-dtype", "eval.dtype", overrides=("eval.dtype=float8",)),
    Case(TYPES, "eval-limit-zero", "eval.limit", overrides=("eval.limit=0",)),
    Case(TYPES, "eval-limit-nan", "eval.limit", overrides=("eval.limit=.nan",)),
    Case(TYPES, "export-iteration-beyond", "export.iteration",
         overrides=("export.iteration=1000",)),
    Case(TYPES, "export-iteration-off-save-point", "export.iteration",
         overrides=("export.iteration=7",)),
    Case(TYPES, "export-iteration-zero", "export.iteration", overrides=("export.iteration=0",)),
    Case(TYPES, "select-iteration-off-save-point", "select.iterations",
         overrides=("select.iterations=[7]",)),
    Case(TYPES, "select-iteration-zero", "select.iterations[0]",
         overrides=("select.iterations=[0]",)),
    Case(TYPES, "select-by-unknown-task", "select.by",
         overrides=("select.every_save=true", "select.by=gsm8k")),
    Case(TYPES, "select-by-no-such-category", "select.by",
         overrides=("select.every_save=true", "select.by=mmlu_math")),
    Case(TYPES, "select-by-category-misspelled", "select.by",
         overrides=("select.every_save=true", "select.by=mmlu_social_science")),
    Case(TYPES, "select-by-val-loss-unlogged", "select.by",
         overrides=("select.every_save=true", "select.by=val_loss", "train.eval_interval=20")),
    Case(TYPES, "select-without-eval", "select.by",
         overrides=("select.every_save=true", "eval.enabled=false")),
    Case(TYPES, "select-and-export-iteration", "export.iteration",
         overrides=("select.every_save=true", "export.iteration=10")),
    Case(TYPES, "select-limit-zero", "select.limit", overrides=("select.limit=0",)),
    Case(TYPES, "select-noise-z-nan", "select.noise_z", overrides=("select.noise_z=.nan",)),
    Case(TYPES, "skip-lm-loss-word", "kd.skip_lm_loss", overrides=("kd.skip_lm_loss=maybe",)),
    Case(TYPES, "max-documents-zero", "data.sources[0].max_documents",
         overrides=("data.sources=[{name: c, jsonl: x.jsonl, max_documents: 0}]",)),
    # ------------------------------------------------------------ paths
    Case(PATHS, "student-missing", "student.path", overrides=("student.path=/nonexistent/s",)),
    Case(PATHS, "teacher-is-file", "teacher.path", overrides=("teacher.path=CORPUS",)),
    Case(PATHS, "student-no-config-json", "student.path",
         models=lambda s, t: (s / "config.json").unlink()),
    Case(PATHS, "jsonl-missing", "data.sources[0].jsonl",
         overrides=("data.sources=[{name: c, jsonl: /nonexistent/c.jsonl}]",)),
    Case(PATHS, "prefix-missing", "data.sources[0].prefix",
         overrides=("data.sources=[{name: c, prefix: /nonexistent/pfx}]",)),
    Case(PATHS, "include-path-missing", "eval.include_path",
         overrides=("eval.include_path=/nonexistent/tasks",)),
    Case(PATHS, "hf-template-missing", "export.hf_template",
         overrides=("export.hf_template=./no/such/template",)),
    Case(PATHS, "hf-template-null", "export.hf_template", overrides=("export.hf_template=null",)),
    Case(PATHS, "tokenizer-missing", "data.tokenizer", overrides=("data.tokenizer=./nope-tok",)),
    Case(PATHS, "source-name-slash", "data.sources[0].name",
         overrides=("data.sources=[{name: a/b, jsonl: CORPUS}]",)),
    Case(PATHS, "source-name-twice", "data.sources[1].name",
         overrides=("data.sources=[{name: a, jsonl: CORPUS}, {name: a, jsonl: CORPUS}]",)),
    Case(PATHS, "source-two-kinds", "data.sources[0]",
         overrides=("data.sources=[{name: a, jsonl: CORPUS, hf_name: x/y}]",)),
    Case(PATHS, "sources-empty", "data.sources", overrides=("data.sources=[]",)),
    Case(PATHS, "student-megatron-checkpoint-missing", "student.megatron_checkpoint",
         overrides=("student.megatron_checkpoint=/nonexistent/checkpoints/iter_0000008",)),
    Case(PATHS, "unknown-task", "eval.tasks[1]", overrides=("eval.tasks=[mmlu, no_such_task_q]",)),
    Case(PATHS, "index-cache-is-file", "data.index_cache", overrides=("data.index_cache=CORPUS",)),
    Case(PATHS, "index-cache-under-file", "data.index_cache",
         overrides=("data.index_cache=CORPUS/index_cache",)),
    Case(PATHS, "include-path-bad-yaml", "eval.include_path",
         models=lambda s, t: (s.parent / "tasks" / "broken.yaml").write_text("task: [x\n")),
    Case(PATHS, "cluster-profile-missing", "--cluster", cluster=lambda world: "no_such_profile"),
    Case(PATHS, "cluster-file-missing", "cannot read config",
         cluster=lambda world: str(world / "nope.yaml")),
    # ------------------------------------------------------------ layout and model consistency
    Case(LAYOUT, "config-json-invalid", "student.path", models=_write("student", b"{not json")),
    Case(LAYOUT, "config-json-not-utf8", "student.path", models=_write("student", b"{\"a\": \"\xff\"}")),
    Case(LAYOUT, "config-json-list", "teacher.path", models=_write("teacher", b"[1, 2]")),
    Case(LAYOUT, "no-head-count", "num_attention_heads",
         models=_edit_config("student", num_attention_heads=_DROP)),
    Case(LAYOUT, "head-count-zero", "num_attention_heads",
         models=_edit_config("teacher", num_attention_heads=0)),
    Case(LAYOUT, "auto-layout-no-head-count", "num_attention_heads",
         overrides=("train.tp=auto", "train.micro_batch_size=auto", "cluster.gpus_per_node=2",
                    "cluster.tasks_per_node=1", "cluster.gpu_memory_gib=80"),
         models=_edit_config("student", num_attention_heads=_DROP)),
    Case(LAYOUT, "auto-layout-invalid-json", "student.path",
         overrides=("train.tp=auto", "cluster.gpus_per_node=2", "cluster.tasks_per_node=1",
                    "cluster.gpu_memory_gib=80"),
         models=_write("student", b"{oops")),
    Case(LAYOUT, "auto-layout-without-gpu-memory", "cluster.gpu_memory_gib",
         overrides=("train.tp=auto", "cluster.gpus_per_node=2", "cluster.tasks_per_node=1")),
    Case(LAYOUT, "no-layer-count", "num_hidden_layers",
         models=_edit_config("student", num_hidden_layers=_DROP)),
    Case(LAYOUT, "vocab-word", "vocab_size", models=_edit_config("student", vocab_size="big")),
    Case(LAYOUT, "pp-does-not-divide-layers", "train.pp=2",
         overrides=("train.pp=2", "cluster.tasks_per_node=2"),
         models=_edit_config("student", num_hidden_layers=3)),
    Case(LAYOUT, "tp-does-not-divide-vocab", "train.tp=2", overrides=TP2,
         models=lambda s, t: (_edit_config("student", vocab_size=135)(s, t),
                              _edit_config("teacher", vocab_size=135)(s, t))),
    Case(LAYOUT, "tp-does-not-divide-ffn", "FFN width", overrides=TP2,
         models=_edit_config("student", block_configs=[
             {"attention": {"num_key_value_heads": 8}, "ffn": {"intermediate_size": 128}},
             {"attention": {"num_key_value_heads": 8}, "ffn": {"intermediate_size": 33}}])),
    Case(LAYOUT, "tp-does-not-divide-heads", "train.tp=2", overrides=TP2,
         models=_edit_config("student", num_attention_heads=7, num_key_value_heads=7)),
    Case(LAYOUT, "tp-does-not-divide-kv-heads", "train.tp=2", overrides=TP2,
         models=_edit_config("teacher", num_key_value_heads=3)),
    Case(LAYOUT, "mp-does-not-divide-world", "train.tp x train.pp",
         overrides=("train.tp=3", "cluster.tasks_per_node=2")),
    Case(LAYOUT, "gbs-not-multiple", "train.global_batch_size",
         overrides=("train.global_batch_size=3", "train.micro_batch_size=2")),
    Case(LAYOUT, "vocab-mismatch", "vocabularies differ",
         models=_edit_config("student", vocab_size=512)),
    Case(LAYOUT, "tokenizer-mismatch", "tokenizers differ",
         models=lambda s, t: (s / "tokenizer.json").write_text('{"other": 1}')),
    Case(LAYOUT, "seq-beyond-positions", "train.seq_length",
         overrides=("train.seq_length=8192",)),
    Case(LAYOUT, "eval-without-export", "export.enabled", overrides=("export.enabled=false",)),
    # ------------------------------------------------------------ the cluster profile
    Case(PROFILE, "mem-negative", "cluster.mem_gb", overrides=("cluster.mem_gb=-1",)),
    Case(PROFILE, "nodes-zero", "cluster.nodes", overrides=("cluster.nodes=0",)),
    Case(PROFILE, "nodes-word", "cluster.nodes", overrides=("cluster.nodes=two",)),
    Case(PROFILE, "cpus-zero", "cluster.cpus_per_task", overrides=("cluster.cpus_per_task=0",)),
    Case(PROFILE, "time-zero", "cluster.time_min", overrides=("cluster.time_min=0",)),
    Case(PROFILE, "time-negative", "cluster.time_min", overrides=("cluster.time_min=-5",)),
    Case(PROFILE, "stage-time-negative", "cluster.stages.eval_min",
         overrides=("cluster.stages.eval_min=-1",)),
    Case(PROFILE, "stage-time-zero", "cluster.stages.export_min",
         overrides=("cluster.stages.export_min=0",)),
    Case(PROFILE, "time-word", "cluster.time_min", overrides=("cluster.time_min=soon",)),
    Case(PROFILE, "stage-time-fraction", "cluster.stages.report_min",
         overrides=("cluster.stages.report_min=2.5",)),
    Case(PROFILE, "time-safety-below-one", "cluster.time_safety",
         overrides=("cluster.time_safety=0.8",)),
    Case(PROFILE, "time-max-zero", "cluster.time_max_min", overrides=("cluster.time_max_min=0",)),
    Case(PROFILE, "gpu-kind-unknown", "cluster.gpu_kind", overrides=("cluster.gpu_kind=v100",)),
    Case(PROFILE, "time-too-short-for-train-iters", "cluster.time_min",
         overrides=("cluster.time_min=15", "cluster.max_requeues=0",
                    "train.train_iters=100000")),
    Case(PROFILE, "stage-cpus-zero", "cluster.stages.cpus_per_task",
         overrides=("cluster.stages.cpus_per_task=0",)),
    Case(PROFILE, "stage-mem-negative", "cluster.stages.mem_gb",
         overrides=("cluster.stages.mem_gb=-2",)),
    Case(PROFILE, "stages-scalar", "cluster.stages", overrides=("cluster.stages=5",)),
    Case(PROFILE, "save-longer-than-signal", "cluster.signal_delay_s",
         overrides=("cluster.signal_delay_s=5", "cluster.save_time_s=60")),
    Case(PROFILE, "signal-beyond-limit", "cluster.signal_delay_s",
         overrides=("cluster.time_min=30", "cluster.signal_delay_s=100000")),
    Case(PROFILE, "save-time-negative", "cluster.save_time_s",
         overrides=("cluster.save_time_s=-1",)),
    Case(PROFILE, "requeues-negative", "cluster.max_requeues",
         overrides=("cluster.max_requeues=-1",)),
    Case(PROFILE, "executor-unknown", "cluster.executor",
         overrides=("cluster.executor=kubernetes",)),
    Case(PROFILE, "env-secret", "cluster.env.HF_TOKEN", overrides=("cluster.env.HF_TOKEN=x",)),
    Case(PROFILE, "env-bad-name", "cluster.env.1BAD", overrides=("cluster.env.1BAD=x",)),
    Case(PROFILE, "mount-no-colon", "cluster.container.mounts",
         overrides=("cluster.container.mounts=[nocolon]",)),
    # pyxis splits --container-mounts at ',' and ':' (launch/shell.py container_mount_problem)
    Case(PROFILE, "mount-comma", "cluster.container.mounts[1]",
         overrides=("cluster.container.mounts=['/data:/data', '/a:/a,/etc:/host_etc']",)),
    Case(PROFILE, "mount-empty", "cluster.container.mounts[0]",
         overrides=("cluster.container.mounts=[':']",)),
    Case(PROFILE, "mount-space", "cluster.container.mounts[0]",
         overrides=("cluster.container.mounts=['/my data:/data']",)),
    Case(PROFILE, "mount-extra-colon", "cluster.container.mounts[0]",
         overrides=("cluster.container.mounts=['/a:/b:ro:/etc']",)),
    Case(PROFILE, "mount-source-not-path", "cluster.container.mounts[0]",
         overrides=("cluster.container.mounts=['~/data:/data']",)),
    Case(PROFILE, "container-image-with-flag", "cluster.container.image",
         overrides=("cluster.container.image='nvcr.io/x:1 --container-remap-root'",)),
    Case(PROFILE, "container-image-blank", "cluster.container.image",
         overrides=("cluster.container.image=' '",)),
    Case(PROFILE, "time-string-too-many-colons", "cluster.additional_parameters.time",
         overrides=("cluster.additional_parameters.time=1:2:3:4",)),
    Case(PROFILE, "time-string-word", "cluster.additional_parameters.time",
         overrides=("cluster.additional_parameters.time=soon",)),
    Case(PROFILE, "gpu-memory-nan", "cluster.gpu_memory_gib",
         overrides=("cluster.gpu_memory_gib=.nan",)),
    Case(PROFILE, "gpu-memory-negative", "cluster.gpu_memory_gib",
         overrides=("cluster.gpu_memory_gib=-1",)),
    Case(PROFILE, "partition-empty", "cluster.partition", overrides=("cluster.partition=''",)),
    Case(PROFILE, "unknown-cluster-key", "cluster.gpus", overrides=("cluster.gpus=4",)),
    Case(PROFILE, "tasks-per-node-zero", "cluster.tasks_per_node",
         overrides=("cluster.tasks_per_node=0",)),
    Case(PROFILE, "gpus-negative", "cluster.gpus_per_node",
         overrides=("cluster.gpus_per_node=-1",)),
    Case(PROFILE, "async-save-without-gpus", "checkpoint.async_save",
         overrides=("checkpoint.async_save=true",)),
    Case(PROFILE, "recompute-layernorm-without-gpus", "train.recompute_modules",
         overrides=("train.recompute=selective", "train.recompute_modules=[layernorm]")),
    Case(PROFILE, "profile-duplicate-key", "duplicate key 'nodes'",
         cluster=lambda world: _profile(world, "nodes: 1\nnodes: 2\n")),
    Case(PROFILE, "profile-not-utf8", "not UTF-8",
         cluster=lambda world: _profile(world, b"name: x\n# \xff\n")),
]


def _profile(world: Path, extra: str | bytes) -> str:
    base = (REPO / "configs" / "clusters" / "local.yaml").read_bytes()
    path = world / "profile.yaml"
    path.write_bytes(base + (extra if isinstance(extra, bytes) else extra.encode()))
    return str(path)


# ------------------------------------------------------------------ the world each case starts from
def _hf_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "num_attention_heads": 8, "num_key_value_heads": 8,
        "vocab_size": 256, "max_position_embeddings": 4096, "hidden_size": 64,
        "num_hidden_layers": 2, "intermediate_size": 128}))
    (path / "tokenizer.json").write_text('{"fake": "tok"}')
    return path


def make_world(root: Path) -> dict:
    """Models, corpus, an lm-eval task folder and a valid experiment YAML under ``root``."""
    s, t = _hf_dir(root / "student"), _hf_dir(root / "teacher")
    corpus = root / "corpus.jsonl"
    corpus.write_text('{"text": "w1 w2"}\n')
    (root / "tasks").mkdir()
    (root / "tasks" / "kd_ok.yaml").write_text("task: kd_ok\ndataset_path: json\n")
    name = f"badcfg-{uuid.uuid4().hex[:8]}"
    exp = {
        "name": name, "student": {"path": str(s)}, "teacher": {"path": str(t)},
        "data": {"workers": 1, "sources": [{"name": "c", "weight": 1.0, "jsonl": str(corpus)}]},
        "train": {"tp": 1, "pp": 1, "seq_length": 64, "micro_batch_size": 1,
                  "global_batch_size": 4, "train_iters": 20, "lr": 0.001, "min_lr": 0.0001,
                  "lr_warmup_iters": 2, "eval_interval": 10, "eval_iters": 1,
                  "save_interval": 10, "precision": "fp32"},
        "export": {"enabled": True, "hf_template": str(t)},
        "eval": {"tasks": ["mmlu", "kd_ok"], "num_fewshot": 0, "batch_size": 2,
                 "dtype": "float32", "include_path": str(root / "tasks")},
    }
    text = yaml.safe_dump(exp, sort_keys=False)
    return {"root": root, "student": s, "teacher": t, "corpus": corpus, "name": name,
            "text": text, "run_dir": root / "run"}


def build_argv(case: Case, world: dict, mode: str) -> list[str]:
    root = world["root"]
    text = case.text(world["text"]) if case.text else world["text"]
    path = root / "exp.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    if case.models:
        case.models(world["student"], world["teacher"])
    config = case.config(root, path) if case.config else str(path)
    cluster = case.cluster(root) if case.cluster else ("local" if mode == "dry-run" else "ci")
    overrides = [o.replace("CORPUS", str(world["corpus"])) for o in case.overrides]
    argv = ["--cluster", cluster, "--config", config, "--run-dir", str(world["run_dir"])]
    return argv + (["--dry-run"] if mode == "dry-run" else []) + overrides


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    from launch.distill import main

    try:
        code = main(argv)
    except SystemExit as e:  # argparse errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def check_refused(case: Case, code: int, out: str, err: str, world: dict, before: set[str]):
    text = out + err
    assert code == 2, f"{case.id}: exit {code}\n{text[-2000:]}"
    assert case.field in err, f"{case.id}: {case.field!r} not named in:\n{err[-2000:]}"
    assert "Traceback" not in text, text[-2000:]
    assert len(err) < 4000, f"{case.id}: {len(err)} characters of error output"
    assert not world["run_dir"].exists(), "a run directory was created"
    assert _tree(world["root"]) == before, f"files written: {_tree(world['root']) - before}"


@pytest.fixture
def world(tmp_path, monkeypatch):
    root = tmp_path / "w"
    root.mkdir()
    monkeypatch.chdir(root)  # anything written relative to the cwd would show up in the tree
    return make_world(root)


def test_the_starting_world_is_accepted(world, capsys):
    """Guards the table: every case differs from a config that passes pre-flight."""
    for cluster in ("local", "ci"):
        argv = ["--cluster", cluster, "--config", str(world["root"] / "x.yaml"), "--run-dir",
                str(world["run_dir"]), "--dry-run"]
        (world["root"] / "x.yaml").write_text(world["text"])
        code, out, err = run_main(argv, capsys)
        assert code == 0, out + err
        assert not world["run_dir"].exists()


@pytest.mark.parametrize("mode", ["dry-run", "launch"])
@pytest.mark.parametrize("case", CASES, ids=[f"{c.category.split()[0]}-{c.id}" for c in CASES])
def test_bad_config_is_refused(case, mode, world, capsys):
    argv = build_argv(case, world, mode)
    before = _tree(world["root"])
    code, out, err = run_main(argv, capsys)
    check_refused(case, code, out, err, world, before)


SUBPROCESS_CASES = ["second-train-section", "alias-bomb", "lr-nan", "tp-does-not-divide-vocab",
                    "no-head-count"]


@pytest.mark.parametrize("case_id", SUBPROCESS_CASES)
def test_real_process_on_the_test_cluster(case_id, world):
    """The same refusals from a real process launching on --cluster ci; squeue shows nothing."""
    if not shutil.which("squeue"):
        pytest.fail("squeue not on PATH: start the test cluster (scripts/slurm/start_cluster.sh)")
    case = next(c for c in CASES if c.id == case_id)
    argv = build_argv(case, world, "launch")
    before = _tree(world["root"])
    res = subprocess.run([sys.executable, str(REPO / "launch" / "distill.py"), *argv],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    check_refused(case, res.returncode, res.stdout, res.stderr, world, before)
    assert "nothing was queued." in res.stderr
    jobs = subprocess.run(["squeue", "-h", "-o", "%j"], capture_output=True, text=True).stdout
    assert world["name"] not in jobs


def case_counts() -> Counter:
    return Counter(c.category for c in CASES)


def test_table_size_and_categories():
    counts = case_counts()
    print("\n".join(f"{cat}: {counts[cat]}" for cat in CATEGORIES))
    assert set(counts) == set(CATEGORIES)
    assert sum(counts.values()) >= 70
    assert len({c.id for c in CASES}) == len(CASES)


if __name__ == "__main__":
    counts = case_counts()
    for cat in CATEGORIES:
        print(f"{cat}: {counts[cat]}")
    print(f"total: {sum(counts.values())} cases x 2 modes")


@pytest.mark.parametrize("z", [".nan", ".inf", "nan"])
def test_sweep_alarm_z_must_be_finite(tmp_path, z):
    """The sweep loader shares the one YAML reader and converter: a NaN alarm is refused."""
    from launch.schema import ConfigError
    from launch.sweep_plan import load_sweep

    text = (REPO / "configs" / "sweeps" / "nightly_tiny.yaml").read_text()
    data = yaml.safe_load(text)
    data["alarm"] = {**(data.get("alarm") or {}), "z": z}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data).replace(f"'{z}'", z))
    with pytest.raises(ConfigError, match=r"alarm\.z"):
        load_sweep(str(path))
