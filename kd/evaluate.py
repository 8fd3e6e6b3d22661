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
import time
from pathlib import Path

from kd import compat, results
from kd.specs import EvalSpec

log = logging.getLogger("kdlaunch.evaluate")

HALF_DTYPES = ("bfloat16", "float16")
DTYPES = ("auto", "bfloat16", "float16", "float32")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")
_SAMPLE = 1 << 20  # bytes hashed at the start, middle and end of each weight file


def run(spec: EvalSpec) -> dict:
    """Evaluate (or reuse) and write ``spec.out_file``; return the results record."""
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
            record = _evaluate(spec, device, dtype, key)
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
    if not spec.eval.tasks or spec.eval.tasks[0] != "mmlu" or len(set(spec.eval.tasks)) != len(spec.eval.tasks):
        raise ValueError(
            f"EvalSpec.tasks {spec.eval.tasks!r}: start with 'mmlu' (the report reads the mmlu "
            "group and its 4 categories); extra multiple-choice tasks may follow, once each"
        )
    if spec.eval.dtype not in DTYPES:
        raise ValueError(f"EvalSpec.dtype {spec.eval.dtype!r}: use one of {DTYPES}")
    if not 0 <= spec.eval.num_fewshot <= 5:
        raise ValueError(
            f"EvalSpec.num_fewshot {spec.eval.num_fewshot}: MMLU has 5 dev examples "
            "per subject, use 0..5"
        )
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
    }


def _store(spec: EvalSpec, key: str, record: dict) -> None:
    if spec.cache_dir:
        path = results.write_json_atomic(_cache_file(spec.cache_dir, key), record)
        record["cache"] = {"hit": False, "file": str(path)}


# --- the evaluation itself --------------------------------------------------------------------


def _evaluate(spec: EvalSpec, device: str, dtype: str, key: str) -> dict:
    import lm_eval
    from lm_eval.tasks import TaskManager

    kind = "anymodel" if is_anymodel(spec.model) else "hf"
    log.info(
        "evaluating %s (%s checkpoint %s) on %s in %s: tasks %s, %d-shot, limit %s",
        spec.role,
        kind,
        spec.model,
        device,
        dtype,
        ",".join(spec.eval.tasks),
        spec.eval.num_fewshot,
        spec.eval.limit,
    )
    start = time.time()
    lm = _language_model(spec.model, kind, device, dtype, spec.eval.batch_size)
    manager = TaskManager(include_path=spec.eval.include_path) if spec.eval.include_path else TaskManager()
    with compat.scoped.private_datasets_cache(bool(spec.eval.include_path)):
        res = _simple_evaluate(lm_eval, lm, spec, manager)
    return _record(spec, res, kind, device, dtype, key, start)


def _simple_evaluate(lm_eval, lm, spec: EvalSpec, manager) -> dict:
    return lm_eval.simple_evaluate(
        model=lm,
        tasks=list(spec.eval.tasks),
        num_fewshot=spec.eval.num_fewshot,
        limit=spec.eval.limit,
        task_manager=manager,
        log_samples=False,
        random_seed=spec.seed,
        numpy_random_seed=spec.seed,
        torch_random_seed=spec.seed,
        fewshot_random_seed=spec.seed,
    )


def _record(spec: EvalSpec, res: dict, kind: str, device: str, dtype: str, key: str,
            start: float) -> dict:
    settings = {
        "tasks": list(spec.eval.tasks),
        "limit": spec.eval.limit,
        "batch_size": str(spec.eval.batch_size),
        "dtype": dtype,
        "device": device,
        "include_path": spec.eval.include_path,
        "seed": spec.seed,
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
    record["eval_seconds"] = round(time.time() - start, 1)
    return record


def _language_model(model: str, kind: str, device: str, dtype: str, batch_size: int | str):
    from lm_eval.models.huggingface import HFLM

    if kind == "hf":
        return HFLM(pretrained=str(model), device=device, dtype=dtype, batch_size=batch_size)
    from transformers import AutoTokenizer

    hf_model = load_anymodel(model, dtype).to(device)
    tokenizer = AutoTokenizer.from_pretrained(str(model))
    return HFLM(pretrained=hf_model, tokenizer=tokenizer, batch_size=batch_size)


def load_anymodel(model: str | Path, dtype: str = "float32"):
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
    config = AutoConfig.from_pretrained(str(model))
    torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
    with deci_x_patcher(descriptor, config.block_configs):
        hf_model = AutoModelForCausalLM.from_pretrained(
            str(model), config=config, torch_dtype=torch_dtype
        )
    return hf_model.eval()


def _log_summary(role: str, record: dict) -> None:
    parts = [f"{results.label(k)} {g['acc']:.4f}" for k, g in record["groups"].items()]
    log.info("%s: %s", role, ", ".join(parts))
