"""kd.evaluate.task_manager: the narrowed lm-eval task index gives the same entries as the full
one for what a run asks for, and falls back to the full index when a group reaches outside the
folders it can guess."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def full_index(demo_assets):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=demo_assets["tasks"]).task_index


def _reachable(index: dict, names: list[str]) -> dict[str, str]:
    """name -> yaml path of every entry the names reach through group ``task:`` lists."""
    import yaml

    out, todo = {}, list(names)
    while todo:
        name = todo.pop()
        if name in out:
            continue
        entry = index[name]
        out[name] = str(entry.yaml_path)
        if entry.kind.name == "GROUP":
            members = yaml.safe_load(Path(entry.yaml_path).read_text()).get("task", [])
            todo += [m for m in members if isinstance(m, str)]
    return out


def test_demo_tasks_index_narrowly_with_the_same_entries(full_index, demo_assets):
    from kd.evaluate import task_manager

    narrow = task_manager(["mmlu", "kd_synth"], demo_assets["tasks"])
    assert len(narrow.all_tasks) < 1000 < len(full_index)  # ~440 of ~14,700
    got = _reachable(narrow.task_index, ["mmlu", "kd_synth"])
    assert got == _reachable(full_index, ["mmlu", "kd_synth"])
    # the local MMLU copy's group files override lm-eval's, as with the full index
    assert got["mmlu"].startswith(str(demo_assets["tasks"]))
    # lm-eval's own mmlu groups name tags (mmlu_stem_tasks, ...): the same subtasks carry them
    tags = [f"mmlu_{c}_tasks" for c in ("stem", "humanities", "other", "social_sciences")]
    for tag in tags:
        members = {k for k, e in full_index.items() if tag in e.tags}
        assert members and {k for k, e in narrow.task_index.items() if tag in e.tags} == members
        assert all(narrow.task_index[k].yaml_path == full_index[k].yaml_path for k in members)


def test_a_group_reaching_outside_its_folder_falls_back_to_the_full_index(full_index, tmp_path):
    from kd.evaluate import task_manager

    # a user's own group in include_path that names built-in tasks of two other families
    (tmp_path / "kd_mix.yaml").write_text(
        "group: kd_mix\ntask:\n  - hellaswag\n  - arc_easy\naggregate_metric_list:\n"
        "  - metric: acc\n")
    manager = task_manager(["kd_mix"], str(tmp_path))
    assert len(manager.all_tasks) > 10000  # the full index
    assert manager.task_index["hellaswag"].yaml_path == full_index["hellaswag"].yaml_path
    # a built-in task whose folder has its own name is found without the full index
    assert len(task_manager(["hellaswag"]).all_tasks) < 50
    # lm-eval's own mmlu: its groups name tags whose tasks all live in tasks/mmlu
    assert len(task_manager(["mmlu"]).all_tasks) < 1000
    # a tag whose tasks live in two families (tasks/mgsm and tasks/spanish_bench): indexing
    # tasks/mgsm alone would drop the spanish_bench ones, so the full index is built
    members = {k for k, e in full_index.items() if "mgsm_direct" in e.tags}
    assert {Path(full_index[k].yaml_path).parent.parent.name for k in members} >= {"mgsm"}
    manager = task_manager(["mgsm_direct"])
    assert len(manager.all_tasks) > 10000
    assert {k for k, e in manager.task_index.items() if "mgsm_direct" in e.tags} == members


def test_include_targets_reads_scalars_and_lists():
    from kd.evaluate import include_targets

    assert include_targets("include: ../mgsm/direct/mgsm_direct_es.yaml\ntask: x\n") == [
        "../mgsm/direct/mgsm_direct_es.yaml"]
    assert include_targets("task: x\ninclude:\n  - _a.yaml  # base\n  - 'b_yaml'\nfoo: 1\n") == [
        "_a.yaml", "b_yaml"]
    assert include_targets('include: [one.yaml, "two.yaml"]\n') == ["one.yaml", "two.yaml"]
    assert include_targets("task: x\n# include: not.yaml\n") == []
