"""Data-prep stage: text sources -> Megatron indexed datasets -> the weighted blend.

For each ``DataSource`` of ``spec.data.sources``:

1. raw text to ``RUN/data/<name>.jsonl``: a local JSONL is copied (checked, reduced to
   ``spec.data.json_keys``, capped at ``max_documents``); a Hugging Face dataset is read with
   ``datasets.load_dataset(hf_name, hf_config, split=hf_split)`` (offline clusters: set
   ``HF_DATASETS_OFFLINE=1`` and a warm ``HF_HOME``/``HF_DATASETS_CACHE``);
2. tokenized with ModelOpt's ``megatron_preprocess_data`` into
   ``RUN/data/<name>_<key>_document.{bin,idx}`` (the Megatron prefix);
3. a source with ``prefix`` set is an existing tokenized dataset and is used as is.

The blend ``[(weight, prefix), ...]`` (Megatron's ``--data-path 1.0 PREFIX ...``; weights are
relative, Megatron normalises them) is returned and written to ``RUN/data/blend.json``.

Idempotent and kill-safe: every file is written under a temporary name and renamed into place,
and a source counts as finished only when ``<name>.done.json`` (written last) records the same
source, tokenizer and keys; finished sources are skipped, anything else is rebuilt.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from pathlib import Path

from kd.results import write_json_atomic
from kd.specs import DataSource, DataSpec

log = logging.getLogger("kdlaunch.data")
BLEND_FILE = "blend.json"


def run(spec: DataSpec) -> dict:
    """Prepare every source; return ``{"blend": [(weight, prefix), ...], "data_paths": [...]}``."""
    check(spec)
    out = Path(spec.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    blend = [(source.weight, prepare_source(source, spec)) for source in spec.data.sources]
    result = {"blend": blend, "data_paths": data_paths(blend)}
    write_json_atomic(out / BLEND_FILE, result)
    log.info("blend written to %s: %s", out / BLEND_FILE, " ".join(result["data_paths"]))
    if spec.done_marker:
        write_json_atomic(spec.done_marker, {"blend": str(out / BLEND_FILE)})
    return result


def check(spec: DataSpec) -> None:
    """Fail early, with the fix, on what only this machine can see: the input files. The values
    themselves (names, weights, one input per source, one json key) are checked where they are
    declared, in ``kd.sections`` (``Data``, ``Source``), whenever a spec is built."""
    for source in spec.data.sources:
        check_source(source)


def check_source(source: DataSource) -> None:
    if source.jsonl and not Path(source.jsonl).is_file():
        raise ValueError(f"data source {source.name!r}: JSONL file {source.jsonl} not found")
    if source.prefix:
        missing = [s for s in (".bin", ".idx") if not Path(source.prefix + s).is_file()]
        if missing:
            raise ValueError(
                f"data source {source.name!r}: prefix {source.prefix} has no "
                f"{' / '.join(missing)} file; pass the path without extension of "
                "an existing Megatron indexed dataset"
            )


def data_paths(blend: Iterable[tuple[float, str]]) -> list[str]:
    """The blend in Megatron's flat ``--data-path`` form: ["1.0", "prefix", ...]."""
    return [str(x) for weight, prefix in blend for x in (float(weight), prefix)]


def load_blend(out_dir: str | Path) -> list[tuple[float, str]]:
    """The blend written by ``run`` (for the distill stage or a later relaunch)."""
    path = Path(out_dir) / BLEND_FILE
    if not path.is_file():
        raise ValueError(f"{path} not found: run the prepare_data stage first")
    return [(float(w), str(p)) for w, p in json.loads(path.read_text())["blend"]]


def prefix_for(out_dir: str | Path, name: str, key: str = "text") -> Path:
    return Path(out_dir) / f"{name}_{key}_document"  # == RunPaths.data_prefix for RUN/data


# --- one source ---------------------------------------------------------------------------------


def prepare_source(source: DataSource, spec: DataSpec) -> str:
    """Make ``source`` a tokenized Megatron dataset (or reuse a finished one); return its prefix."""
    if source.prefix:
        log.info("source %s: using the tokenized dataset %s as is", source.name, source.prefix)
        return source.prefix
    out = Path(spec.out_dir)
    key = spec.data.json_keys[0]
    prefix = prefix_for(out, source.name, key)
    done = out / f"{source.name}.done.json"
    recipe = _recipe(source, spec)
    if _finished(done, recipe, prefix):
        log.info("source %s: skipping, %s is already tokenized", source.name, prefix)
        return str(prefix)
    done.unlink(missing_ok=True)
    start = time.time()
    jsonl = out / f"{source.name}.jsonl"
    count = write_jsonl(jsonl, _documents(source, key), key, spec.data.log_interval, source.name)
    tokenize(jsonl, prefix, spec)
    write_json_atomic(
        done,
        {
            **recipe,
            "prefix": str(prefix),
            "documents": count,
            "seconds": round(time.time() - start, 1),
        },
    )
    log.info(
        "source %s: %d documents tokenized to %s in %.1f s",
        source.name,
        count,
        prefix,
        time.time() - start,
    )
    return str(prefix)


