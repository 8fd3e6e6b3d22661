"""kd.provenance: what one stage process ran, collected without importing anything, and the
comparisons status and the report show. The real stage run (StageJob -> done marker) is in
tests/report/test_what_ran.py; the real torch process without CUDA in tests/kd/test_provenance.py;
a whole pipeline's markers in tests/e2e (check_finished_run)."""

from __future__ import annotations

import importlib.metadata
import json
import sys

import submitit

import kd
from kd import provenance as prov
from launch import manifest as mf


def test_slurm_node_lists_expand():
    assert prov.expand_nodelist("n[1-3,5],gpu-[08-10],login") == [
        "n1", "n2", "n3", "n5", "gpu-08", "gpu-09", "gpu-10", "login"]
    assert prov.expand_nodelist("rack[1-2]-n[3-4]") == ["rack1-n3", "rack1-n4", "rack2-n3",
                                                        "rack2-n4"]
    assert prov.expand_nodelist("n[1-") is None  # unreadable: the raw list is kept instead
    assert prov.expand_nodelist("n[a-b]") is None


SLURM_ENV = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "n[1-2]", "SLURMD_NODENAME": "n2",
             "SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_STEP_ID": "0",
             "SLURM_RESTART_COUNT": "2", "SLURM_JOB_PARTITION": "debug"}


def test_collect_reads_only_imported_modules_and_slurm_ids():
    rec = prov.collect("distill", 100.0, modules={"kd": kd, "submitit": submitit},
                       environ=SLURM_ENV)
    # versions only of what this process imported, from package metadata
    assert rec["packages"] == {"kdlaunch": importlib.metadata.version("kdlaunch"),
                               "submitit": importlib.metadata.version("submitit")}
    # no torch imported: the CUDA fields are null, with the reason
    assert rec["cuda"]["available"] is None and rec["cuda"]["gpus"] is None
    assert rec["cuda"]["driver"] is None and rec["cuda"]["reason"] == \
        "torch not imported by this stage"
    assert rec["compat"] is None and "not imported" in rec["compat_reason"]
    assert rec["host"] == "n2" and rec["hosts"] == ["n1", "n2"]
    assert (rec["rank"], rec["world_size"]) == (1, 2)
    assert rec["job"] == {"scheduler": "slurm", "job_id": "4242", "array_job_id": None,
                          "array_task_id": None, "step_id": "0", "restart_count": 2,
                          "partition": "debug", "nodelist": "n[1-2]"}
    assert rec["python"] == "{}.{}.{}".format(*sys.version_info[:3])
    assert rec["wall_s"] > 0 and rec["started"].startswith("1970-01-01")
    assert json.loads(json.dumps(rec)) == rec  # JSON as it is


class _NoMetadata:  # a module imported from a source tree: no distribution metadata
    __version__ = "0.99.0rc0"


def test_a_module_without_metadata_gives_its_own_version(monkeypatch):
    monkeypatch.setitem(prov.PACKAGES, "not-a-distribution-kd-test", "fake_mod")
    rec = prov.collect("x", modules={"fake_mod": _NoMetadata}, environ={})
    assert rec["packages"] == {"not-a-distribution-kd-test": "0.99.0rc0"}
    assert rec["job"] is None and rec["hosts"] == [rec["host"]]  # outside any scheduler


def test_the_active_compat_set_is_this_process_s():
    class FakeCompat:  # kd.compat's state as activate()/enabled() leave it
        _STATE = {"te-import-stub": "active", "cpu-gloo": "not needed here",
                  "bridge-x": "skipped: megatron-bridge 0.4.0 outside >=0.3.0,<0.4"}

    rec = prov.collect("distill", modules={"kd.compat": FakeCompat}, environ={})
    assert rec["compat"] == {"active": ["te-import-stub"], "skipped": {
        "bridge-x": "skipped: megatron-bridge 0.4.0 outside >=0.3.0,<0.4"}}


