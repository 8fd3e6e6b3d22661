"""Eval stage on CPU: the real lm-eval ``mmlu`` task over a small local MMLU (include_path)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from kd import evaluate, results
from kd.specs import EvalSpec
from tests.eval.always_c import expected_acc

GROUP_KEYS = ["mmlu", "mmlu_humanities", "mmlu_other", "mmlu_social_sciences", "mmlu_stem"]


def spec_for(model: Path, tasks: Path, out: Path, **kw) -> EvalSpec:
    base = dict(
        role="student_before",
        model=str(model),
        out_file=str(out),
        include_path=str(tasks),
        batch_size=8,
        device="auto",
    )
    return EvalSpec(**{**base, **kw})


def test_mmlu_groups_schema_and_lm_eval_file(
    tiny_teacher, mmlu_tasks, mmlu_dataset, tmp_path, monkeypatch
):
    import lm_eval

    raw = {}
    real = lm_eval.simple_evaluate

    def keep_raw(*args, **kwargs):
        raw.update(real(*args, **kwargs))
        return raw

    monkeypatch.setattr(lm_eval, "simple_evaluate", keep_raw)
    spec = spec_for(
        tiny_teacher,
        mmlu_tasks,
        tmp_path / "eval" / "student_before.json",
        done_marker=str(tmp_path / "stages" / "eval_student_before.done"),
    )
    record = evaluate.run(spec)

    assert record["schema"] == results.SCHEMA and record["source"] == "kdlaunch"
    assert list(record["groups"]) == GROUP_KEYS
    for group in record["groups"].values():
        assert 0 <= group["acc"] <= 1 and isinstance(group["acc_stderr"], float)
    assert [g["n"] for g in record["groups"].values()] == [16, 4, 4, 4, 4]
    s = record["settings"]
    assert (s["num_fewshot"], s["limit"], s["device"], s["dtype"]) == (5, None, "cpu", "float32")
    assert s["dataset_path"] == str(mmlu_dataset)
    assert record["model_kind"] == "hf" and record["role"] == "student_before"
    assert {"mmlu", "mmlu_stem", "mmlu_philosophy"} <= set(record["task_versions"])
    assert record["versions"]["lm_eval"] == "0.4.13" and record["versions"]["transformers"]
    assert record["timestamp"].endswith("Z") and len(record["fingerprint"]) == 64
    assert results.load(spec.out_file) == record
    assert Path(spec.done_marker).is_file()
    # lm-eval's own output loads into the same numbers and settings
    lm_file = tmp_path / "results_2026-01-01T00-00-00.json"
    lm_file.write_text(json.dumps(raw, default=str))
    theirs = results.load(lm_file)
    assert theirs["source"] == "lm-eval" and theirs["groups"] == record["groups"]
    assert theirs["settings"]["num_fewshot"] == 5
    assert theirs["task_versions"] == record["task_versions"]


def test_hand_count_of_an_always_c_model(always_c_model, mmlu_tasks, tmp_path):
    record = evaluate.run(spec_for(always_c_model, mmlu_tasks, tmp_path / "c.json"))
    got = {k: g["acc"] for k, g in record["groups"].items()}
    assert got == pytest.approx(expected_acc())
    assert got["mmlu"] == pytest.approx(7 / 16)


def test_anymodel_checkpoint_loads_and_evaluates(always_c_anymodel, mmlu_tasks, tmp_path):
    config = json.loads((always_c_anymodel / "config.json").read_text())
    assert config["block_configs"][0]["attention"]["no_op"]
    assert evaluate.is_anymodel(always_c_anymodel)
    record = evaluate.run(
        spec_for(
            always_c_anymodel, mmlu_tasks, tmp_path / "any.json", role="student_after", limit=3
        )
    )
    assert record["model_kind"] == "anymodel" and record["settings"]["limit"] == 3
    assert [g["n"] for g in record["groups"].values()] == [12, 3, 3, 3, 3]
    got = {k: g["acc"] for k, g in record["groups"].items()}
    assert got == pytest.approx(expected_acc(limit=3))


def test_load_anymodel_has_the_pruned_shapes(always_c_anymodel):
    model = evaluate.load_anymodel(always_c_anymodel)
    ffn = [layer.mlp.gate_proj.out_features for layer in model.model.layers]
    assert ffn[1] == ffn[0] // 2


def test_teacher_cache_hit_and_miss(tiny_teacher, mmlu_tasks, tmp_path, monkeypatch):
    cache = tmp_path / "teacher-cache"
    first = spec_for(
        tiny_teacher,
        mmlu_tasks,
        tmp_path / "run1" / "teacher.json",
        role="teacher",
        limit=2,
        cache_dir=str(cache),
    )
    computed = evaluate.run(first)
    assert computed["cache"] == {
        "hit": False,
        "file": str(cache / f"{computed['fingerprint']}.json"),
    }
    assert [g["n"] for g in computed["groups"].values()] == [8, 2, 2, 2, 2]

    calls = []

    def counting_eval(spec, device, dtype, key):
        calls.append(spec)
        return {**computed, "fingerprint": key, "cache": None}

    monkeypatch.setattr(evaluate, "_evaluate", counting_eval)
    # a later run (another run dir, another copy of the same teacher): hit, nothing recomputed
    copy = tmp_path / "teacher-copy"
    shutil.copytree(tiny_teacher, copy)
    hit = evaluate.run(
        replace(first, model=str(copy), out_file=str(tmp_path / "run2" / "t.json"), batch_size=4)
    )
    assert calls == [] and hit["cache"]["hit"] is True
    assert hit["groups"] == computed["groups"] and hit["model"] == str(copy)
    assert results.load(tmp_path / "run2" / "t.json")["cache"]["hit"] is True
    # the same out_file again: reused as is
    evaluate.run(first)
    assert calls == []
    # different settings miss
    for change in ({"num_fewshot": 0}, {"limit": 3}, {"dtype": "float16", "device": "cuda"}):
        evaluate.run(replace(first, out_file=str(tmp_path / "miss.json"), **change))
    assert len(calls) == 3


def test_fingerprint_follows_weights_not_paths(tiny_teacher, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_teacher, copy)
    assert evaluate.model_fingerprint(copy) == evaluate.model_fingerprint(tiny_teacher)
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert evaluate.model_fingerprint(copy) != evaluate.model_fingerprint(tiny_teacher)


def test_device_and_dtype_resolution():
    assert evaluate.resolve_dtype("bfloat16", "cpu") == "float32"
    assert evaluate.resolve_dtype("bfloat16", "cuda") == "bfloat16"
    assert evaluate.resolve_dtype("float32", "cpu") == "float32"
    assert evaluate.resolve_device("cuda:1") == "cuda:1"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"role": "student"}, "role"),
        ({"tasks": ("mmlu_stem",)}, "start with .mmlu."),
        ({"tasks": ("mmlu", "kd_synth", "kd_synth")}, "once each"),
        ({"num_fewshot": 6}, "0..5"),
        ({"limit": 0}, "limit"),
        ({"dtype": "fp8"}, "dtype"),
        ({"include_path": "/does/not/exist"}, "include_path"),
    ],
)
def test_spec_mistakes_are_value_errors(tmp_path, change, message):
    spec = spec_for(tmp_path, tmp_path, tmp_path / "x.json")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match=message):
        evaluate.check(replace(spec, **change))


def test_model_dir_without_config_or_missing_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="config.json"):
        evaluate.check(spec_for(tmp_path, tmp_path, tmp_path / "x.json"))
    with pytest.raises(ValueError, match="not found"):
        evaluate.check(spec_for(tmp_path / "gone", tmp_path, tmp_path / "x.json"))


@pytest.mark.gpu
def test_bfloat16_on_gpu(always_c_model, always_c_anymodel, mmlu_tasks, tmp_path):
    for model in (always_c_model, always_c_anymodel):
        out = tmp_path / f"{model.name}.json"
        record = evaluate.run(spec_for(model, mmlu_tasks, out, dtype="bfloat16"))
        assert (record["settings"]["device"], record["settings"]["dtype"]) == ("cuda", "bfloat16")
        got = {k: g["acc"] for k, g in record["groups"].items()}
        assert got == pytest.approx(expected_acc())


def test_same_named_local_copies_are_not_served_from_each_others_cache(tiny_teacher, tmp_path):
    """`datasets` keys a local folder's cache by its name, not its contents: two different
    local MMLU copies both called mmlu_data must each be evaluated on their own questions."""
    from assets.mmlu import build_fake_mmlu
    from kd.mmlu_local import DEFAULT_SUBJECTS, write_task_overrides

    counts = {}
    for copy, n_test in (("a", 2), ("b", 3)):
        data = build_fake_mmlu(tmp_path / copy / "mmlu_data", n_test=n_test, seed=n_test)
        tasks = write_task_overrides(tmp_path / copy / "tasks", data, DEFAULT_SUBJECTS)
        spec = spec_for(tiny_teacher, tasks, tmp_path / copy / "r.json")
        spec = dataclasses.replace(spec, num_fewshot=0)
        counts[copy] = evaluate.run(spec)["groups"]["mmlu"]["n"]
    assert counts == {"a": 2 * len(DEFAULT_SUBJECTS), "b": 3 * len(DEFAULT_SUBJECTS)}
