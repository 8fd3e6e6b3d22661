"""Workarounds that apply around one call rather than to the whole process. Each is registered
in ``kd.compat.WORKAROUNDS`` (stage "scoped") and does nothing outside its version range."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path


def precreate_shard_dirs(source: str | Path, out: Path) -> None:
    """Bridge 0.3.1's export writes nested shard names (AnyModel: ``subblocks_safetensors/x``)
    without creating their parent dirs; create them from the source's index."""
    from kd import compat

    out.mkdir(parents=True, exist_ok=True)
    if not compat.enabled("bridge-export-shard-dirs"):
        return
    index = Path(source) / "model.safetensors.index.json"
    if not index.is_file():
        return
    for shard in set(json.loads(index.read_text())["weight_map"].values()):
        (out / shard).parent.mkdir(parents=True, exist_ok=True)


@contextlib.contextmanager
def single_process_rendezvous():
    """Bridge's export_ckpt starts a gloo group from MASTER_ADDR/PORT: inside a multi-task
    SLURM job it would join the job-wide rendezvous. Hide them so it picks a free local port."""
    from kd import compat

    if not compat.enabled("bridge-export-rendezvous"):
        yield
        return
    saved = {k: os.environ.pop(k) for k in ("MASTER_ADDR", "MASTER_PORT") if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


@contextlib.contextmanager
def private_datasets_cache(active: bool):
    """Local task data gets a fresh, private HF ``datasets`` cache.

    ``datasets`` names the cache entry of a local folder after the folder's *name* and the
    config (``mmlu_data_abstract_algebra_0.0.0_<hash of the builder>``), not its path or
    contents: a second local MMLU copy with the same folder name is silently served from the
    first one's cache (seen: 4 questions per subject evaluated from a 10-question copy).
    """
    from kd import compat

    if not active or not compat.enabled("datasets-local-folder-cache"):
        yield
        return
    import datasets

    previous = datasets.config.HF_DATASETS_CACHE
    with tempfile.TemporaryDirectory(prefix="kd-datasets-") as tmp:
        datasets.config.HF_DATASETS_CACHE = Path(tmp)
        try:
            yield
        finally:
            datasets.config.HF_DATASETS_CACHE = previous
