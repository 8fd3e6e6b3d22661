"""lm-eval-shaped results with known numbers: the guide's MMLU tables (Llama-3.1-8B-Instruct,
``--limit 100``, 5-shot). The guide gives no stderrs; ``group`` derives them as lm-eval does for
one subject, sqrt(p(1-p)/(n-1)), from the question counts (5700 at limit 100)."""

from __future__ import annotations

import json
import math
from pathlib import Path

SUBJECTS = {
    "mmlu": 57,
    "mmlu_humanities": 13,
    "mmlu_other": 13,
    "mmlu_social_sciences": 12,
    "mmlu_stem": 19,
}
# Full test set (no limit); every subject has at least 100 test questions.
FULL = {
    "mmlu": 14042,
    "mmlu_humanities": 4705,
    "mmlu_other": 3107,
    "mmlu_social_sciences": 3077,
    "mmlu_stem": 3153,
}
ORDER = ("mmlu", "mmlu_humanities", "mmlu_other", "mmlu_social_sciences", "mmlu_stem")
TEACHER = (0.6839, 0.7231, 0.7038, 0.7667, 0.5911)
SUCCESS = {
    "before": (0.2316, 0.2462, 0.2292, 0.2250, 0.2274),
    "after": (0.2960, 0.3146, 0.3085, 0.2925, 0.2768),
    "teacher": TEACHER,
}
REGRESSION = {
    "before": (0.6626, 0.7069, 0.6892, 0.7525, 0.5574),
    "after": (0.6496, 0.6862, 0.6677, 0.7433, 0.5532),
    "teacher": TEACHER,
}
MODELS = {
    "before": "/ckpt/llama31_8b_pruned",
    "after": "/runs/guide/export/hf",
    "teacher": "/ckpt/meta-llama/Llama-3.1-8B-Instruct",
}


def group(key: str, acc: float, limit: int | None = 100) -> dict:
    n = FULL[key] if limit is None else SUBJECTS[key] * min(limit, 100)
    alias = key.removeprefix("mmlu_").replace("_", " ") if key != "mmlu" else "mmlu"
    return {
        "alias": alias,
        "name": key,
        "sample_len": n,
        "acc,none": acc,
        "acc_stderr,none": math.sqrt(acc * (1 - acc) / (n - 1)),
        "sample_count": {"acc,none": n},
    }


def lm_eval_results(
    accs, model: str, *, limit: int | None = 100, shots: int = 5, version: int = 2
) -> dict:
    """A minimal lm-eval 0.4.13 results dict (the keys the loader reads, as lm-eval writes them)."""
    groups = {k: group(k, a, limit) for k, a in zip(ORDER, accs, strict=True)}
    leaves = ("mmlu_anatomy", "mmlu_philosophy", "mmlu_nutrition", "mmlu_econometrics")
    return {
        "results": {**groups, **{leaf: {"alias": leaf, "acc,none": 0.5} for leaf in leaves}},
        "groups": groups,
        "versions": {**{k: version for k in ORDER}, **{leaf: 1.0 for leaf in leaves}},
        "n-shot": {**{leaf: shots for leaf in leaves}, **{k: shots for k in ORDER[1:]}},
        "configs": {leaf: {"dataset_path": "cais/mmlu"} for leaf in leaves},
        "config": {
            "model": "hf",
            "model_args": f"pretrained={model},dtype=bfloat16",
            "batch_size": "4",
            "device": "cuda:0",
            "limit": limit,
            "random_seed": 0,
        },
        "lm_eval_version": "0.4.13",
        "transformers_version": "4.57.6",
        "date": 1790000000.0,
        "total_evaluation_time_seconds": "812.5",
    }


def write_case(directory: Path, case: dict, **overrides) -> dict[str, Path]:
    """Write before/after/teacher results_*.json files; ``overrides[role]`` = kwargs."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for role, accs in case.items():
        path = directory / f"results_{role}.json"
        path.write_text(json.dumps(lm_eval_results(accs, MODELS[role], **overrides.get(role, {}))))
        paths[role] = path
    return paths