def _recipe(source: DataSource, spec: DataSpec) -> dict:
    """What decides the tokenized output; a finished source is reused only if it matches."""
    return {
        "source": asdict(source),
        "tokenizer": spec.data.tokenizer,
        "json_keys": list(spec.data.json_keys),
        "append_eod": spec.data.append_eod,
    }


def _finished(done: Path, recipe: dict, prefix: Path) -> bool:
    if not done.is_file():
        return False
    try:
        recorded = json.loads(done.read_text())
    except json.JSONDecodeError:
        return False
    same = all(recorded.get(k) == v for k, v in recipe.items())
    if not same:
        log.info("%s was built from other settings: rebuilding", done.name)
    return same and all(Path(f"{prefix}{s}").is_file() for s in (".bin", ".idx"))


def _documents(source: DataSource, key: str) -> Iterator[dict]:
    docs = _local_documents(source, key) if source.jsonl else _hf_documents(source, key)
    for i, doc in enumerate(docs):
        if source.max_documents is not None and i >= source.max_documents:
            return
        yield doc


def _local_documents(source: DataSource, key: str) -> Iterator[dict]:
    with open(source.jsonl, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{source.jsonl}:{line_no} is not valid JSON ({e})") from e
            yield _select(row, key, f"{source.jsonl}:{line_no}")


def _hf_documents(source: DataSource, key: str) -> Iterator[dict]:
    import datasets

    try:
        data = datasets.load_dataset(source.hf_name, source.hf_config, split=source.hf_split)
    except (ConnectionError, FileNotFoundError) as e:
        raise ValueError(
            f"data source {source.name!r}: cannot load {source.hf_name} "
            f"({source.hf_config}, {source.hf_split}) ({e}). Offline: load it once on a node "
            "with internet using the same HF_HOME, or export it to JSONL and use `jsonl:`"
        ) from e
    if key not in data.column_names:
        raise ValueError(
            f"data source {source.name!r}: column {key!r} not in "
            f"{data.column_names}; set data.json_keys to the text column"
        )
    if source.max_documents is not None:
        data = data.select(range(min(source.max_documents, len(data))))
    for i, row in enumerate(data):
        yield _select(row, key, f"{source.hf_name} row {i}")


def _select(row: object, key: str, where: str) -> dict:
    if not isinstance(row, dict) or key not in row:
        raise ValueError(
            f"{where}: expected a JSON object with the key {key!r} "
            "(set data.json_keys to the field that holds the text)"
        )
    if not isinstance(row[key], (str, list)):
        raise ValueError(f"{where}: {key!r} must be a string (or a chat messages list)")
    return {key: row[key]}


def write_jsonl(path: Path, docs: Iterable[dict], key: str, log_interval: int, name: str) -> int:
    """Write documents under a temporary name, then rename; return how many were written."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    count = 0
    with tmp.open("w", encoding="utf-8") as f:
        for count, doc in enumerate(docs, start=1):
            f.write(json.dumps(doc, ensure_ascii=False) + "\n")
            if log_interval and count % log_interval == 0:
                log.info("source %s: %d documents read", name, count)
    if count == 0:
        tmp.unlink()
        raise ValueError(f"data source {name!r} has no documents with the key {key!r}")
    os.replace(tmp, path)
    return count


def tokenize(jsonl: Path, prefix: Path, spec: DataSpec) -> None:
    """``megatron_preprocess_data`` into a private directory, then rename .bin and .idx."""
    from kd.compat import install_import_stubs

    install_import_stubs()
    from modelopt.torch.utils.plugins.megatron_preprocess_data import megatron_preprocess_data

    work = prefix.parent / f".tokenize-{prefix.name}-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    try:
        (made,) = megatron_preprocess_data(
            jsonl_paths=[str(jsonl)],
            output_dir=str(work),
            tokenizer_name_or_path=spec.data.tokenizer,
            json_keys=list(spec.data.json_keys),
            append_eod=spec.data.append_eod,
            workers=spec.data.workers,
            log_interval=spec.data.log_interval,
        )
        for suffix in (".bin", ".idx"):  # .idx last: both present means complete
            os.replace(f"{made}{suffix}", f"{prefix}{suffix}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
