"""Eval stage: MMLU (overall + 4 categories) of one checkpoint with lm-eval, one results file.

``run(spec)`` evaluates ``spec.model`` with lm-eval's ``hf`` backend on the real ``mmlu`` task
group and writes ``spec.out_file`` in the schema of ``kd/results.py``.

* Checkpoints: standard HF ones, and Puzzletron AnyModel ones (``config.json`` has
  ``block_configs``), which are built under ModelOpt's ``deci_x_patcher`` and handed to
  lm-eval's ``HFLM`` as a model object.
* Device and dtype: ``device="auto"`` picks CUDA when present. On CPU a half-precision dtype
  is replaced by float32 (CPU bf16 matmuls are slow and not what GPUs compute).
* Offline: ``spec.eval.include_path`` is passed to lm-eval's ``TaskManager`` (see
  ``kd/mmlu_local.py`` for overrides that point ``mmlu`` at a local copy of cais/mmlu);
  without it lm-eval reads ``cais/mmlu`` from the Hub or a warm ``HF_DATASETS_CACHE``.
* Data parallel: with ``device="cuda"`` the questions are shared out over one model process
  per visible GPU (``kd/eval_shards.py``; ``$KD_EVAL_PROCESSES`` or ``run(spec, processes=N)``
  overrides the count). lm-eval itself runs once, in this process, so the merged results are
  those of a single-process run.
* Per-question outcomes: the primary score of every question is kept beside the results file
  (``<role>.samples.jsonl.gz``, referenced by the record's ``samples``) for the report's paired
  test.
* Idempotent: every result carries a fingerprint of what determines its numbers (see
  ``fingerprint``). A finished ``out_file`` with the same fingerprint is reused ("skipping");
  with ``spec.cache_dir`` set (the teacher), results are also kept in
  ``cache_dir/<fingerprint>.json`` and reused by any later run with the same teacher and
  settings. Batch size and device are not part of the fingerprint (they move numbers by at
  most rounding noise), so a cache entry survives batch-size tuning.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import json
import logging
import os
import re
import shutil
import time
from functools import partial
from pathlib import Path

from kd import compat, results
from kd.specs import EvalSpec

log = logging.getLogger("kdlaunch.evaluate")

HALF_DTYPES = ("bfloat16", "float16")
DTYPES = ("auto", "bfloat16", "float16", "float32")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")
_SAMPLE = 1 << 20  # bytes hashed at the start, middle and end of each weight file


def run(spec: EvalSpec, processes: int | None = None) -> dict:
    """Evaluate (or reuse) and write ``spec.out_file``; return the results record.

    ``processes``: data-parallel model processes (default: see ``eval_shards.processes_for``).
    """
    check(spec)
    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.eval.dtype, device)
    key = fingerprint(spec, dtype)
    out = Path(spec.out_file)
    record = _reusable(out, key)
    if record is not None:
        log.info("skipping %s: %s already holds these results", spec.role, out)
    else:
        record = _cached(spec, key)
        if record is None:
            from kd import eval_shards

            record = _evaluate(spec, device, dtype, key,
                               eval_shards.processes_for(device, processes))
            _store(spec, key, record)
        results.write_json_atomic(out, record)
        log.info("%s results written to %s", spec.role, out)
    _log_summary(spec.role, record)
    if spec.done_marker:
        results.write_json_atomic(spec.done_marker, {"out_file": str(out), "fingerprint": key})
    return record


def check(spec: EvalSpec) -> None:
    """Fail early, with the fix, on settings lm-eval would reject later (or silently ignore)."""
    if spec.role not in results.ROLES:
        raise ValueError(f"EvalSpec.role {spec.role!r} is unknown: use one of {results.ROLES}")
    # eval.tasks (mmlu first, each once) and eval.num_fewshot (0..5) are checked where the
    # Eval section is built (kd/sections.py), so a launch refuses them before queueing
    if spec.eval.dtype not in DTYPES:
        raise ValueError(f"EvalSpec.dtype {spec.eval.dtype!r}: use one of {DTYPES}")
    if spec.eval.limit is not None and spec.eval.limit <= 0:
        raise ValueError(
            f"EvalSpec.limit {spec.eval.limit}: use None (all questions), an int N "
            "(first N per subject) or a fraction in (0, 1)"
        )
    if spec.eval.include_path and not Path(spec.eval.include_path).is_dir():
        raise ValueError(
            f"EvalSpec.include_path {spec.eval.include_path} is not a directory "
            "(write one with `python -m kd.mmlu_local tasks`)"
        )
    model = Path(spec.model)
    if not model.exists() and spec.model.startswith(("/", ".", "~")):
        raise ValueError(
            f"checkpoint {spec.model} not found: pass an existing HF checkpoint "
            "directory (or a Hub id on clusters with Hub access)"
        )
    if model.exists() and not (model / "config.json").is_file():
        raise ValueError(
            f"{model} has no config.json: pass an HF checkpoint directory "
            "(for the distilled student, the export stage's output)"
        )


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str, device: str) -> str:
    if device.startswith("cpu") and dtype in HALF_DTYPES:
        log.info("device is CPU: evaluating in float32 instead of %s", dtype)
        return "float32"
    return dtype


def is_anymodel(model: str | Path) -> bool:
    """True for Puzzletron AnyModel checkpoints (heterogeneous layers: ``block_configs``)."""
    config = Path(model) / "config.json"
    return config.is_file() and "block_configs" in json.loads(config.read_text())


# --- fingerprint and reuse -------------------------------------------------------------------


def fingerprint(spec: EvalSpec, dtype: str) -> str:
    """sha256 of what determines the numbers: weights, tasks, shots, limit, data, versions."""
    material = {
        "model": model_fingerprint(spec.model),
        "tasks": list(spec.eval.tasks),
        "num_fewshot": spec.eval.num_fewshot,
        "limit": spec.eval.limit,
        "dtype": dtype,
        "seed": spec.seed,
        "task_overrides": _tree_digest(spec.eval.include_path, ("*.yaml", "*.yml")),
        "lm_eval": _version("lm_eval"),
        "transformers": _version("transformers"),
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def model_fingerprint(model: str | Path) -> str:
    """Content fingerprint of a checkpoint dir (independent of its path and mtimes).

    Config, tokenizer and index files are hashed whole; weight files by size plus three 1 MiB
    samples (start, middle, end), which tell apart any two trainings without reading 16 GB.
    A non-directory (hub id) is fingerprinted by its name.
    """
    root = Path(model)
    if not root.is_dir():
        return f"name:{model}"
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(".") or "/." in rel:
            continue
        digest.update(rel.encode())
        if path.name.endswith(_WEIGHT_SUFFIXES):
            digest.update(_sampled_digest(path))
        elif path.suffix in (".json", ".model", ".txt", ".tiktoken", ".py"):
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _sampled_digest(path: Path) -> bytes:
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as f:
        for offset in sorted({0, max(0, size // 2 - _SAMPLE // 2), max(0, size - _SAMPLE)}):
            f.seek(offset)
            digest.update(f.read(_SAMPLE))
    return digest.digest()


def _tree_digest(root: str | None, patterns: tuple[str, ...]) -> str | None:
    if not root:
        return None
    digest = hashlib.sha256()
    files = sorted({p for pattern in patterns for p in Path(root).rglob(pattern)})
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package.replace("_", "-"))
    except importlib.metadata.PackageNotFoundError:
        return None


def _reusable(out: Path, key: str) -> dict | None:
    if not out.is_file():
        return None
    try:
        record = json.loads(out.read_text())
    except json.JSONDecodeError:
        return None
    return record if record.get("fingerprint") == key else None


def _cache_file(cache_dir: str, key: str) -> Path:
    return Path(cache_dir) / f"{key}.json"


def _cached(spec: EvalSpec, key: str) -> dict | None:
    if not spec.cache_dir:
        return None
    path = _cache_file(spec.cache_dir, key)
    if not path.is_file():
        log.info("teacher cache miss (%s): evaluating", path.name)
        return None
    record = json.loads(path.read_text())
    log.info(
        "teacher cache hit: reusing %s (computed %s for %s)",
        path,
        record.get("timestamp"),
        record.get("model"),
    )
    return {
        **record,
        "role": spec.role,
        "model": str(spec.model),
        "cache": {"hit": True, "file": str(path)},
        "samples": _copy_samples(path, record.get("samples"), spec.out_file),
    }


def _store(spec: EvalSpec, key: str, record: dict) -> None:
    if spec.cache_dir:
        path = _cache_file(spec.cache_dir, key)
        samples = _copy_samples(spec.out_file, record.get("samples"), path)
        results.write_json_atomic(path, {**record, "samples": samples})
        record["cache"] = {"hit": False, "file": str(path)}


def _copy_samples(src_results: str | Path, ref: dict | None, dst_results: str | Path):
    """Copy a samples file to sit beside another results file; its reference there."""
    if not ref:
        return ref
    src = Path(src_results).parent / ref["file"]
    if not src.is_file():
        return None
    dst = results.samples_file(dst_results)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    return {**ref, "file": dst.name}


# --- the evaluation itself --------------------------------------------------------------------


def _evaluate(spec: EvalSpec, device: str, dtype: str, key: str, processes: int = 1) -> dict:
    import lm_eval

    from kd import eval_shards

    kind = "anymodel" if is_anymodel(spec.model) else "hf"
    log.info(
        "evaluating %s (%s checkpoint %s) on %s in %s: tasks %s, %d-shot, limit %s, "
        "%d process(es)",
        spec.role,
        kind,
        spec.model,
        device,
        dtype,
        ",".join(spec.eval.tasks),
        spec.eval.num_fewshot,
        spec.eval.limit,
        processes,
    )
    start = time.time()
    build = partial(build_language_model, str(spec.model), kind, dtype, spec.eval.batch_size,
                    trust_remote_code=spec.trust_remote_code)
    if processes > 1:
        lm = eval_shards.start(build, eval_shards.worker_devices(device, processes))
    else:
        lm = build(device)
    try:
        manager = task_manager(spec.eval.tasks, spec.eval.include_path)
        with compat.scoped.private_datasets_cache(bool(spec.eval.include_path)):
            res = _simple_evaluate(lm_eval, lm, spec, manager)
    finally:
        if processes > 1:
            lm.close()
    return _record(spec, res, kind, device, dtype, key, start, processes)


def task_manager(tasks, include_path: str | None = None):
    """lm-eval's ``TaskManager`` over only the folders the requested tasks live in.

    A full ``TaskManager()`` parses every YAML file lm-eval ships (~14,700 entries, ~9 s of CPU
    in every eval job, more on a slow shared filesystem). lm-eval keeps most families in a
    folder named after them (``tasks/mmlu``, ``tasks/hellaswag``), so the index is first built
    from those folders (the task name and its first ``_`` part) plus ``include_path``, in the
    same order as the full one (lm-eval's folder first, ``include_path`` overriding it). It is
    used only when every requested name and everything its groups name (recursively) resolves
    in it, and no YAML file outside those folders carries a tag it reaches; otherwise the full
    index is built, as lm-eval would.
    """
    import lm_eval.tasks
    from lm_eval.tasks import TaskManager

    extra = [str(include_path)] if include_path else []
    root = Path(lm_eval.tasks.__file__).parent
    names = [str(t) for t in tasks]
    folders = sorted({str(root / n) for t in names for n in (t, t.split("_")[0])
                      if (root / n).is_dir()})
    if folders or extra:
        narrow = TaskManager(include_path=folders + extra, include_defaults=False)
        missing = _unresolved(narrow.task_index, names, root, folders)
        if not missing:
            log.info("task index: %d entries from %s", len(narrow.all_tasks),
                     ", ".join(Path(f).name for f in folders + extra))
            return narrow
        log.info("task index: %s not in the task folders %s; indexing all of lm-eval's tasks",
                 ", ".join(sorted(missing)[:5]), [Path(f).name for f in folders] or "(none)")
    return TaskManager(include_path=include_path) if include_path else TaskManager()


def _unresolved(index: dict, names: list[str], root: Path, folders: list[str]) -> set[str]:
    """Names (and, for groups, the names in their ``task:`` lists) missing from ``index``, and
    tags that a YAML file of lm-eval outside ``folders`` also names (a tag can gather tasks of
    several families; a plain text scan, ~0.3 s, finds them without parsing)."""
    try:  # lm-eval's own loader (the one its index uses): follows include:, no !function calls
        from lm_eval.tasks._yaml_loader import load_yaml
    except ImportError:  # moved in another lm-eval version: the full index decides
        return set(names)
    missing: set[str] = set()
    seen: set[str] = set()
    tags: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        entry = index.get(name)
        if entry is None:
            missing.add(name)
            continue
        kind = getattr(entry.kind, "name", "")
        if kind == "TAG":
            tags.add(name)
        path = getattr(entry, "yaml_path", None)
        if kind != "GROUP" or path is None:
            continue
        try:
            cfg = load_yaml(path, resolve_func=False)
        except Exception:  # noqa: BLE001
            missing.add(name)  # unreadable or malformed here: let the full index decide
            continue
        members = cfg.get("task", [])
        todo += [m for m in (members if isinstance(members, list) else [members])
                 if isinstance(m, str)]
    if tags and not missing:
        missing |= _tags_outside(tags, root, folders)
    return missing


def _tags_outside(tags: set[str], root: Path, folders: list[str]) -> set[str]:
    """Tags that a YAML file of lm-eval outside ``folders`` may give a task: the file names
    the tag, or ``include:``s (through any chain) a file that does."""
    import glob

    word = re.compile(r"(?<![\w-])(" + "|".join(map(re.escape, sorted(tags))) + r")(?![\w-])")
    found: dict[str, str] = {}
    includes: dict[str, list[str]] = {}
    todo = [os.path.normpath(p) for p in glob.glob(os.path.join(root, "**", "*.yaml"),
                                                    recursive=True)]
    seen = set(todo)
    while todo:  # the YAML files, then what they include (templates without .yaml too)
        path = todo.pop()
        try:
            with open(path, errors="replace") as fh:
                text = fh.read()
        except OSError:
            continue
        if m := word.search(text):
            found[path] = m.group(1)
        targets = includes[path] = [os.path.normpath(os.path.join(os.path.dirname(path), t))
                                    for t in include_targets(text)]
        todo += [t for t in targets if t not in seen]
        seen.update(targets)
    grew = True
    while grew:  # a file inherits what the file it includes carries
        grew = False
        for path, targets in includes.items():
            carried = next((found[t] for t in targets if t in found), None)
            if path not in found and carried:
                found[path] = carried
                grew = True
    inside = tuple(os.path.normpath(f) + os.sep for f in folders)
    return {tag for path, tag in found.items() if not path.startswith(inside)}


_INCLUDE = re.compile(r"^include:[ \t]*([^\n]*)((?:\n[ \t]*-[^\n]*)*)", re.MULTILINE)


def include_targets(text: str) -> list[str]:
    """The files a task YAML ``include:``s, read from its text without parsing it: a scalar or
    a block list of ``- a`` lines (both occur in lm-eval's tasks), or a flow list ``[a, b]``."""
    out = []
    for m in _INCLUDE.finditer(text):
        head = m.group(1).split("#")[0].strip()
        if head.startswith("["):
            items = head.strip("[]").split(",")
        elif head:
            items = [head]
        else:
            items = [line.split("-", 1)[1] for line in m.group(2).splitlines() if line.strip()]
        out += [i.split("#")[0].strip().strip("'\"") for i in items]
    return [i for i in out if i]


def _simple_evaluate(lm_eval, lm, spec: EvalSpec, manager) -> dict:
    return lm_eval.simple_evaluate(
        model=lm,
        tasks=list(spec.eval.tasks),
        num_fewshot=spec.eval.num_fewshot,
        limit=spec.eval.limit,
        task_manager=manager,
        log_samples=True,
        random_seed=spec.seed,
        numpy_random_seed=spec.seed,
        torch_random_seed=spec.seed,
        fewshot_random_seed=spec.seed,
    )


def _record(spec: EvalSpec, res: dict, kind: str, device: str, dtype: str, key: str,
            start: float, processes: int = 1) -> dict:
    settings = {
        "tasks": list(spec.eval.tasks),
        "limit": spec.eval.limit,
        "batch_size": str(spec.eval.batch_size),
        "dtype": dtype,
        "device": device,
        "include_path": spec.eval.include_path,
        "seed": spec.seed,
        "processes": processes,
    }
    record = results.from_lm_eval(
        res,
        role=spec.role,
        model=str(spec.model),
        model_kind=kind,
        settings=settings,
        versions={
            "lm_eval": _version("lm_eval"),
            "transformers": _version("transformers"),
            "torch": _version("torch"),
        },
        timestamp=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    record["source"] = "kdlaunch"
    record["fingerprint"] = key
    rows, metrics, groups = results.sample_rows(res, list(record["groups"]))
    record["samples"] = results.write_samples(spec.out_file, rows, metrics, groups)
    record["eval_seconds"] = round(time.time() - start, 1)
    return record


def build_language_model(model: str, kind: str, dtype: str, batch_size: int | str,
                         device: str, trust_remote_code: bool = False):
    """lm-eval's HFLM for a checkpoint on ``device`` (picklable through ``partial``: the
    data-parallel workers call it in their own process; ``trust_remote_code`` reaches its
    model_args and every HF load)."""
    from lm_eval.models.huggingface import HFLM

    if kind == "hf":
        return HFLM(pretrained=str(model), device=device, dtype=dtype, batch_size=batch_size,
                    trust_remote_code=trust_remote_code)
    from transformers import AutoTokenizer

    hf_model = load_anymodel(model, dtype, trust_remote_code=trust_remote_code).to(device)
    tokenizer = AutoTokenizer.from_pretrained(str(model), trust_remote_code=trust_remote_code)
    return HFLM(pretrained=hf_model, tokenizer=tokenizer, batch_size=batch_size,
                trust_remote_code=trust_remote_code)


def load_anymodel(model: str | Path, dtype: str = "float32", trust_remote_code: bool = False):
    """Build a Puzzletron AnyModel checkpoint as its base HF class (per-layer shapes applied)."""
    import torch

    from kd.compat import install_import_stubs

    install_import_stubs()
    from modelopt.torch.puzzletron.anymodel import (
        deci_x_patcher,
        resolve_descriptor_from_pretrained,
    )
    from transformers import AutoConfig, AutoModelForCausalLM

    descriptor = resolve_descriptor_from_pretrained(str(model))
    config = AutoConfig.from_pretrained(str(model), trust_remote_code=trust_remote_code)
    torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
    with deci_x_patcher(descriptor, config.block_configs):
        hf_model = AutoModelForCausalLM.from_pretrained(
            str(model), config=config, torch_dtype=torch_dtype, trust_remote_code=trust_remote_code
        )
    return hf_model.eval()


def _log_summary(role: str, record: dict) -> None:
    parts = [f"{results.label(k)} {g['acc']:.4f}" for k, g in record["groups"].items()]
    log.info("%s: %s", role, ", ".join(parts))
