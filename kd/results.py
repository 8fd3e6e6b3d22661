"""The one results-file shape: written by the eval stage, read by the report (stdlib only).

Every eval job writes ``RUN/eval/<role>.json`` with this schema (``SCHEMA`` = "kdlaunch.results/v2";
v1 files, which lack ``samples`` and ``metric``, still load)::

    {
      "schema": "kdlaunch.results/v2",
      "source": "kdlaunch",              # "lm-eval" when converted from an lm-eval results_*.json
      "role": "teacher",                 # student_before | student_after | teacher | null (unknown)
      "model": "/ckpt/Llama-3.1-8B",     # checkpoint path (or hub id) that was evaluated
      "model_kind": "hf",                # "hf" (standard) | "anymodel" (config.json has block_configs) | null
      "settings": {                      # everything that decides which questions were asked, and how
        "tasks": ["mmlu"],
        "num_fewshot": 5,                # as lm-eval recorded it (read from the subject tasks)
        "limit": 100,                    # per subject task; null = the full test set
        "batch_size": "4",
        "dtype": "bfloat16",
        "device": "cuda",
        "dataset_path": "cais/mmlu",     # where the subject tasks read their data
        "include_path": null,            # lm-eval task overrides in use (see kd/mmlu_local.py)
        "seed": 1234,
        "processes": 4                   # data-parallel eval processes (one per GPU)
      },
      "groups": {                        # the five MMLU groups, always all five,
        "mmlu":                 {"acc": 0.6839, "acc_stderr": 0.0061, "n": 5700,
                                 "metric": "acc,none"},
        "mmlu_humanities":      {...}, "mmlu_other": {...},
        "mmlu_social_sciences": {...}, "mmlu_stem":  {...},
        "kd_synth":             {...},   # then one entry per extra task of settings.tasks:
        "gsm8k":                {"acc": 0.41, "acc_stderr": 0.0135, "n": 1319,
                                 "metric": "exact_match,strict-match"}
      },
      "samples": {                       # per-question outcomes (null: none were kept)
        "file": "teacher.samples.jsonl.gz",   # beside this file; one JSON line per question:
                                         # {"task": leaf, "doc_id": 3, "hash": "<16 hex>", "score": 1.0}
        "sha256": "<of that file>", "questions": 7019,
        "metrics": {"mmlu_anatomy": "acc,none", "gsm8k": "exact_match,strict-match", ...},
        "members": {"mmlu": ["mmlu_abstract_algebra", ...], "mmlu_stem": [...], "gsm8k": ["gsm8k"]}
      },
      "task_versions": {"mmlu": 2, "mmlu_stem": 2, "mmlu_anatomy": 1.0, ...},
      "versions": {"lm_eval": "0.4.13", "transformers": "4.57.6", "torch": "2.13.0"},
      "timestamp": "2026-11-27T22:05:57Z",   # when the numbers were computed (UTC)
      "eval_seconds": 812.4,
      "fingerprint": "<sha256>",         # of what determines the numbers (kd.evaluate.fingerprint)
      "cache": {"hit": false, "file": "/cache/<fingerprint>.json"}   # null when not cached
    }

``acc`` and ``acc_stderr`` are the group's or task's primary score and its stderr, as fractions:
``metric`` names it as lm-eval keys it (``acc,none`` for multiple choice, the MMLU groups being
lm-eval's size-weighted micro averages; for a generative task the first metric of its
``metric_list`` under its first filter, e.g. ``exact_match,strict-match`` for gsm8k; absent in v1
files = ``acc,none``). ``n`` is the number of test questions behind the number (lm-eval's
``sample_len``). ``samples.members`` lists the leaf tasks whose questions make up each group, so
a paired test can pool exactly the questions behind a group's score. ``acc_stderr`` is null when lm-eval had none
(``bootstrap_iters=0``). ``load`` reads both this shape and lm-eval's own ``results_*.json``
(or the dict ``simple_evaluate`` returns), so the report takes either. ``load`` (through
``validate``) and ``load_samples`` refuse a file whose keys are missing, of the wrong type or
inconsistent with each other (``ValueError`` naming the file and the key), so no reader meets a
traceback on a damaged or hand-edited file.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

SCHEMA = "kdlaunch.results/v2"
SCHEMAS = ("kdlaunch.results/v1", SCHEMA)  # what ``load`` reads
PRIMARY_MC = "acc,none"
HASH_CHARS = 16  # of lm-eval's doc_hash kept per question: enough to tell two questions apart
# lm-eval group key -> report column, in report order.
GROUPS = {
    "mmlu": "MMLU",
    "mmlu_humanities": "Humanities",
    "mmlu_other": "Other",
    "mmlu_social_sciences": "Social Sciences",
    "mmlu_stem": "STEM",
}
ROLES = ("student_before", "student_after", "teacher")


def label(key: str) -> str:
    """Report column of a group key: the MMLU names, extra tasks by their own name."""
    return GROUPS.get(key, key)


def columns(*records: dict) -> list[str]:
    """Group keys to report: the MMLU groups, then extra tasks every record has (in order)."""
    extras = [k for k in records[0]["groups"] if k not in GROUPS]
    return list(GROUPS) + [k for k in extras if all(k in r["groups"] for r in records[1:])]


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Write JSON next to ``path`` under a temporary name, then rename it into place.

    A job killed mid-write leaves at most a stray ``.tmp`` file, never a half ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True, default=str)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def from_lm_eval(
    res: dict,
    *,
    role: str | None = None,
    model: str | None = None,
    model_kind: str | None = None,
    settings: dict | None = None,
    versions: dict | None = None,
    timestamp: str | None = None,
    cache: dict | None = None,
) -> dict:
    """Build a record of our schema from lm-eval's results (file contents or returned dict).

    Keyword arguments override what can be read from ``res``; what neither gives stays null.
    """
    if role is not None and role not in ROLES:
        raise ValueError(f"unknown role {role!r}: use one of {ROLES}")
    config = res.get("config") or {}
    tasks = list((settings or {}).get("tasks") or ["mmlu", *_extra_tasks(res)])
    found_settings = {
        "tasks": tasks,
        "num_fewshot": _num_fewshot(res),
        "limit": _number(config.get("limit")),
        "batch_size": _str_or_none(config.get("batch_size")),
        "dtype": _model_arg(config, "dtype") or _str_or_none(config.get("model_dtype")),
        "device": _str_or_none(config.get("device")),
        "dataset_path": _dataset_path(res),
        "include_path": None,
        "seed": config.get("random_seed"),
    }
    found_versions = {
        "lm_eval": res.get("lm_eval_version"),
        "transformers": res.get("transformers_version"),
    }
    return {
        "schema": SCHEMA,
        "source": "lm-eval",
        "role": role,
        "model": model or _model_arg(config, "pretrained") or res.get("model_name"),
        "model_kind": model_kind,
        "settings": {**found_settings, **(settings or {})},
        "groups": {**_groups(res), **_extras(res, [t for t in tasks if t != "mmlu"])},
        "task_versions": {k: v for k, v in sorted((res.get("versions") or {}).items())},
        "versions": {**found_versions, **(versions or {})},
        "timestamp": timestamp or _lm_eval_date(res),
        "eval_seconds": _number(res.get("total_evaluation_time_seconds")),
        "fingerprint": None,
        "cache": cache,
        "samples": None,
    }


def load(path: str | Path) -> dict:
    """Read a results file: ours (returned as is) or lm-eval's ``results_*.json`` (converted)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(
            f"results file {path} does not exist: run the eval stage first "
            "or pass the path of an existing results JSON"
        )
    try:
        data = json.loads(path.read_text())  # NaN/Infinity parse; validate names the field
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); re-run the eval that wrote it") from e
    except OSError as e:
        raise ValueError(f"cannot read results file {path}: {e.strerror}") from e
    if isinstance(data, dict) and data.get("schema") in SCHEMAS:
        return validate(data, path)
    if isinstance(data, dict) and str(data.get("schema", "")).startswith("kdlaunch.results/"):
        raise ValueError(f"{path}: schema {data['schema']!r} is newer than this kdlaunch reads "
                         f"({', '.join(SCHEMAS)}); update kdlaunch to read it")
    if isinstance(data, dict) and ("groups" in data or "results" in data):
        try:
            return validate(from_lm_eval(data), path)
        except (TypeError, AttributeError, KeyError) as e:
            raise ValueError(f"{path}: lm-eval results of an unexpected shape ({e!r}); pass the "
                             f"results_*.json lm-eval wrote, unedited") from e
    raise ValueError(
        f"{path} is neither a {SCHEMA} file nor lm-eval results "
        "(expected the keys 'schema', or 'groups'/'results')"
    )


