"""MMLU from a local directory: lm-eval task overrides, and a small fake MMLU for tests and demos.

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

* ``build_fake_mmlu`` writes random questions in that layout (one subject per category by
  default), made of words the tiny test tokenizer knows (``kd.tiny``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import shutil
from pathlib import Path

CATEGORIES = ("humanities", "other", "social_sciences", "stem")
# One real subject per category: the smallest dataset whose groups are all non-empty.
DEFAULT_SUBJECTS = ("philosophy", "nutrition", "econometrics", "abstract_algebra")
SPLITS = ("test", "validation", "dev")
_DONE = ".kdlaunch-mmlu"
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
            "--local-dir DIR), or be built by kd.mmlu_local.build_fake_mmlu"
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


def write_dataset(out_dir: str | Path, rows: dict[str, dict[str, list[dict]]]) -> Path:
    """Write ``{subject: {split: [row, ...]}}`` as a cais/mmlu-shaped directory (atomically).

    Rows have cais/mmlu's columns: ``question`` (str), ``subject`` (str), ``choices`` (4 str),
    ``answer`` (0-3, stored as the ClassLabel A-D).
    """
    import datasets
    import yaml

    features = datasets.Features(
        {
            "question": datasets.Value("string"),
            "subject": datasets.Value("string"),
            "choices": datasets.Sequence(datasets.Value("string")),
            "answer": datasets.ClassLabel(names=["A", "B", "C", "D"]),
        }
    )
    out = Path(out_dir)
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    configs = []
    for subject, splits in rows.items():
        (tmp / subject).mkdir(parents=True)
        files = []
        for split in SPLITS:
            data = datasets.Dataset.from_list(splits.get(split, []), features=features)
            data.to_parquet(str(tmp / subject / f"{split}-00000-of-00001.parquet"))
            files.append({"split": split, "path": f"{subject}/{split}-*"})
        configs.append({"config_name": subject, "data_files": files})
    header = yaml.safe_dump({"configs": configs}, sort_keys=False)
    (tmp / "README.md").write_text(f"---\n{header}---\n# Local MMLU-shaped dataset\n")
    (tmp / _DONE).write_text(json.dumps(sorted(rows)) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def build_fake_mmlu(
    out_dir: str | Path,
    subjects: tuple[str, ...] = DEFAULT_SUBJECTS,
    *,
    n_test: int = 4,
    n_dev: int = 5,
    answers: dict[str, list[int]] | None = None,
    seed: int = 0,
) -> Path:
    """Random questions of words ``w0..w99`` (known to ``kd.tiny``'s tokenizer); idempotent.

    ``answers[subject]`` fixes the test answers (length ``n_test``), so accuracies of a model
    that always picks one letter are known in advance.
    """
    out = Path(out_dir)
    if (out / _DONE).is_file():
        return out
    rng = random.Random(seed)
    rows = {}
    for subject in subjects:
        fixed = (answers or {}).get(subject)
        if fixed is not None and len(fixed) != n_test:
            raise ValueError(f"answers[{subject!r}] has {len(fixed)} entries; n_test is {n_test}")
        test = [
            _question(rng, subject, fixed[i] if fixed else rng.randrange(4)) for i in range(n_test)
        ]
        dev = [_question(rng, subject, rng.randrange(4)) for _ in range(n_dev)]
        rows[subject] = {"test": test, "validation": dev[:1], "dev": dev}
    return write_dataset(out, rows)


def _question(rng: random.Random, subject: str, answer: int) -> dict:
    def words(lo: int, hi: int) -> str:
        return " ".join(f"w{rng.randrange(100)}" for _ in range(rng.randint(lo, hi)))

    return {
        "question": words(5, 12),
        "subject": subject,
        "choices": [words(1, 3) for _ in range(4)],
        "answer": answer,
    }


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
    fake = sub.add_parser("fake", help="build a small random MMLU (for demos and tests)")
    fake.add_argument("--out", required=True)
    fake.add_argument("--n-test", type=int, default=4)
    args = parser.parse_args(argv)
    if args.command == "tasks":
        subjects = tuple(args.subjects) if args.subjects else None
        print(write_task_overrides(args.out, args.dataset, subjects))
    else:
        print(build_fake_mmlu(args.out, n_test=args.n_test))


if __name__ == "__main__":
    main()
