"""kd.compat: every workaround is version-gated, the active set is reported, and each
detectable upstream bug is probed so that a fixed upstream tells us to delete the workaround."""

from __future__ import annotations

import ast
import json
import logging
import subprocess
import sys

import pytest

from kd import compat
from kd.compat import Workaround


@pytest.mark.parametrize(
    ("version", "spec", "expected"),
    [
        ("0.3.1", ">=0.3.0,<0.4", True),
        ("0.4.0", ">=0.3.0,<0.4", False),
        ("0.3", ">=0.3.0,<0.4", True),
        ("2.13.0+cpu", ">=2.6,<2.15", True),
        ("2.15.0rc1", ">=2.6,<2.15", False),
        ("0.16.1", "==0.16.1", True),
        ("0.16.10", ">=0.16.0,<0.17", True),
    ],
)
def test_version_in(version, spec, expected):
    assert compat.version_in(version, spec) is expected


def _fake(name, versions, needed=True, calls=None):
    return Workaround(
        name,
        "torch",  # installed everywhere the tests run
        versions,
        "test",
        "cpu",
        lambda device: needed,
        lambda: calls.append(name),
    )


def test_outside_its_version_range_a_workaround_is_skipped_with_a_log_line(monkeypatch, caplog):
    calls: list[str] = []
    monkeypatch.setattr(compat, "_STATE", {})
    fakes = [
        _fake("in-range", ">=0.1", calls=calls),
        _fake("too-new-for-it", "<0.1", calls=calls),
        _fake("not-needed", ">=0.1", needed=False, calls=calls),
    ]
    with caplog.at_level(logging.WARNING, logger="kd.compat"):
        compat.apply_workarounds(fakes, "cpu")
    assert calls == ["in-range"]
    assert compat.active() == ["in-range"]
    assert "too-new-for-it skipped: torch" in caplog.text and "outside <0.1" in caplog.text
    assert "not-needed" not in caplog.text  # not needed here is not worth a warning
    assert "too-new-for-it (skipped: torch" in compat.summary()
    compat.apply_workarounds(fakes, "cpu")  # idempotent
    assert calls == ["in-range"]


def test_registry_is_complete_and_explained():
    names = [w.name for w in compat.WORKAROUNDS]
    assert len(names) == len(set(names))
    for wa in compat.WORKAROUNDS:
        assert wa.stage in ("stubs", "bridge", "cpu", "scoped"), wa.name
        assert wa.why, wa.name
        assert (wa.bug_present is None) == bool(wa.undetectable), wa.name
        compat.version_in("1.0", wa.versions)  # parses