def _score(value: Any, where: str, *, optional: bool) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{where}: {value!r} is not a finite number; re-run the eval that "
                         f"wrote it (a verdict cannot come from it)")
    return value


def validate(record: dict, path: str | Path) -> dict:
    """Refuse a results record whose scores are missing, non-numeric, NaN or infinite."""
    groups = record.get("groups")
    if not isinstance(groups, dict):
        raise ValueError(f"{path}: no 'groups' mapping; expected {SCHEMA} (see kd/results.py)")
    missing = [k for k in GROUPS if k not in groups]
    if missing:
        raise ValueError(f"{path}: groups lack {', '.join(missing)}; evaluate the full `mmlu` "
                         f"task group (tasks=['mmlu'])")
    for key, entry in groups.items():
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: groups.{key} is not a mapping with 'acc'")
        acc = _score(entry.get("acc"), f"{path}: groups.{key}.acc", optional=False)
        if not 0 <= acc <= 1:
            raise ValueError(f"{path}: groups.{key}.acc={acc!r} is not a fraction in [0, 1]")
        se = _score(entry.get("acc_stderr"), f"{path}: groups.{key}.acc_stderr", optional=True)
        if se is not None and se < 0:
            raise ValueError(f"{path}: groups.{key}.acc_stderr={se!r} is negative; a standard "
                             f"error is >= 0: re-run the eval that wrote it")
        if not isinstance(entry.get("metric", PRIMARY_MC), str):
            raise ValueError(f"{path}: groups.{key}.metric is not a string (an lm-eval metric "
                             f"key such as 'acc,none')")
        n = entry.get("n")
        if n is not None and (not _count(n)):
            raise ValueError(f"{path}: groups.{key}.n={n!r} is not a question count (an "
                             f"integer >= 0, or null); re-run the eval that wrote it")
    for key in ("settings", "task_versions", "versions", "cache"):
        if record.get(key) is not None and not isinstance(record[key], dict):
            raise ValueError(f"{path}: {key}={_short(record[key])} is not a mapping (or null); "
                             f"re-run the eval that wrote it")
    for key in ("model", "role", "model_kind", "timestamp"):
        if record.get(key) is not None and not isinstance(record[key], str):
            raise ValueError(f"{path}: {key}={_short(record[key])} is not a string (or null); "
                             f"re-run the eval that wrote it")
    _validate_settings(record.get("settings") or {}, path)
    ref = record.get("samples")
    if ref is not None and not (isinstance(ref, dict) and isinstance(ref.get("file"), str)
                                and "/" not in ref["file"] and ref["file"] not in ("", ".", "..")):
        raise ValueError(f"{path}: samples must be null or a mapping whose 'file' names a file "
                         f"beside the results file; re-run the eval that wrote it")
    if ref is not None:
        _validate_samples_ref(ref, groups, path)
    return record


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:80] + "..."


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _validate_settings(settings: dict, path: str | Path) -> None:
    """The settings the report shows and compares: of the right type, or null."""
    tasks = settings.get("tasks")
    if tasks is not None and not (isinstance(tasks, list)
                                  and all(isinstance(t, str) for t in tasks)):
        raise ValueError(f"{path}: settings.tasks={_short(tasks)} is not a list of task names; "
                         f"re-run the eval that wrote it")
    shots = settings.get("num_fewshot")
    if shots is not None and not (_count(shots) or (isinstance(shots, list)
                                                     and all(_count(s) for s in shots))):
        raise ValueError(f"{path}: settings.num_fewshot={_short(shots)} is not a shot count "
                         f"(an integer >= 0, a list of them, or null); re-run the eval that "
                         f"wrote it")
    limit = settings.get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float))
                              or not math.isfinite(limit) or limit <= 0):
        raise ValueError(f"{path}: settings.limit={_short(limit)} is not a number > 0 (or "
                         f"null); re-run the eval that wrote it")


