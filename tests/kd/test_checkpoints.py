"""kd.checkpoints: only complete saves count, for every reader; killed saves are quarantined."""

from __future__ import annotations

from pathlib import Path

import pytest

from kd import checkpoints as ck


def save(root: Path, it: int, complete: bool = True) -> Path:
    d = root / f"iter_{it:07d}"
    d.mkdir(parents=True)
    (d / "__0_0.distcp").write_bytes(b"x")
    (d / "common.pt").write_bytes(b"x")
    if complete:
        (d / ".metadata").write_bytes(b"x")
        (d / "metadata.json").write_text("{}")
        (root / ck.TRACKER).write_text(str(it))
    return d


def test_killed_save_is_never_picked_and_is_quarantined(tmp_path):
    root = tmp_path / "checkpoints"
    save(root, 20)
    save(root, 40)
    half = save(root, 60, complete=False)  # data shards + common.pt, tracker still says 40
    assert ck.complete_iterations(root) == [20, 40]
    assert ck.latest_complete(root) == 40
    assert not ck.is_complete(root, 60)
    assert ck.incomplete_dirs(root) == [half]
    assert "incomplete (ignored): iter_0000060" in ck.describe(root)
    moved = ck.quarantine_incomplete(root)
    assert len(moved) == 1 and moved[0].parent == root / "incomplete"
    assert (moved[0] / "common.pt").exists()  # kept, not deleted
    assert sorted(p.name for p in root.glob("iter_*")) == ["iter_0000020", "iter_0000040"]
    # a second kill at the same iteration does not collide with the first one kept aside
    save(root, 60, complete=False)
    assert len(ck.quarantine_incomplete(root)) == 1
    assert len(list((root / "incomplete").iterdir())) == 2


def test_files_missing_below_tracker_is_incomplete(tmp_path):
    root = tmp_path / "checkpoints"
    save(root, 20)
    (root / "iter_0000020" / ".metadata").unlink()
    assert ck.latest_complete(root) is None
    assert ck.complete_iterations(tmp_path / "nothing") == []


def test_export_refuses_an_incomplete_iteration(tmp_path):
    from kd.export import resolve_iteration
    from kd.sections import Export
    from kd.specs import ExportSpec, replace_fields

    root = tmp_path / "checkpoints"
    save(root, 20)
    save(root, 40, complete=False)
    spec = ExportSpec(checkpoints=str(root), student="s", export=Export(hf_template="t"), out_dir=str(tmp_path / "o"))
    assert resolve_iteration(spec) == 20
    with pytest.raises(ValueError, match=r"export.iteration=40: .* incomplete save .*\[20\]"):
        resolve_iteration(replace_fields(spec, iteration=40))
