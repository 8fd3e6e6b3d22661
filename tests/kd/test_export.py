"""kd.export: Megatron checkpoint -> HF dir that transformers loads, logits equal."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from kd.sections import Export
from kd.specs import ExportSpec, replace_fields
from tests.kd.conftest import REPO, run_python, tagged_json


def _export_and_check(kd_runs: Path, name: str, spec: ExportSpec) -> dict:
    spec_file = kd_runs / f"{name}.json"
    spec_file.write_text(json.dumps(dataclasses.asdict(spec)))
    proc = run_python(
        [str(REPO / "tests/kd/_export_check.py"), str(spec_file)], kd_runs / f"{name}.log"
    )
    return tagged_json(proc.stdout, "KD_EXPORT_CHECK")


@pytest.fixture(scope="module")
def hetero_export(kd_runs, hetero_run, tiny_teacher, anymodel_student) -> tuple[ExportSpec, dict]:
    spec = ExportSpec(
        checkpoints=str(Path(hetero_run["spec"].output_dir) / "checkpoints"),
        out_dir=str(kd_runs / "export_hetero"),
        export=Export(hf_template=str(tiny_teacher), iteration=6),
        student=str(anymodel_student),
        done_marker=str(kd_runs / "stages" / "export_hf.done"),
    )
    return spec, _export_and_check(kd_runs, "export_hetero", spec)


def test_export_anymodel_keeps_layout(hetero_export):
    spec, report = hetero_export
    assert report["iteration"] == 6
    assert report["max_abs_diff"] < 1e-5
    assert report["changed_vs_initial"] > 1e-3  # the distilled weights were exported
    blocks = report["block_configs"]
    assert blocks[0]["attention"]["no_op"] and blocks[1]["ffn"]["intermediate_size"] == 64
    assert "block_1_ffn.safetensors" in report["subblocks"]
    assert "block_0_attention.safetensors" not in report["subblocks"]
    assert Path(spec.done_marker).is_file()


@pytest.mark.dist
def test_export_tp2_dense_checkpoint(kd_runs, dense_tp2_run, dense_student):
    spec = ExportSpec(
        checkpoints=str(Path(dense_tp2_run["spec"].output_dir) / "checkpoints"),
        out_dir=str(kd_runs / "export_dense"),
        export=Export(hf_template=str(dense_student)),
        student=str(dense_student),
    )
    report = _export_and_check(kd_runs, "export_dense", spec)
    assert report["iteration"] == 8 and report["block_configs"] is None
    assert report["max_abs_diff"] < 1e-5 and report["changed_vs_initial"] > 1e-3


def test_export_is_idempotent_and_never_overwrites(hetero_export, tmp_path):
    from kd import export

    base = replace_fields(hetero_export[0], done_marker=None)
    out = Path(base.out_dir)
    before = (out / export.FINISHED).stat().st_mtime_ns
    assert export.run(base) == out
    assert (out / export.FINISHED).stat().st_mtime_ns == before
    with pytest.raises(ValueError, match="choose another out_dir"):
        export.run(replace_fields(base, iteration=3))
    with pytest.raises(ValueError, match="run the distill stage first"):
        export.run(replace_fields(base, checkpoints=str(tmp_path), iteration=None))