def _validate_samples_ref(ref: dict, groups: dict, path: str | Path) -> None:
    """A samples reference whose keys ``load_samples`` and the paired test read."""
    fix = "re-run the eval that wrote it"
    if ref.get("sha256") is not None and not (isinstance(ref["sha256"], str)
                                              and re.fullmatch(r"[0-9a-f]{64}", ref["sha256"])):
        raise ValueError(f"{path}: samples.sha256={_short(ref['sha256'])} is not a sha256 (64 "
                         f"hex digits); {fix}")
    if ref.get("questions") is not None and not _count(ref["questions"]):
        raise ValueError(f"{path}: samples.questions={_short(ref['questions'])} is not a "
                         f"question count; {fix}")
    metrics = ref.get("metrics")
    if metrics is not None and not (isinstance(metrics, dict) and all(
            v is None or isinstance(v, str) for v in metrics.values())):
        raise ValueError(f"{path}: samples.metrics={_short(metrics)} is not a mapping of task "
                         f"-> metric name (or null); {fix}")
    members = ref.get("members")
    if members is not None and not (isinstance(members, dict) and all(
            isinstance(v, list) and all(isinstance(t, str) for t in v)
            for v in members.values())):
        raise ValueError(f"{path}: samples.members={_short(members)} is not a mapping of group "
                         f"-> list of task names (or null); {fix}")
    for key, leaves in (members or {}).items():
        if key not in groups:
            raise ValueError(f"{path}: samples.members.{key}: no such group in 'groups' "
                             f"({', '.join(groups)}): the file is inconsistent; {fix}")
        unknown = [t for t in leaves if metrics is not None and t not in metrics]
        if unknown:
            raise ValueError(f"{path}: samples.members.{key} lists {', '.join(unknown[:3])}, "
                             f"which samples.metrics does not: the file is inconsistent; {fix}")