def _table(device: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "kd.compat", "--device", device, "--probe", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return {row["name"]: row for row in json.loads(proc.stdout)["workarounds"]}


@pytest.fixture(scope="module")
def cpu_table() -> dict:
    return _table("cpu")


def test_cpu_active_set(cpu_table):
    active = {n for n, r in cpu_table.items() if r["state"] == "active"}
    # this CPU stack has no TE, no triton, no CUDA: every workaround applies here
    assert {"te-import-stub", "triton-import-stub", "cpu-torch-cuda-shims"} <= active
    assert {n for n in cpu_table if n.startswith("cpu-")} <= active


def test_scoped_workarounds_are_enabled_for_these_versions(monkeypatch):
    monkeypatch.setattr(compat, "_STATE", {})
    for wa in compat.WORKAROUNDS:
        if wa.stage == "scoped":
            assert compat.enabled(wa.name, "cpu"), compat._STATE[wa.name]


def test_gpu_device_drops_the_cpu_patches(cpu_table):
    for wa in compat.WORKAROUNDS:
        ok, why = compat.decide(wa, "cuda")
        if wa.stage == "cpu":
            assert not ok and why == "not needed here", wa.name


@pytest.mark.parametrize("name", [w.name for w in compat.WORKAROUNDS if w.bug_present is not None])
def test_upstream_bug_is_still_there(cpu_table, name):
    """Fails once upstream fixed the bug: then delete the workaround from kd/compat."""
    row = cpu_table[name]
    assert row["upstream_bug"] == "present", (
        f"{row['package']} {row['installed']} no longer has the bug that {name} works around "
        f"({row['why']}): delete it from kd/compat (or narrow its versions)"
    )


def test_activate_reports_its_state_in_a_fresh_process():
    code = (
        "import json; from kd import compat; state = compat.activate('cpu'); "
        "print(json.dumps({'summary': compat.summary(), 'state': state}))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    process_wide = {w.name for w in compat.WORKAROUNDS if w.stage != "scoped"}
    assert out["summary"].startswith(f"compat: {len(process_wide)} active: ")
    assert set(out["state"]) == process_wide  # scoped ones are decided at their call sites
    import torch  # noqa: F401  the CPU patches were applied in the child, not here

    assert not compat._STATE.get("cpu-torch-cuda-shims")


MOVED_INTO_COMPAT = (
    "cpu-bridge-gloo-barrier",
    "mcore-checkpoint-writer-signal",
    "bridge-save-hook",
)


def test_distill_workarounds_are_registered_and_used_through_compat():
    """The gloo start-up, the checkpoint-writer signal shield and the save hook were in
    kd/distill.py; each is now a registered workaround that its scoped call checks."""
    from pathlib import Path

    registry = {w.name: w for w in compat.WORKAROUNDS}
    scoped_source = Path(compat.scoped.__file__).read_text()
    for name in MOVED_INTO_COMPAT + tuple(n for n, w in registry.items() if w.stage == "scoped"):
        assert registry[name].stage == "scoped", name
        assert f'"{name}"' in scoped_source, f"kd/compat/scoped.py never checks {name}"
    assert not compat.decide(registry["cpu-bridge-gloo-barrier"], "cuda")[0]  # CPU only


_LIBRARIES = ("torch", "megatron", "modelopt", "transformers", "datasets", "lm_eval", "submitit")


def test_no_library_workaround_outside_compat():
    """Every workaround lives in kd/compat: outside it, kd/ never assigns into a library
    module, starts a process group, hides environment variables or ignores a signal."""
    from pathlib import Path

    kd_dir = Path(compat.__file__).parents[1]
    found = []
    for path in sorted(kd_dir.glob("*.py")):
        tree = ast.parse(path.read_text())
        library_names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] in _LIBRARIES:
                        library_names.add(alias.asname or alias.name.split(".")[0])
            elif isinstance(node, ast.ImportFrom) and node.module:
                if node.module.split(".")[0] in _LIBRARIES:
                    library_names.update(a.asname or a.name for a in node.names)
        for node in ast.walk(tree):
            where = f"{path.name}:{getattr(node, 'lineno', '?')}"
            targets = node.targets if isinstance(node, ast.Assign) else []
            for target in targets:
                if isinstance(target, ast.Attribute):
                    root = target.value
                    while isinstance(root, ast.Attribute):
                        root = root.value
                    if isinstance(root, ast.Name) and root.id in library_names:
                        found.append(f"{where}: assigns {ast.unparse(target)}")
            if isinstance(node, ast.Call):
                call = ast.unparse(node.func)
                if call.endswith(("init_process_group", "environ.pop", "setattr")) and (
                    call != "setattr" or _setattr_on_library(node, library_names)
                ):
                    found.append(f"{where}: {call}(...)")
            if isinstance(node, ast.Attribute) and node.attr == "SIG_IGN":
                found.append(f"{where}: signal.SIG_IGN")
    assert not found, "workarounds outside kd/compat: " + "; ".join(found)


def _setattr_on_library(node, library_names) -> bool:
    first = node.args[0] if node.args else None
    return isinstance(first, ast.Name) and first.id in library_names


def _upstream(monkeypatch, tmp_path, source: str) -> None:
    """The source probes read ``source`` as the upstream module (a fixed release, say)."""
    from kd.compat import probes

    path = tmp_path / "upstream.py"
    path.write_text(source)
    monkeypatch.setattr(probes, "module_file", lambda module: path)


def test_gloo_barrier_probe_sees_a_guarded_barrier_as_fixed(tmp_path, monkeypatch):
    from kd.compat import probes

    broken = "def start(n):\n    init()\n    torch.distributed.barrier(device_ids=[n])\n"
    _upstream(monkeypatch, tmp_path, broken)
    assert probes.barrier_passes_device_ids_unguarded("any", "start")
    fixed = (
        "def start(n):\n"
        "    init()\n"
        "    if torch.cuda.device_count() > 0:\n"
        "        torch.distributed.barrier(device_ids=[n])\n"
        "    else:\n"
        "        torch.distributed.barrier()\n"
    )
    _upstream(monkeypatch, tmp_path, fixed)
    assert not probes.barrier_passes_device_ids_unguarded("any", "start")


def test_checkpoint_writer_probe_sees_signal_handling_as_fixed(tmp_path, monkeypatch):
    from kd.compat import probes

    broken = "def _get_write_results_queue():\n    return ctx.Manager().Queue()\n"
    _upstream(monkeypatch, tmp_path, broken)
    assert probes.spawned_manager_keeps_default_signals()
    fixed = (
        "def _get_write_results_queue():\n"
        "    with ignored(signal.SIGUSR2):\n"
        "        return ctx.Manager().Queue()\n"
    )
    _upstream(monkeypatch, tmp_path, fixed)
    assert not probes.spawned_manager_keeps_default_signals()


def test_bridge_loop_still_saves_through_the_wrapped_name():
    """bridge-save-hook wraps ``train.save_checkpoint_and_time``: it works only while Bridge's
    training loop calls that module-level name (a renamed or imported-by-value save would
    silently bypass the kill-path guard)."""
    from kd.compat import probes

    tree = ast.parse(probes.source_text("megatron.bridge.training.train"))
    defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    calls = [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and ast.unparse(n.func) == "save_checkpoint_and_time"
    ]
    assert "save_checkpoint_and_time" in defined and len(calls) >= 2
