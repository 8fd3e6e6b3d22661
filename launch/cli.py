#!/usr/bin/env python3
"""kdlaunch: the command line of the launcher, and the parser pieces its commands share.

    kdlaunch distill --cluster slurm --config guide_llama31_8b --dry-run
    kdlaunch status runs/kd1 [--logs distill | --cancel | --wait]
    kdlaunch report --before A.json --after B.json --teacher C.json --out report/
    kdlaunch sweep [run] configs/sweeps/nightly_tiny.yaml --cluster ci
    kdlaunch sweep check configs/sweeps/nightly_tiny.yaml

Each command is also a script (``python launch/distill.py ...``, the same arguments).
Exit codes of every command: 0 success, 1 a stage failed (or a regression, for sweep check),
2 bad input (nothing was queued), 3 the scheduler could not be asked / results are missing.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

EXIT_OK, EXIT_FAILED, EXIT_INPUT, EXIT_UNREACHABLE = 0, 1, 2, 3  # argparse exits 2 as well

COMMANDS = {
    "distill": ("launch.distill", "queue (or run locally) the whole KD pipeline"),
    "status": ("launch.status", "a run's stages, logs, cancel, wait"),
    "report": ("launch.report", "the MMLU report from three results files"),
    "sweep": ("launch.sweep", "nightly sweeps: run (default) and check"),
}


def parser(doc: str, prog: str | None = None, **kw) -> argparse.ArgumentParser:
    """A parser whose description is the first paragraph of ``doc`` and whose epilog is the
    rest (the module docstring's usage block)."""
    first, _, rest = doc.partition("\n\n")
    return argparse.ArgumentParser(prog=prog, description=first, epilog=rest or None,
                                   formatter_class=argparse.RawDescriptionHelpFormatter, **kw)


def add_cluster(p: argparse.ArgumentParser, default: str | None,
                help: str = "cluster profile name (configs/clusters/NAME.yaml) or path") -> None:
    p.add_argument("--cluster", default=default, help=help)


def add_config(p: argparse.ArgumentParser, default: str | None) -> None:
    p.add_argument("--config", default=default,
                   help=f"experiment YAML (path or name in configs/experiments)"
                        f"{'; default ' + default if default else ''}")


def add_run_dir(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--run-dir", type=str, help=help)


def add_dry_run(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--dry-run", action="store_true", help=help)


def add_overrides(p: argparse.ArgumentParser, dest: str, help: str) -> None:
    """Dotted ``key=value`` overrides, as trailing arguments or repeated ``--set key=value``
    (``parse`` joins both into ``dest``, in that order)."""
    p.add_argument(dest, nargs="*", metavar="key=value", help=help)
    p.add_argument("--set", action="append", default=[], metavar="key=value", dest="_set",
                   help="one more override (repeatable)")


def parse(p: argparse.ArgumentParser, argv: list[str] | None,
          overrides: str | None = None) -> argparse.Namespace:
    args = p.parse_args(argv)
    extra = vars(args).pop("_set", None) or []
    if overrides is not None:
        setattr(args, overrides, [*getattr(args, overrides, []), *extra])
    return args


def input_error(message: str, queued_note: bool = False) -> int:
    """Print a user mistake the way every command does and return exit code 2."""
    print(f"error: {message}", file=sys.stderr)
    if queued_note:
        print("nothing was queued.", file=sys.stderr)
    return EXIT_INPUT


def main(argv: list[str] | None = None) -> int:
    """``kdlaunch COMMAND ARGS``: runs ``COMMAND``'s own ``main(ARGS)``."""
    argv = sys.argv[1:] if argv is None else argv
    lines = [f"  {name:<8} {what}" for name, (_, what) in COMMANDS.items()]
    p = parser(__doc__, prog="kdlaunch")
    p.epilog = "commands:\n" + "\n".join(lines) + "\n\n" + (p.epilog or "")
    p.add_argument("command", choices=list(COMMANDS), help="what to do (see below)")
    p.add_argument("args", nargs=argparse.REMAINDER, help="the command's own arguments")
    if not argv or argv[0] in ("-h", "--help"):
        p.print_help()
        return EXIT_OK if argv else EXIT_INPUT
    args = p.parse_args(argv[:1])
    module = importlib.import_module(COMMANDS[args.command][0])
    sys.argv[0] = f"kdlaunch {args.command}"  # the command's usage line names it
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
