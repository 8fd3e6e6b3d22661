"""Eval stage on CPU: the real lm-eval ``mmlu`` task over a small local MMLU (include_path)."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from kd import eval_shards, evaluate, results
from kd.specs import EvalSpec, replace_fields
from tests.eval import gen_task
from tests.eval.always_c import ANSWERS, expected_acc

GROUP_KEYS = ["mmlu", "mmlu_humanities", "mmlu_other", "mmlu_social_sciences", "mmlu_stem"]


def spec_for(model: Path, task_dir: Path, out: Path, **kw) -> EvalSpec:
    base = dict(
        role="student_before",
        model=str(model),
        out_file=str(out),
        include_path=str(task_dir),
        batch_size=8,
        device="auto",
    )
    return replace_fields(EvalSpec(role="student_before", model=str(model), out_file=str(out)),
                          **{**base, **kw})


@pytest.fixture(scope="module")
def teacher_run(tiny_teacher, mmlu_and_gen_tasks, tmp_path_factory):
    """One single-process eval of the tiny teacher (MMLU + kd_gen), with lm-eval's raw dict;
    shared by the schema test and the data-parallel comparison."""
    import lm_eval

    raw = {}
    real = lm_eval.simple_evaluate

    def keep_raw(*args, **kwargs):
        raw.update(real(*args, **kwargs))
        return raw

    tmp = tmp_path_factory.mktemp("teacher-run")
    spec = spec_for(tiny_teacher, mmlu_and_gen_tasks, tmp / "eval" / "student_before.json",
                    tasks=("mmlu", gen_task.TASK),
                    done_marker=str(tmp / "stages" / "eval_student_before.done"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lm_eval, "simple_evaluate", keep_raw)
        record = evaluate.run(spec, processes=1)
    return spec, record, raw


def test_mmlu_groups_schema_and_lm_eval_file(teacher_run, mmlu_dataset, tmp_path):
    spec, record, raw = teacher_run
    assert record["schema"] == results.SCHEMA and record["source"] == "kdlaunch"
    assert list(record["groups"]) == [*GROUP_KEYS, gen_task.TASK]
    for group in record["groups"].values():
        assert 0 <= group["acc"] <= 1 and isinstance(group["acc_stderr"], float)
    assert [g["n"] for g in record["groups"].values()] == [16, 4, 4, 4, 4, 6]
    s = record["settings"]
    assert (s["num_fewshot"], s["limit"], s["device"], s["dtype"]) == (5, None, "cpu", "float32")
    assert s["dataset_path"] == str(mmlu_dataset)
    assert record["model_kind"] == "hf" and record["role"] == "student_before"
    assert {"mmlu", "mmlu_stem", "mmlu_philosophy", "kd_gen"} <= set(record["task_versions"])
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


def test_two_processes_merge_to_the_single_process_results(teacher_run, tmp_path):
    """Data parallel (kd/eval_shards.py): the tiny teacher (not the always-C model, whose
    answers would survive requests swapped between questions) over two CPU processes gives the
    single-process record: the same questions, scores, aggregates, stderrs and samples."""
    spec, one, _ = teacher_run
    out = tmp_path / "student_before.json"
    two = evaluate.run(replace_fields(spec, out_file=str(out), done_marker=None), processes=2)
    assert (one["settings"]["processes"], two["settings"]["processes"]) == (1, 2)
    assert two["groups"] == one["groups"] and two["fingerprint"] == one["fingerprint"]
    assert two["samples"] == one["samples"] and one["samples"]["questions"] == 16 + 6
    assert (gzip.decompress(results.samples_file(out).read_bytes())
            == gzip.decompress(results.samples_file(spec.out_file).read_bytes()))


def test_process_count_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("KD_EVAL_PROCESSES", raising=False)
    assert eval_shards.processes_for("cpu") == 1
    assert eval_shards.processes_for("cpu", 3) == 3
    monkeypatch.setenv("KD_EVAL_PROCESSES", "2")
    assert eval_shards.processes_for("cuda") == 2
    assert eval_shards.worker_devices("cuda", 2) == ["cuda:0", "cuda:1"]
    assert eval_shards.worker_devices("cpu", 2) == ["cpu", "cpu"]
    monkeypatch.setenv("KD_EVAL_PROCESSES", "two")
    with pytest.raises(ValueError, match="KD_EVAL_PROCESSES"):
        eval_shards.processes_for("cuda")


def test_hand_count_of_an_always_c_model(always_c_model, mmlu_and_gen_tasks, tmp_path):
    """MMLU (multiple choice) and kd_gen (generate_until) in one eval, with their samples."""
    out = tmp_path / "c.json"
    record = evaluate.run(spec_for(always_c_model, mmlu_and_gen_tasks, out,
                                   tasks=("mmlu", gen_task.TASK)))
    got = {k: g["acc"] for k, g in record["groups"].items()}
    assert got == pytest.approx({**expected_acc(), "kd_gen": gen_task.EXPECTED_ALWAYS_C})
    assert got["mmlu"] == pytest.approx(7 / 16) and got["kd_gen"] == 3 / 6
    # the generative task reports its primary metric: exact_match under its first filter
    assert record["groups"]["kd_gen"]["metric"] == "exact_match,strict-match"
    assert record["groups"]["kd_gen"]["n"] == 6
    # lm-eval's stderr of a mean: sqrt(p (1 - p) / (n - 1)) = sqrt(0.25 / 5)
    assert record["groups"]["kd_gen"]["acc_stderr"] == pytest.approx((0.25 / 5) ** 0.5)
    assert record["groups"]["mmlu"]["metric"] == "acc,none"
    # per-question outcomes beside the results file: one row per question, the hand count
    ref = record["samples"]
    assert ref["file"] == "c.samples.jsonl.gz" and ref["questions"] == 16 + 6
    assert ref["members"]["mmlu_stem"] == ["mmlu_abstract_algebra"]
    assert len(ref["members"]["mmlu"]) == 4 and ref["members"]["kd_gen"] == ["kd_gen"]
    samples = results.load_samples(out, results.load(out))
    by_task = {}
    for (task, _doc), (doc_hash, score) in sorted(samples["scores"].items()):
        by_task.setdefault(task, []).append(score)
        assert len(doc_hash) == results.HASH_CHARS
    assert by_task["kd_gen"] == [float(t == "C") for t in gen_task.TARGETS]
    for subject, answers in ANSWERS.items():
        assert by_task[f"mmlu_{subject}"] == [float(a == 2) for a in answers]


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

    def counting_eval(spec, device, dtype, key, processes=1):
        calls.append(spec)
        return {**computed, "fingerprint": key, "cache": None}

    monkeypatch.setattr(evaluate, "_evaluate", counting_eval)
    # a later run (another run dir, another copy of the same teacher): hit, nothing recomputed
    copy = tmp_path / "teacher-copy"
    shutil.copytree(tiny_teacher, copy)
    hit = evaluate.run(
        replace_fields(first, model=str(copy), out_file=str(tmp_path / "run2" / "t.json"), batch_size=4)
    )
    assert calls == [] and hit["cache"]["hit"] is True
    assert hit["groups"] == computed["groups"] and hit["model"] == str(copy)
    # the per-question samples travel with the cached numbers
    assert hit["samples"]["file"] == "t.samples.jsonl.gz"
    assert (results.load_samples(tmp_path / "run2" / "t.json", hit)["scores"]
            == results.load_samples(first.out_file, computed)["scores"])
    assert results.load(tmp_path / "run2" / "t.json")["cache"]["hit"] is True
    # the same out_file again: reused as is
    evaluate.run(first)
    assert calls == []
    # different settings miss
    for change in ({"num_fewshot": 0}, {"limit": 3}, {"dtype": "float16", "device": "cuda"}):
        evaluate.run(replace_fields(first, out_file=str(tmp_path / "miss.json"), **change))
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
        ({"tasks": ("mmlu", "kd_synth", "kd_synth")}, "more than once"),
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
        evaluate.check(replace_fields(spec, **change))


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
        spec = replace_fields(spec, num_fewshot=0)
        counts[copy] = evaluate.run(spec)["groups"]["mmlu"]["n"]
    assert counts == {"a": 2 * len(DEFAULT_SUBJECTS), "b": 3 * len(DEFAULT_SUBJECTS)}
