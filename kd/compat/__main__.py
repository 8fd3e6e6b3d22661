"""``python -m kd.compat [--device cpu] [--probe] [--json]``: the workaround table here."""

from __future__ import annotations

import argparse
import json
import sys

from kd.compat import WORKAROUNDS, decide, installed_version, resolve_device


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kd.compat",
        description="The compatibility workarounds: which this machine would apply, and "
        "(--probe) whether the upstream bug each works around is still there.",
    )
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--probe", action="store_true", help="also check each upstream bug")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    rows = []
    for wa in WORKAROUNDS:
        ok, why = decide(wa, device)
        row = {
            "name": wa.name,
            "package": wa.package,
            "installed": installed_version(wa.package),
            "versions": wa.versions,
            "state": why,
            "why": wa.why,
        }
        if args.probe:
            row["upstream_bug"] = (
                ("present" if wa.bug_present() else "gone")
                if wa.bug_present
                else f"undetectable: {wa.undetectable}"
            )
        rows.append(row)
    if args.json:
        print(json.dumps({"device": device, "workarounds": rows}, indent=1))
        return 0
    on = [r["name"] for r in rows if r["state"] == "active"]
    print(f"device {device}: {len(on)} of {len(rows)} workarounds active")
    for r in rows:
        bug = f"  upstream bug: {r['upstream_bug']}" if args.probe else ""
        print(
            f"  {r['name']:<30} {r['package']} {r['installed']} ({r['versions']}): "
            f"{r['state']}{bug}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
