"""Export stage: one Megatron checkpoint of the distilled student -> a Hugging Face model dir.

``AutoBridge.export_ckpt`` semantics (the guide's ``--hf-model``): a dense student is written
through the bridge of ``hf_template`` (the base architecture's config and tokenizer); a
heterogeneous Puzzletron AnyModel student (``block_configs``) is written through its own dir, so
the export keeps the AnyModel layout (``subblocks_safetensors/``). In both cases the student's
``config.json`` is copied over the exported one, as the guide does, so ``block_configs`` and the
pruned shapes survive. Loading an AnyModel export with transformers needs modelopt's
``deci_x_patcher``.

Runs in one process on CPU (export_ckpt opens its own single-rank gloo group). Idempotent: the
export is written to a temp dir and renamed into place; a finished export is never overwritten.

CLI::

    python -m kd.export --spec spec.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

from kd import checkpoints as ckpts
from kd.job import console_logger
from kd.paths import iteration_dir
from kd.results import write_json_atomic
from kd.specs import ExportSpec, spec_from_dict

log = logging.getLogger("kd.export")
FINISHED = ".kdlaunch-export.json"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
)


def run(spec: ExportSpec) -> Path:
    """Export the chosen iteration (default: latest) to ``spec.out_dir``; returns that dir."""
    console_logger(log.name)
    out = Path(spec.out_dir)
    iteration = resolve_iteration(spec)
    finished = read_finished(out)
    if finished is not None:
        if finished["iteration"] != iteration:
            raise ValueError(
                f"{out} already holds the export of iteration "
                f"{finished['iteration']}, not {iteration}: choose another out_dir"
            )
        log.info("export: %s already holds iteration %d, skipping", out, iteration)
    else:
        if out.exists():
            raise ValueError(
                f"{out} exists but is not a finished export: remove it or choose another out_dir"
            )
        _export(spec, iteration, out)
    _write_done_marker(spec, out, iteration)
    return out


def resolve_iteration(spec: ExportSpec) -> int:
    checkpoints = Path(spec.checkpoints)
    iteration = spec.export.iteration if spec.export.iteration is not None else ckpts.latest_complete(checkpoints)
    if iteration is None:
        raise ValueError(f"no complete checkpoint in {checkpoints}: run the distill stage first")
    if not ckpts.is_complete(checkpoints, iteration):
        found = ckpts.complete_iterations(checkpoints)
        what = "an incomplete save (killed midway)" if iteration_dir(checkpoints, iteration).is_dir() \
            else "not saved"
        raise ValueError(
            f"export.iteration={iteration}: the checkpoint in {checkpoints} is {what}; "
            f"complete checkpoints: {found or 'none'}"
        )
    return iteration


def read_finished(out: Path) -> dict | None:
    path = out / FINISHED
    return json.loads(path.read_text()) if path.is_file() else None


def is_heterogeneous(hf_dir: str | Path) -> bool:
    config = json.loads((Path(hf_dir) / "config.json").read_text())
    return bool(config.get("block_configs"))


def _export(spec: ExportSpec, iteration: int, out: Path) -> None:
    from kd import compat

    compat.activate(compat.resolve_device("auto"))
    import modelopt.torch.puzzletron.plugins  # noqa: F401  registers the AnyModel bridges
    import torch
    from megatron.bridge import AutoBridge

    hetero = is_heterogeneous(spec.student)
    source = spec.student if hetero else spec.export.hf_template
    ckpt = iteration_dir(Path(spec.checkpoints), iteration)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    compat.scoped.precreate_shard_dirs(source, tmp)
    log.info(
        "export: %s -> %s through %s (%s)",
        ckpt,
        out,
        source,
        "AnyModel layout" if hetero else "template layout",
    )
    t0 = time.time()
    bridge = AutoBridge.from_hf_pretrained(
        source, torch_dtype=torch.float32,
        trust_remote_code=spec.trust_remote_code)
    with compat.scoped.single_process_rendezvous():
        bridge.export_ckpt(str(ckpt), str(tmp), show_progress=False, strict=True)
    shutil.copyfile(Path(spec.student) / "config.json", tmp / "config.json")
    _copy_missing_tokenizer(spec.export.hf_template, tmp)
    meta = {
        "iteration": iteration,
        "checkpoint": str(ckpt),
        "source": str(source),
        "student": str(spec.student),
        "heterogeneous": hetero,
        "tensors": count_tensors(tmp),
        "seconds": round(time.time() - t0, 1),
    }
    (tmp / FINISHED).write_text(json.dumps(meta, indent=2) + "\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out)
    log.info("export: wrote %d tensors to %s in %.1fs", meta["tensors"], out, meta["seconds"])


def _copy_missing_tokenizer(template: str, out: Path) -> None:
    if any((out / name).is_file() for name in TOKENIZER_FILES) or not Path(template).is_dir():
        return
    for name in TOKENIZER_FILES:
        if (Path(template) / name).is_file():
            shutil.copyfile(Path(template) / name, out / name)


def count_tensors(hf_dir: Path) -> int:
    from safetensors import safe_open

    total = 0
    for file in Path(hf_dir).rglob("*.safetensors"):
        with safe_open(str(file), framework="pt") as f:
            total += len(list(f.keys()))
    return total


def _write_done_marker(spec: ExportSpec, out: Path, iteration: int) -> None:
    if spec.done_marker and not Path(spec.done_marker).is_file():
        write_json_atomic(spec.done_marker,
                          {"stage": "export_hf", "out_dir": str(out), "iteration": iteration})




def spec_to_json(spec: ExportSpec, path: str | Path) -> Path:
    Path(path).write_text(json.dumps(dataclasses.asdict(spec), indent=2) + "\n")
    return Path(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kd.export", description=__doc__.split("\n")[0])
    parser.add_argument("--spec", required=True, help="ExportSpec as JSON (dataclasses.asdict)")
    args = parser.parse_args(argv)
    out = run(spec_from_dict(ExportSpec, json.loads(Path(args.spec).read_text())))
    print(f"KD_EXPORT {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
