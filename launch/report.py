#!/usr/bin/env python3
"""Build the MMLU report (before / after distillation / teacher) from any three results files.

    python launch/report.py --before RUN/eval/student_before.json \\
        --after RUN/eval/student_after.json --teacher RUN/eval/teacher.json --out RUN/report

Each file is either kdlaunch's results schema (kd/results.py) or lm-eval's own
``results_*.json``. When the before and after files reference per-question samples
(``<role>.samples.jsonl.gz`` beside them, written by the eval stage) of the same questions, the
verdict is a paired test and shows the independent z beside it; otherwise it is the independent
test, and the verdict line says why. Writes report.md, report.csv and report.png under --out and
prints the Markdown. Login-node safe: no torch, transformers or lm-eval is imported.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kd import report  # noqa: E402
from kd.specs import ReportSpec  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("--before", required=True, type=Path, help="student before distillation")
    p.add_argument("--after", required=True, type=Path, help="student after distillation")
    p.add_argument("--teacher", required=True, type=Path, help="teacher")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--title", default=ReportSpec.title)
    p.add_argument("--selection", type=Path, default=None,
                   help="RUN/select/selection.json: add the checkpoint-selection section")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    spec = ReportSpec(
        before=str(args.before),
        after=str(args.after),
        teacher=str(args.teacher),
        out_dir=str(args.out),
        title=args.title,
        selection=str(args.selection) if args.selection else None,
    )
    try:
        text = report.run(spec)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(text, end="")
    print(f"(written to {args.out}/report.md, report.csv, report.png)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