def comparable_settings(record: dict) -> dict:
    """What must be equal between two records for their numbers to be compared."""
    settings = record.get("settings") or {}
    return {
        "num_fewshot": settings.get("num_fewshot"),
        "limit": settings.get("limit"),
        "task_versions": record.get("task_versions") or {},
        "questions": {k: g.get("n") for k, g in record["groups"].items()},
    }


def _groups(res: dict) -> dict:
    table = res.get("groups") or {}
    fallback = res.get("results") or {}
    out = {}
    for key in GROUPS:
        entry = table.get(key) or fallback.get(key)
        if entry is None or "acc,none" not in entry:
            raise ValueError(
                f"lm-eval results have no '{key}' acc: evaluate the full `mmlu` "
                "task group (tasks=['mmlu']), not single subjects"
            )
        out[key] = {
            "acc": _number(entry["acc,none"]),
            "acc_stderr": _number(entry.get("acc_stderr,none")),
            "n": _group_size(entry),
            "metric": PRIMARY_MC,
        }
    return out


def _extra_tasks(res: dict) -> list[str]:
    """Tasks in a raw lm-eval file that are neither MMLU groups nor MMLU subjects."""
    return [k for k in (res.get("results") or {}) if not k.startswith("mmlu")]


def primary_metric(res: dict, task: str) -> str:
    """lm-eval's key of a task's primary score: ``acc,none`` for multiple choice; otherwise the
    first metric of the task's ``metric_list`` under its first filter (``exact_match,strict-match``
    for gsm8k). A group without a config of its own: ``acc,none``, else its first scored key."""
    config = (res.get("configs") or {}).get(task)
    if config and config.get("metric_list"):
        metric = config["metric_list"][0]["metric"]
        filters = config.get("filter_list") or [{"name": "none"}]
        name = filters[0].get("name", "none") if isinstance(filters[0], dict) else "none"
        return f"{metric},{name}"
    entry = (res.get("results") or {}).get(task) or {}
    if PRIMARY_MC in entry:
        return PRIMARY_MC
    scored = [k for k in entry if "," in k and "_stderr," not in k]
    return scored[0] if scored else PRIMARY_MC


