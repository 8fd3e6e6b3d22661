"""MMLU from a local directory: lm-eval task overrides.

lm-eval's ``mmlu`` task reads the Hub dataset ``cais/mmlu``. Offline clusters and CI point it
at a local directory instead, keeping the real task and group names, prompts and JSON keys:

* ``write_task_overrides(task_dir, dataset_dir)`` writes a ``_mmlu.yaml`` that overrides the
  built-in ``mmlu`` group. lm-eval (>= 0.4.13) pushes every non-group key of a group YAML down
  to its subject tasks, so its ``dataset_path`` redirects all 57 real subject tasks. Pass
  ``task_dir`` as ``EvalSpec.include_path`` (``--include_path`` on lm-eval's CLI). With
  ``subjects=`` the four category groups are overridden too, to evaluate only those subjects.
* ``dataset_dir`` is laid out like the Hub repo (a ``README.md`` whose YAML ``configs:`` names
  one config per subject, and ``<subject>/<split>-00000-of-00001.parquet``). A snapshot of the
  Hub repo has exactly this layout::

      huggingface-cli download cais/mmlu --repo-type dataset --local-dir /data/mmlu
      python -m kd.mmlu_local tasks --dataset /data/mmlu --out /data/mmlu_tasks

* ``assets/mmlu.py`` (repository only, not installed) builds a small fake MMLU in that layout
  for the demo and the tests.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

CATEGORIES = ("humanities", "other", "social_sciences", "stem")
# One real subject per category: the smallest dataset whose groups are all non-empty.
DEFAULT_SUBJECTS = ("philosophy", "nutrition", "econometrics", "abstract_algebra")
_AGGREGATE = (
    "aggregate_metric_list:\n  - metric: acc\n    weight_by_size: true\nmetadata:\n  version: 2\n"
)


def mmlu_subjects() -> dict[str, str]:
    """Subject -> category ("stem", ...) of the installed lm-eval's ``mmlu`` task (57 subjects)."""
    import yaml

    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("lm-eval is not installed: pip install 'lm-eval[hf]' (see requirements/)")
    task_dir = Path(next(iter(spec.submodule_search_locations))) / "tasks" / "mmlu" / "default"
    out = {}
    for path in sorted(task_dir.glob("mmlu_*.yaml")):
        cfg = yaml.safe_load(path.read_text())
        out[cfg["dataset_name"]] = cfg["tag"].removeprefix("mmlu_").removesuffix("_tasks")
    assert len(out) == 57 and set(out.values()) == set(CATEGORIES), out
    return out


def write_task_overrides(
    task_dir: str | Path, dataset_dir: str | Path, subjects: tuple[str, ...] | None = None
) -> Path:
    """Write lm-eval YAMLs that make ``--tasks mmlu`` read ``dataset_dir``; return ``task_dir``.

    ``subjects=None`` keeps all 57 subjects. Otherwise the category groups list only
    ``subjects`` (each category needs at least one, or its group would be empty).
    """
    task_dir = Path(task_dir)
    dataset_dir = Path(dataset_dir).absolute()
    if not (dataset_dir / "README.md").is_file():
        raise ValueError(
            f"{dataset_dir} has no README.md: it must be laid out like the Hub repo "
            "cais/mmlu (huggingface-cli download cais/mmlu --repo-type dataset "
            "--local-dir DIR), or be built by assets.mmlu.build_fake_mmlu"
        )
    task_dir.mkdir(parents=True, exist_ok=True)
    for stale in task_dir.glob("_mmlu*.yaml"):
        stale.unlink()
    top = (
        "# Overrides lm-eval's built-in `mmlu` group: its dataset_path is pushed down to "
        "every subject task.\ngroup: mmlu\ntask:\n"
        + "".join(f"  - mmlu_{c}\n" for c in CATEGORIES)
        + f"dataset_path: {json.dumps(str(dataset_dir))}\n"
        + _AGGREGATE
    )
    (task_dir / "_mmlu.yaml").write_text(top)
    if subjects is not None:
        for category, names in _by_category(subjects).items():
            text = (
                f"# Only these subjects of the category (built-in subject tasks and prompts).\n"
                f"group: mmlu_{category}\ngroup_alias: {category.replace('_', ' ')}\ntask:\n"
                + "".join(f"  - mmlu_{s}\n" for s in names)
                + _AGGREGATE
            )
            (task_dir / f"_mmlu_{category}.yaml").write_text(text)
    return task_dir


def _by_category(subjects: tuple[str, ...]) -> dict[str, list[str]]:
    known = mmlu_subjects()
    unknown = sorted(set(subjects) - set(known))
    if unknown:
        raise ValueError(f"unknown MMLU subjects {unknown}; valid ones: {sorted(known)}")
    groups: dict[str, list[str]] = {c: [] for c in CATEGORIES}
    for subject in subjects:
        groups[known[subject]].append(subject)
    empty = [c for c, names in groups.items() if not names]
    if empty:
        raise ValueError(
            f"no subject for the MMLU categories {empty}: add one subject of each "
            f"(e.g. {DEFAULT_SUBJECTS})"
        )
    return groups


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m kd.mmlu_local",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    tasks = sub.add_parser("tasks", help="write the include_path task overrides for a local MMLU")
    tasks.add_argument("--dataset", required=True, help="cais/mmlu-shaped directory")
    tasks.add_argument("--out", required=True, help="task directory (EvalSpec.include_path)")
    tasks.add_argument("--subjects", nargs="+", help="only these subjects (default: all 57)")
    args = parser.parse_args(argv)
    subjects = tuple(args.subjects) if args.subjects else None
    print(write_task_overrides(args.out, args.dataset, subjects))


if __name__ == "__main__":
    main()