def test_a_failing_probe_never_raises(monkeypatch):
    class BrokenTorch:
        version = None

        class cuda:  # noqa: N801
            @staticmethod
            def is_available():
                raise RuntimeError("driver hung")

    rec = prov.collect("eval", modules={"torch": BrokenTorch}, environ={})
    assert rec["cuda"]["gpus"] is None and "driver hung" in rec["cuda"]["reason"]


def test_versions_that_differ_are_flagged():
    records = {
        "distill": {"python": "3.12.3", "packages": {"torch": "2.9.0", "megatron-core": "0.16.1"}},
        "export_hf": {"python": "3.12.3", "packages": {"torch": "2.9.0", "megatron-core": "0.16.0"}},
        "eval_teacher": None,  # a marker without provenance: left out, not an error
    }
    login = {"torch": "2.13.0", "megatron-core": "0.16.1", "python": "3.12.3", "pandas": "3.1"}
    rows = {r["package"]: r for r in prov.version_rows(records, login)}
    assert set(rows) == {"python", "torch", "megatron-core"}  # the login node's extras: no row
    assert not rows["python"]["differs"]
    assert rows["torch"]["from_login"] and not rows["torch"]["between_stages"]
    assert rows["megatron-core"]["between_stages"]
    assert prov.describe_versions(rows["torch"], 2) == "2.9.0 (distill, export_hf); 2.13.0 " \
        "(login node)"  # differs: the names
    assert prov.describe_versions(rows["python"], 3) == "3.12.3 (2 of 3 stages, login node)"
    assert prov.describe_versions(rows["python"], 2) == "3.12.3 (all 2 stages, login node)"
    assert prov.describe_versions(rows["megatron-core"], 2) == \
        "0.16.1 (distill, login node); 0.16.0 (export_hf)"
    assert prov.differences_line(list(rows.values())) == \
        "megatron-core differs between stages; torch differs from the login node"
    same = prov.version_rows({"distill": records["distill"]}, {"torch": "2.9.0"})
    assert prov.differences_line(same) == ""


def test_old_and_foreign_markers_are_tolerated(tmp_path):
    old = tmp_path / "distill.done"
    old.write_text(json.dumps({"stage": "distill", "iteration": 20}))
    rec, why = prov.read_marker(old)
    assert rec is None and "before it was recorded" in why
    text = tmp_path / "x.done"
    text.write_text("done\n")
    assert prov.read_marker(text)[0] is None
    assert not prov.amend_marker(text, {"stage": "x"}) and text.read_text() == "done\n"
    assert prov.read_marker(tmp_path / "missing.done") == (None, "no done marker")
    assert prov.amend_marker(old, {"stage": "distill"})
    assert prov.read_marker(old)[0] == {"stage": "distill"}
    assert json.loads(old.read_text())["iteration"] == 20  # the stage's own keys stay


def test_manifest_labels_its_versions_as_the_login_node_s(tmp_path):
    m = mf.new(tmp_path, {"name": "x"}, {"name": "c"})
    assert "versions" not in m
    assert m["login_node"]["versions"]["kdlaunch"] == importlib.metadata.version("kdlaunch")
    assert "launcher ran" in m["login_node"]["note"]
    assert prov.login_versions(m)["python"] == m["login_node"]["python"]
    # a manifest written before: its top-level versions are the login node's
    assert prov.login_versions({"versions": {"torch": "2.1"}}) == {"torch": "2.1"}
    assert prov.login_versions(None) == {}


PROC_FILES = {  # /proc/driver/nvidia/version's first line: proprietary and open kernel modules
    "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:56 UTC 2024\n":
        "550.54.15",
    "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build  "
    "(nixbld@)\n": "580.159.04",
}


def test_driver_version_without_pynvml_reads_the_kernel_module(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # not installed: the next way
    for text, version in PROC_FILES.items():
        (tmp_path / "version").write_text(text)
        monkeypatch.setattr(prov, "PROC_DRIVER", str(tmp_path / "version"))
        assert prov.driver_version() == (version, str(tmp_path / "version"))
    monkeypatch.setattr(prov, "PROC_DRIVER", str(tmp_path / "absent"))
    monkeypatch.setattr(prov.shutil, "which", lambda name: None)  # no nvidia-smi either
    assert prov.driver_version() == (None, None)