def _extras(res: dict, tasks: list[str]) -> dict:
    table = res.get("results") or {}
    out = {}
    for task in tasks:
        entry = table.get(task)
        metric = primary_metric(res, task)
        if entry is None or metric not in entry:
            raise ValueError(f"lm-eval results have no {metric!r} for task {task!r}: the report "
                             "reads each task's primary metric (acc for multiple choice, the "
                             "first metric_list entry under the first filter otherwise)")
        value = _number(entry[metric])
        if value is not None and not 0 <= value <= 1:
            raise ValueError(f"task {task!r}: primary metric {metric} = {value!r} is not a "
                             "fraction in [0, 1]; only accuracy-like tasks (acc, exact_match) "
                             "can be reported")
        name, _, filt = metric.partition(",")
        n = ((res.get("n-samples") or {}).get(task) or {}).get("effective")
        out[task] = {
            "acc": value,
            "acc_stderr": _number(entry.get(f"{name}_stderr,{filt}")),
            "n": int(n) if n is not None else _group_size(entry),
            "metric": metric,
        }
    return out


def _group_size(entry: dict) -> int | None:
    if "sample_len" in entry:
        return int(entry["sample_len"])
    count = (entry.get("sample_count") or {}).get("acc,none")
    return int(count) if count is not None else None


def _num_fewshot(res: dict) -> int | list[int] | None:
    # lm-eval records n-shot per subject and category but not for the top `mmlu` group.
    shots = {int(v) for k, v in (res.get("n-shot") or {}).items() if k.startswith("mmlu_")}
    if not shots:
        return None
    return shots.pop() if len(shots) == 1 else sorted(shots)


def _dataset_path(res: dict) -> str | None:
    # the MMLU subjects' data (extra tasks read their own)
    paths = {c.get("dataset_path") for k, c in (res.get("configs") or {}).items()
             if k.startswith("mmlu")}
    paths.discard(None)
    if not paths:
        return None
    return paths.pop() if len(paths) == 1 else ",".join(sorted(paths))


def _model_arg(config: dict, name: str) -> str | None:
    args = config.get("model_args")
    if isinstance(args, dict):
        return _str_or_none(args.get(name))
    if isinstance(args, str):
        match = re.search(rf"(?:^|,){name}=([^,]*)", args)
        return match.group(1) if match else None
    return None


def _lm_eval_date(res: dict) -> str | None:
    date = res.get("date")
    if isinstance(date, (int, float)):
        import datetime as dt

        return dt.datetime.fromtimestamp(date, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return _str_or_none(date)


def _number(value: Any) -> float | int | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):  # lm-eval writes "N/A" for missing stderrs
        return None


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


# --- per-question outcomes (the samples file beside a results file) --------------------------


def samples_file(results_file: str | Path) -> Path:
    """``RUN/eval/<role>.json`` -> ``RUN/eval/<role>.samples.jsonl.gz``."""
    path = Path(results_file)
    return path.with_name(f"{path.stem}.samples.jsonl.gz")


def members(res: dict, keys: list[str]) -> dict[str, list[str]]:
    """The leaf tasks behind each reported key, from lm-eval's ``group_subtasks``."""
    children = res.get("group_subtasks") or {}

    def leaves(name: str) -> list[str]:
        kids = children.get(name) or []
        return [leaf for kid in kids for leaf in leaves(kid)] if kids else [name]

    return {key: sorted(leaves(key)) for key in keys}


