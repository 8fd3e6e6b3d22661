"""A small fake MMLU for the demo and the tests, laid out like the Hub repo ``cais/mmlu``.

``kd.mmlu_local.write_task_overrides`` points lm-eval's real ``mmlu`` task at it.

    python -m assets.mmlu --out .cache/mmlu-fake     # idempotent
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
from pathlib import Path

from kd.mmlu_local import DEFAULT_SUBJECTS

SPLITS = ("test", "validation", "dev")
_DONE = ".kdlaunch-mmlu"


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
    quiet = not datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # one "Creating parquet" bar per file otherwise
    try:
        for subject, splits in rows.items():
            (tmp / subject).mkdir(parents=True)
            files = []
            for split in SPLITS:
                data = datasets.Dataset.from_list(splits.get(split, []), features=features)
                data.to_parquet(str(tmp / subject / f"{split}-00000-of-00001.parquet"))
                files.append({"split": split, "path": f"{subject}/{split}-*"})
            configs.append({"config_name": subject, "data_files": files})
    finally:
        if not quiet:
            datasets.enable_progress_bars()
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
    """Random questions of words ``w0..w99`` (known to ``assets.tiny``'s tokenizer); idempotent.

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
    parser = argparse.ArgumentParser(prog="python -m assets.mmlu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--n-test", type=int, default=4)
    args = parser.parse_args(argv)
    print(build_fake_mmlu(args.out, n_test=args.n_test))


if __name__ == "__main__":
    main()