def sample_rows(res: dict, keys: list[str]) -> tuple[list[dict], dict, dict]:
    """Per-question primary scores from lm-eval's ``samples`` (``log_samples=True``).

    Returns (rows sorted by task and doc id, metrics per leaf, members per key). Each row is
    ``{"task", "doc_id", "hash", "score"}``; ``hash`` is lm-eval's ``doc_hash`` (shortened), so
    two files can be checked to hold the same questions. A leaf whose samples carry no finite
    per-question score (none logged, or a corpus-level metric) has no rows and metric null.
    """
    groups = members(res, keys)
    logged = res.get("samples") or {}
    rows, metrics = [], {}
    for leaf in sorted({leaf for leaves in groups.values() for leaf in leaves}):
        metric = primary_metric(res, leaf)
        name, _, filt = metric.partition(",")
        mine = []
        for s in logged.get(leaf) or []:
            if s.get("filter", "none") != filt:
                continue
            value = s.get(name)
            score = None if isinstance(value, bool) else _number(value)
            if score is None or not math.isfinite(score):
                mine = None  # e.g. a corpus-level metric (bleu, f1): no per-question score
                break
            mine.append({"task": leaf, "doc_id": int(s["doc_id"]),
                         "hash": str(s.get("doc_hash", ""))[:HASH_CHARS], "score": score})
        # a leaf without per-question scores is recorded as null: the paired test skips it
        metrics[leaf] = metric if mine else None
        rows += mine or []
    rows.sort(key=lambda r: (r["task"], r["doc_id"]))
    return rows, metrics, groups


def write_samples(results_file: str | Path, rows: list[dict], metrics: dict,
                  groups: dict) -> dict:
    """Write the gzipped JSONL samples file beside ``results_file``; return its reference."""
    import gzip
    import hashlib

    path = samples_file(results_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
            for row in rows:
                f.write((json.dumps(row, sort_keys=True) + "\n").encode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return {"file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "questions": len(rows), "metrics": metrics, "members": groups}


def load_samples(results_file: str | Path, record: dict) -> dict | str:
    """Per-question outcomes of a loaded record: ``{"scores": {(task, doc_id): (hash, score)},
    "metrics": ..., "members": ...}``, or a sentence saying why there are none (the report then
    falls back to the independent test). A damaged samples file is a ``ValueError``."""
    import gzip
    import hashlib

    ref = record.get("samples")
    if not ref:
        return "no per-question samples"
    path = Path(results_file).parent / ref["file"]
    if not path.is_file():
        return f"samples file {path} is missing"
    data = path.read_bytes()
    if ref.get("sha256") and hashlib.sha256(data).hexdigest() != ref["sha256"]:
        raise ValueError(f"{path}: its sha256 differs from the one in {results_file}; the file "
                         "was changed after the eval: re-run the eval that wrote it")
    scores = {}
    try:
        lines = gzip.decompress(data).decode().splitlines()
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a gzipped JSONL samples file ({e})") from e
    metrics = ref.get("metrics") or {}
    for i, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
            key, value = (str(row["task"]), int(row["doc_id"])), (str(row["hash"]), row["score"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path} line {i}: not a samples row ({e!r}); re-run the eval") from e
        _score(value[1], f"{path} line {i}: score", optional=False)
        if key in scores:
            raise ValueError(f"{path} line {i}: task {key[0]!r} doc_id {key[1]} appears twice; "
                             f"the file is inconsistent: re-run the eval")
        if ref.get("metrics") is not None and metrics.get(key[0]) is None:
            raise ValueError(f"{path} line {i}: task {key[0]!r} has no metric in "
                             f"{results_file} (samples.metrics); the files are inconsistent: "
                             f"re-run the eval")
        scores[key] = value
    questions = ref.get("questions")
    if questions is not None and questions != len(scores):
        raise ValueError(f"{path}: {len(scores)} questions, but {results_file} says "
                         f"samples.questions={questions}; the files are inconsistent: re-run "
                         f"the eval")
    return {"scores": scores, "metrics": metrics, "members": ref.get("members") or {}}
