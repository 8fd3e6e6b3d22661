"""The sealed boundary: hostile and careless input through the real CLIs, in-process.

Every refused case asserts: exit code 2, the field or file named in one message (no
traceback), nothing queued (the launch/submission functions are never reached), nothing written
anywhere (not even the run directory), and no injected command left a trace. Accepted-but-hostile
values are rendered into every script, which is then executed under no-op srun/sbatch/python
shims. The concurrent-launch case runs on the real SLURM test cluster (marker slurm).

Runner: ``run_cli(main, argv)`` calls a CLI's ``main(argv)`` and returns (code, stdout, stderr).
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from launch import backends, submit
from launch import distill as distill_cli
from launch import report as report_cli
from launch import status as status_cli
from launch import sweep as sweep_cli

REPO = Path(__file__).resolve().parents[2]
PWNED = Path("/tmp")
HF = "hf_" + "AbCdEfGhIjKlMnOpQrStUvWxYz012345678"
GHP = "ghp_" + "aB3" * 12
GHPAT = "github_pat_" + "11ABCDEFG0" + "x" * 60
AKIA = "AKIA" + "IOSFODNN7EXAMPLE"
IMAGE = "cluster.container.image=nvcr.io#nvidia/nemo:26.02"


# ---------------------------------------------------------------- runner and world
def run_cli(main, argv: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def write_hf_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "num_attention_heads": 8,
        "num_key_value_heads": 8, "vocab_size": 256, "max_position_embeddings": 4096,
        "hidden_size": 64, "num_hidden_layers": 2}))
    (path / "tokenizer.json").write_text(json.dumps({"fake": "tok"}))
    return path


@pytest.fixture
def world(tmp_path, monkeypatch):
    """Fake-but-real-shaped model dirs, a corpus, a cwd; submitting is a test failure."""
    assets = tmp_path / "assets"
    s, t = write_hf_dir(assets / "s"), write_hf_dir(assets / "t")
    (assets / "tasks").mkdir()
    (assets / "tasks" / "kd_synth.yaml").write_text("task: kd_synth\n")  # the demo's local task
    corpus = assets / "c.jsonl"
    corpus.write_text('{"text": "w1"}\n')
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    queued: list = []
    monkeypatch.setattr(submit, "launch", lambda *a, **k: queued.append(a) or 0)
    monkeypatch.setattr(submit, "_submit_graph", lambda *a, **k: queued.append(a) or {})
    base = [f"student.path={s}", f"teacher.path={t}", f"export.hf_template={t}",
            f"eval.include_path={assets / 'tasks'}", "train.tp=1", "train.global_batch_size=2",
            "train.micro_batch_size=1", f"data.sources=[{{name: c, jsonl: {corpus}}}]"]
    return {"tmp": tmp_path, "work": work, "base": base, "queued": queued}


def snapshot(root: Path) -> set[str]:
    return {str(p) for p in root.rglob("*")}


def pwn(tag: str) -> tuple[str, Path]:
    marker = PWNED / f"pwned-{tag}-{uuid.uuid4().hex[:10]}"
    return str(marker), marker


# ---------------------------------------------------------------- injection and secrets
def _launch_cases():
    cases = []

    def add(cid, overrides, field, *, mode="dry-run", run_dir=None, emit=None):
        cases.append(pytest.param(overrides, field, mode, run_dir, emit, id=cid))

    # {nl} becomes a YAML double-quoted escape: the override value holds a real newline
    add("partition-newline", ['cluster.partition="debug{nl}touch {M}"'], "cluster.partition")
    add("partition-newline-launch", ['cluster.partition="debug{nl}touch {M}"'],
        "cluster.partition", mode="launch")
    add("partition-cr", ['cluster.partition="debug\\rtouch {M}"'], "cluster.partition")
    add("partition-del", ['cluster.partition="debug\\x7f"'], "cluster.partition")
    add("partition-tab", ['cluster.partition="debug\\ttouch"'], "cluster.partition")
    add("partition-nul", ['cluster.partition="debug\\0x"'], "cluster.partition")
    add("account-newline", ['cluster.account="acct{nl}touch {M}"'], "cluster.account")
    add("qos-newline", ['cluster.qos="q{nl}touch {M}"'], "cluster.qos")
    add("qos-quote", ["cluster.qos=\"q' ; touch {M} #\""], "cluster.qos")
    add("addparam-value-newline",
        ['cluster.additional_parameters={{constraint: "a{nl}touch {M}"}}'],
        "cluster.additional_parameters.constraint")
    add("addparam-key-newline", ['cluster.additional_parameters={{"c{nl}touch {M}": x}}'],
        "cluster.additional_parameters.")
    add("addparam-key-space", ['cluster.additional_parameters={{"mail type": ALL}}'],
        "not an sbatch option name")
    add("addparam-key-equals", ['cluster.additional_parameters={{"a=b": x}}'],
        "not an sbatch option name")
    add("addparam-single-quote", ["cluster.additional_parameters={{comment: \"it's\"}}"],
        "cannot carry safely")
    add("addparam-backtick", ['cluster.additional_parameters={{comment: "`touch {M}`"}}'],
        "cannot carry safely")
    add("setup-newline", ['cluster.setup=["module load x{nl}touch {M}"]'], "cluster.setup[0]")
    add("setup-nul", ['cluster.setup=["module load x\\0"]'], "cluster.setup[0]")
    add("srun-arg-newline", ['cluster.srun_args=["--mpi=pmix{nl}touch {M}"]'],
        "cluster.srun_args[0]")
    add("env-value-newline", ['cluster.env.FOO="a{nl}touch {M}"'], "cluster.env.FOO")
    add("python-newline", ['cluster.python="python{nl}touch {M}"'], "cluster.python")
    add("container-image-newline", ['cluster.container.image="img{nl}touch {M}"'],
        "cluster.container")
    add("name-newline", ['name="x{nl}touch {M}"'], "name")
    add("name-dotdot", ["name=../escape"], "name")
    add("name-slash", ["name=a/b"], "name")
    add("name-dots-only", ["name=.."], "name")
    add("name-subst", ["name=$(touch {M})"], "name")
    add("run-dir-newline", [], "--run-dir", run_dir="run\ntouch {M}")
    add("run-dir-newline-emit", [], "--run-dir", run_dir="run\ntouch {M}", emit="emit",
        mode="emit")
    add("emit-dir-newline", [], "--emit-sbatch", emit="emit\ntouch {M}", mode="emit")
    # the run directory is mounted as RUN:RUN into a pyxis container: ',' would add a mount of
    # the host's /etc, ':' and whitespace would split the entry (launch/shell.py)
    add("run-dir-comma-container", [IMAGE], "--run-dir", run_dir="run,/etc:/host_etc")
    add("run-dir-comma-container-launch", [IMAGE], "--run-dir", run_dir="run,/etc:/host_etc",
        mode="launch")
    add("run-dir-comma-container-emit", [IMAGE], "--run-dir", run_dir="run,x", emit="emit",
        mode="emit")
    add("run-dir-colon-container", [IMAGE], "--run-dir", run_dir="run:x")
    add("run-dir-space-container", [IMAGE], "--run-dir", run_dir="my run")
    # secrets, by value and by name
    add("srun-export-hf-token", [f'cluster.srun_args=["--export=ALL,HF_TOKEN={HF}"]'],
        "cluster.srun_args[0]")
    add("srun-export-by-name", ['cluster.srun_args=["--export=ALL,MY_API_KEY=abc123"]'],
        "cluster.srun_args[0]")
    add("setup-export-token", ['cluster.setup=["export HF_TOKEN=abc123"]'], "cluster.setup[0]")
    add("setup-export-api-key", ['cluster.setup=["export WANDB_API_KEY=x1"]'],
        "cluster.setup[0]")
    add("setup-inline-password", ['cluster.setup=["DB_PASSWORD=x1 ./init.sh"]'],
        "cluster.setup[0]")
    add("setup-hf-token-value", [f'cluster.setup=["huggingface-cli login --token {HF}"]'],
        "Hugging Face token")
    add("env-url-password", ["cluster.env.MLFLOW_TRACKING_URI=https://bob:hunter2@ml.example"],
        "password in a URL")
    add("env-azure-connection-string",
        ['cluster.env.AZ_CONN="DefaultEndpointsProtocol=https;AccountName=a;AccountKey=abc=="'],
        "connection string")
    add("env-sql-password", ['cluster.env.DB="Server=db;User Id=u;Password=p"'],
        "connection string")
    add("env-sas", ['cluster.env.BLOB="https://a.blob/x?SharedAccessSignature=sv=1"'],
        "connection string")
    add("env-github-token", [f"cluster.env.GH={GHP}"], "GitHub token")
    add("env-github-pat", [f"cluster.env.GH={GHPAT}"], "GitHub token")
    add("env-aws-key", [f"cluster.env.AWS_ID={AKIA}"], "AWS access key")
    add("env-key-name", ["cluster.env.HF_TOKEN=abc"], "secret")
    add("addparam-secret", [f"cluster.additional_parameters={{comment: {HF}}}"],
        "cluster.additional_parameters.comment")
    add("container-registry-password",
        ["cluster.container.image=docker://u:pw@registry.example#img"], "password in a URL")
    add("secret-launch-mode", [f"cluster.env.AWS_ID={AKIA}"], "AWS access key", mode="launch")
    return cases


@pytest.mark.parametrize("overrides, field, mode, run_dir, emit", _launch_cases())
def test_injection_and_secrets_refused(world, capsys, overrides, field, mode, run_dir, emit):
    marker, marker_path = pwn("launch")
    overrides = [o.replace("{nl}", "\\n").replace("{M}", marker).replace("{{", "{")
                 .replace("}}", "}") for o in overrides]
    run_dir = (run_dir or "run").replace("{M}", marker)
    argv = ["--cluster", "ci", "--config", "tiny_demo", "--run-dir", run_dir]
    if mode == "dry-run":
        argv.append("--dry-run")
    if emit is not None:
        argv += ["--emit-sbatch", emit.replace("{M}", marker)]
    before = snapshot(world["tmp"])
    code, out, err = run_cli(distill_cli.main, [*argv, "name=bnd", *world["base"], *overrides],
                             capsys)
    assert code == 2, out + err
    assert field in err and "Traceback" not in err, err
    assert "nothing was queued." in err
    assert not world["queued"]
    assert snapshot(world["tmp"]) == before, "a refused launch wrote files"
    assert not marker_path.exists()
    if "secret" in field or "token" in field.lower() or "password" in field or "key" in field:
        assert "environment" in err  # the fix: pass it through the environment


ACCEPTED = [  # hostile but quotable: accepted, rendered quoted, never executed
    ("cluster.additional_parameters={comment: '$(touch {M}) ; touch {M}'}", "--comment="),
    ("cluster.env.FOO='$(touch {M}); `touch {M}`'", "export FOO="),
    ('cluster.srun_args=["--comment=$(touch {M})"]', "--comment="),
    ('cluster.setup=["export HF_TOKEN=$HF_TOKEN"]', "export HF_TOKEN=$HF_TOKEN"),
    ("cluster.env.CKPT_DIR=/data/hf_checkpoints_llama31instructmodel", "CKPT_DIR="),
]


def test_run_dir_separators_only_matter_in_a_container(world, capsys):
    """A ',' in the run directory is refused only where it reaches --container-mounts; without
    a container image it is an ordinary directory name (kept: sbatch takes it as is)."""
    code, out, err = run_cli(distill_cli.main, ["--cluster", "ci", "--config", "tiny_demo",
                                                "--run-dir", "run,x", "--dry-run", "name=bnd",
                                                *world["base"]], capsys)
    assert code == 0, err
    assert "run,x/jobs/" in out and "--container-mounts" not in out
    code, out, err = run_cli(distill_cli.main, ["--cluster", "ci", "--config", "tiny_demo",
                                                "--run-dir", "run_x", "--dry-run", "name=bnd",
                                                *world["base"], IMAGE], capsys)
    assert code == 0, err
    mounts = re.findall(r"--container-mounts=(\S+)", out)
    assert mounts and all(m.rstrip("'") == f"{world['work']}/run_x:{world['work']}/run_x"
                          for m in mounts), mounts


@pytest.mark.parametrize("override, rendered", ACCEPTED, ids=[a[1] for a in ACCEPTED])
def test_hostile_but_quotable_values_are_accepted(world, capsys, override, rendered):
    marker, marker_path = pwn("accepted")
    override = override.replace("{M}", marker)
    code, out, err = run_cli(distill_cli.main, ["--cluster", "ci", "--config", "tiny_demo",
                                                "--run-dir", "run", "--dry-run", "name=bnd",
                                                *world["base"], override], capsys)
    assert code == 0, err
    assert rendered in out
    assert not marker_path.exists() and not world["queued"]


# ---------------------------------------------------------------- every script, executed
def test_rendered_scripts_run_nothing_injected(world, capsys, tmp_path):
    """Render the submitit sbatch (its own renderer), the standalone sbatch and submit.sh with
    hostile-but-accepted values, then execute them with no-op shims first on PATH."""
    from launch import config as cfg
    from launch import layout
    from launch import plan as planner
    from launch.executors import sbatch_text

    marker, marker_path = pwn("exec")
    hostile = [f"cluster.additional_parameters={{comment: '$(touch {marker})'}}",
               f"cluster.env.FOO='$(touch {marker}); `touch {marker}`; \"x\"'",
               f'cluster.srun_args=["--comment=$(touch {marker})", "--x=`touch {marker}`"]']
    cluster = cfg.load_cluster("ci", [o.removeprefix("cluster.") for o in hostile])
    run_dir = tmp_path / "run $(touch X) ;&| touch Y"
    experiment, _ = layout.load_experiment("tiny_demo", ["name=bnd", *world["base"]], cluster)
    graph = planner.plan(experiment, cluster, run_dir)
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    for j in graph.jobs:
        (scripts / f"{j.stage}.submitit.sh").write_text(
            sbatch_text(j, cluster, run_dir, experiment.name, ["1" for _ in j.deps]))
    emit = tmp_path / "emit $(touch Z)"
    submit_sh = backends.for_cluster(cluster, run_dir, experiment.name).emit_scripts(graph,
                                                                              emit)
    shims = tmp_path / "shims"
    shims.mkdir()
    log = tmp_path / "shim.log"
    for name in ("srun", "sbatch", "python", Path(sys.executable).name):
        shim = shims / name
        shim.write_text(f'#!/bin/sh\nprintf "%s\\n" "{name} $*" >> "{log}"\necho 1\n')
        shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
    env = {"PATH": f"{shims}:/usr/bin:/bin", "HOME": str(tmp_path)}
    bodies = sorted(scripts.glob("*.sh")) + sorted(emit.glob("*.sbatch"))
    assert len(bodies) == 2 * len(graph.jobs)
    for script in [*bodies, submit_sh]:
        text = script.read_text()
        # the absolute python of the render is replaced by the shim (nothing real may start)
        text = text.replace(sys.executable, "python")
        copy = tmp_path / "exec.sh"
        copy.write_text(text)
        res = subprocess.run(["bash", str(copy)], cwd=emit if script == submit_sh else tmp_path,
                             env=env, capture_output=True, text=True, timeout=30)
        assert res.returncode == 0, (script, res.stderr)
    calls = log.read_text()
    assert calls.count("srun ") == 2 * len(graph.jobs) and calls.count("sbatch ") == len(graph.jobs)
    assert "--comment=$(touch" in calls  # reached srun as literal text
    assert not marker_path.exists()
    assert not any(tmp_path.glob("X")) and not (emit / "Z").exists()
    assert not any(p.name in ("X", "Y", "Z") for p in tmp_path.rglob("*"))


# ---------------------------------------------------------------- run directory, status, report
GOOD_GROUP = {"acc": 0.5, "acc_stderr": 0.01, "n": 100}
GROUP_KEYS = ("mmlu", "mmlu_humanities", "mmlu_other", "mmlu_social_sciences", "mmlu_stem")


def results(**groups) -> dict:
    g = {k: dict(GOOD_GROUP) for k in GROUP_KEYS}
    g.update(groups)
    return {"schema": "kdlaunch.results/v1", "source": "kdlaunch", "role": None, "model": "m",
            "settings": {}, "groups": g}


MANIFESTS = {  # name -> bytes written as RUN/manifest.json, expected message part
    "corrupt": (b"{not json", "not valid JSON"),
    "truncated": (b'{"kdlaunch_manifest": 1, "stages": {"distill": {"job_', "not valid JSON"),
    "foreign": (b'{"name": "someone else"}', "not a kdlaunch manifest"),
    "future-version": (json.dumps({"kdlaunch_manifest": 99, "stages": {}, "launches": [],
                                   "experiment": {}}).encode(), "newer kdlaunch"),
    "list": (b"[1, 2]", "not a kdlaunch manifest"),
    "stages-not-dict": (json.dumps({"kdlaunch_manifest": 1, "stages": [], "launches": [],
                                    "experiment": {}}).encode(), "'stages'"),
    "not-utf8": (b'{"kdlaunch_manifest": 1, "x": "\xff\xfe"}', "not valid JSON"),
    "bad-job-id": (json.dumps({"kdlaunch_manifest": 1, "launches": [], "experiment": {},
                               "stages": {"distill": {"job_id": ["1"]}}}).encode(), "job_id"),
}


@pytest.mark.parametrize("kind", sorted(MANIFESTS))
def test_launch_into_bad_manifest(world, capsys, kind):
    data, message = MANIFESTS[kind]
    run = world["work"] / "run"
    run.mkdir()
    (run / "manifest.json").write_bytes(data)
    before = snapshot(world["tmp"])
    code, out, err = run_cli(distill_cli.main, ["--cluster", "ci", "--config", "tiny_demo",
                                                "--run-dir", str(run), "name=bnd",
                                                *world["base"]], capsys)
    assert code == 2 and message in err and "manifest.json" in err, err
    assert "Traceback" not in err and not world["queued"]
    assert snapshot(world["tmp"]) == before
    assert (run / "manifest.json").read_bytes() == data  # never overwritten


@pytest.mark.parametrize("cmd", [[], ["--cancel"], ["--logs", "distill"]],
                         ids=["status", "cancel", "logs"])
@pytest.mark.parametrize("kind", ["corrupt", "truncated", "foreign", "future-version"])
def test_status_on_bad_manifest(tmp_path, capsys, monkeypatch, kind, cmd):
    data, message = MANIFESTS[kind]
    (tmp_path / "manifest.json").write_bytes(data)
    called = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: called.append(a))  # no scancel
    code, out, err = run_cli(status_cli.main, [str(tmp_path), *cmd], capsys)
    if cmd and cmd[0] == "--logs" and code == 0:
        pytest.fail(f"--logs read a bad manifest: {out}")
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not called


@pytest.mark.parametrize("setup, message", [
    ("file", "is a file"), ("empty", "empty"), ("no-manifest", "no manifest.json"),
    ("unknown-stage", "--logs 'nosuch': no such stage")])
def test_status_bad_run_dir(tmp_path, capsys, setup, message):
    target = {"file": tmp_path / "f", "empty": "", "no-manifest": tmp_path,
              "unknown-stage": tmp_path}[setup]
    extra = []
    if setup == "file":
        target.write_text("x")
    if setup == "unknown-stage":
        (tmp_path / "manifest.json").write_text(json.dumps(
            {"kdlaunch_manifest": 1, "stages": {"distill": {}}, "launches": [],
             "experiment": {}, "cluster": {"executor": "local"}}))
        extra = ["--logs", "nosuch"]
    code, out, err = run_cli(status_cli.main, [str(target), *extra], capsys)
    assert code == 2 and message in err, err


@pytest.mark.parametrize("run_dir, message", [
    ("", "--run-dir: empty"), ("  ", "--run-dir: empty"),
    ("afile", "is a file"), ("afile/run", "is a file"),
])
def test_bad_run_dir(world, capsys, run_dir, message):
    (world["work"] / "afile").write_text("keep me")
    before = snapshot(world["tmp"])
    code, out, err = run_cli(distill_cli.main, ["--cluster", "ci", "--config", "tiny_demo",
                                                "--run-dir", run_dir, "name=bnd",
                                                *world["base"]], capsys)
    assert code == 2 and message in err and "nothing was queued." in err, err
    assert snapshot(world["tmp"]) == before and not world["queued"]
    assert (world["work"] / "afile").read_text() == "keep me"


@pytest.mark.parametrize("flag", ["--config", "--cluster"])
def test_config_not_utf8(world, capsys, flag):
    bad = world["tmp"] / "bad.yaml"
    bad.write_bytes(b"name: \xff\xfe\n")
    argv = {"--config": ["--cluster", "ci", "--config", str(bad)],
            "--cluster": ["--cluster", str(bad), "--config", "tiny_demo"]}[flag]
    code, out, err = run_cli(distill_cli.main, [*argv, "--run-dir", "run", *world["base"]],
                             capsys)
    assert code == 2 and "UTF-8" in err and str(bad) in err, err
    assert not world["queued"] and not (world["work"] / "run").exists()


def _bad_results():
    nan, inf = math.nan, math.inf
    return {
        "no-groups": ({"schema": "kdlaunch.results/v1", "results": {}}, "groups"),
        "groups-missing-stem": (
            {**results(), "groups": {k: GOOD_GROUP for k in GROUP_KEYS[:-1]}}, "mmlu_stem"),
        "acc-nan": (results(mmlu={**GOOD_GROUP, "acc": nan}), "groups.mmlu.acc"),
        "acc-inf": (results(mmlu_stem={**GOOD_GROUP, "acc": inf}), "groups.mmlu_stem.acc"),
        "acc-string": (results(mmlu={**GOOD_GROUP, "acc": "high"}), "groups.mmlu.acc"),
        "acc-null": (results(mmlu={**GOOD_GROUP, "acc": None}), "groups.mmlu.acc"),
        "acc-bool": (results(mmlu={**GOOD_GROUP, "acc": True}), "groups.mmlu.acc"),
        "acc-above-one": (results(mmlu={**GOOD_GROUP, "acc": 68.4}), "[0, 1]"),
        "stderr-nan": (results(mmlu={**GOOD_GROUP, "acc_stderr": nan}),
                       "groups.mmlu.acc_stderr"),
        "group-not-mapping": (results(mmlu=0.5), "groups.mmlu"),
        "lm-eval-acc-na": ({"results": {k: {"acc,none": "N/A"} for k in GROUP_KEYS}},
                           "groups.mmlu.acc"),
        "json-list": ([1, 2], "neither"),
    }


BAD_RESULTS = _bad_results()


@pytest.mark.parametrize("kind", sorted(BAD_RESULTS))
def test_report_refuses_bad_results(tmp_path, capsys, kind):
    data, message = BAD_RESULTS[kind]
    good = tmp_path / "good.json"
    good.write_text(json.dumps(results()))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))  # NaN/Infinity written as JSON's non-standard literals
    out_dir = tmp_path / "out"
    code, out, err = run_cli(report_cli.main, ["--before", str(good), "--after", str(bad),
                                               "--teacher", str(good), "--out", str(out_dir)],
                             capsys)
    assert code == 2 and message in err and str(bad) in err, err
    assert "Verdict" not in out and "nan" not in out
    assert not out_dir.exists()


@pytest.mark.parametrize("kind, message", [
    ("out-is-file", "is a file"), ("out-under-file", "cannot create"),
    ("results-not-json", "not valid JSON"), ("results-missing", "does not exist"),
    ("results-not-utf8", "not valid JSON"), ("results-is-dir", "does not exist"),
])
def test_report_bad_files(tmp_path, capsys, kind, message):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(results()))
    after, out_dir = good, tmp_path / "out"
    if kind == "out-is-file":
        out_dir.write_text("keep")
    elif kind == "out-under-file":
        (tmp_path / "f").write_text("keep")
        out_dir = tmp_path / "f" / "out"
    elif kind == "results-not-json":
        after = tmp_path / "a.json"
        after.write_text('{"schema": "kdlaunch.results/v1", "groups": {')
    elif kind == "results-missing":
        after = tmp_path / "missing.json"
    elif kind == "results-not-utf8":
        after = tmp_path / "a.json"
        after.write_bytes(b'{"groups": "\xff"}')
    elif kind == "results-is-dir":
        after = tmp_path / "d"
        after.mkdir()
    code, out, err = run_cli(report_cli.main, ["--before", str(good), "--after", str(after),
                                               "--teacher", str(good), "--out", str(out_dir)],
                             capsys)
    assert code == 2 and message in err and "Traceback" not in err, err


def test_report_verdict_never_from_nan():
    from kd import report

    with pytest.raises(ValueError, match="not a finite number"):
        report.verdict(results(mmlu={**GOOD_GROUP, "acc": math.nan}), results())


# ---------------------------------------------------------------- sweeps
def _sweep_cases():
    return {
        "name-dotdot": ("name: ../x\nbase: tiny_demo\ngrid: {lr: {a: [train.lr=1e-3]}}\n",
                        [], "name="),
        "name-newline": ('name: "a\\ntouch {M}"\nbase: tiny_demo\n'
                         "grid: {lr: {a: [train.lr=1e-3]}}\n", [], "name="),
        "grid-value-newline": ('name: s\nbase: tiny_demo\ngrid: {lr: {"a\\n$(touch {M})": '
                               "[train.lr=1e-3]}}\n", [], "grid.lr value name"),
        "not-a-mapping": ("- a\n- b\n", [], "mapping"),
        "not-utf8": (b"name: \xff\xfe\n", [], "UTF-8"),
        "is-directory": (None, [], "sweep"),
        "partition-newline": ("name: s\nbase: tiny_demo\ncluster: ci\n"
                              "overrides: {BASE}\ngrid: {lr: {a: [train.lr=1e-3]}}\n",
                              ['partition="debug\\ntouch {M}"'], "cluster.partition"),
        "secret-in-cluster-override": ("name: s\nbase: tiny_demo\ncluster: ci\n"
                                       "overrides: {BASE}\ngrid: {lr: {a: [train.lr=1e-3]}}\n",
                                       [f'setup=["export HF_TOKEN={HF}"]'], "cluster.setup[0]"),
        "member-cluster-override": ("name: s\nbase: tiny_demo\n"
                                    "grid: {lr: {a: [cluster.partition=x]}}\n", [],
                                    "cluster_overrides"),
        "alarm-negative": ("name: s\nbase: tiny_demo\nalarm: {z: -1}\n"
                           "grid: {lr: {a: [train.lr=1e-3]}}\n", [], "alarm.z"),
        "empty-grid": ("name: s\nbase: tiny_demo\ngrid: {lr: {}}\n", [], "grid.lr"),
        "unknown-key": ("name: s\nbase: tiny_demo\ngird: {}\n", [], "gird"),
        "root-comma-container": ("name: s\nbase: tiny_demo\ncluster: ci\nroot: 'r,/etc:/x'\n"
                                 "overrides: {BASE}\ngrid: {lr: {a: [train.lr=1e-3]}}\n",
                                 [IMAGE.removeprefix("cluster.")], "--run-dir"),
    }


SWEEPS = {k: v for k, v in _sweep_cases().items() if not k.startswith("_")}


@pytest.mark.parametrize("kind", sorted(SWEEPS))
def test_bad_sweep_files(world, capsys, kind):
    text, cluster_over, message = SWEEPS[kind]
    marker, marker_path = pwn("sweep")
    path = world["tmp"] / "sweep.yaml"
    if text is None:
        path.mkdir()
    elif isinstance(text, bytes):
        path.write_bytes(text)
    else:
        base = "[" + ", ".join(json.dumps(o) for o in world["base"]) + "]"
        path.write_text(text.replace("{M}", marker).replace("{BASE}", base))
    cluster_over = [c.replace("{M}", marker) for c in cluster_over]
    before = snapshot(world["tmp"])
    code, out, err = run_cli(sweep_cli.main, [str(path), *cluster_over, "--cluster", "ci",
                                              "--dry-run"], capsys)
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not world["queued"] and not marker_path.exists()
    assert snapshot(world["tmp"]) == before


# ---------------------------------------------------------------- concurrent launch, real SLURM
@pytest.mark.slurm
def test_concurrent_launches_queue_one_job_set(slurm_cluster, demo_assets, tmp_path):
    """Two launches into one run directory at the same moment: exactly one set of jobs."""
    from tests.conftest import asset_overrides

    run_dir = tmp_path / "run"
    name = f"conc{uuid.uuid4().hex[:6]}"
    argv = [sys.executable, str(REPO / "launch" / "distill.py"), "--cluster", "ci", "--config",
            "tiny_demo", "--run-dir", str(run_dir), f"name={name}",
            *asset_overrides(demo_assets), "cluster.time_min=5", "train.micro_batch_size=8",
            "cluster.additional_parameters={begin: now+600}"]  # held: nothing runs on the nodes
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    results_: list = [None, None]

    def go(i):
        results_[i] = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True,
                                     timeout=240)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    ids = [str(r["job_id"]) for r in manifest["stages"].values() if r.get("job_id")]
    try:
        queued = subprocess.run(["squeue", "-h", "-n", ",".join(
            f"kd-{name}-{s}" for s in manifest["stages"]), "-o", "%i"],
            capture_output=True, text=True, timeout=30).stdout.split()
        assert all(r.returncode == 0 for r in results_), [r.stdout + r.stderr for r in results_]
        assert len(ids) == len(manifest["stages"]) == len(set(ids))
        assert sorted(queued) == sorted(ids), (queued, ids)  # no orphans
        launches = manifest["launches"]
        assert len(launches) == 2
        assert sorted(len(x["submitted"]) for x in launches) == [0, len(ids)]
        assert sorted(len(x["adopted"]) for x in launches) == [0, len(ids)]
    finally:
        all_ids = set(ids)
        for r in results_:
            if r is not None:  # only ids these launches printed as theirs
                all_ids |= set(re.findall(r"submitted job (\d+)", r.stdout))
        if all_ids:
            subprocess.run(["scancel", *sorted(all_ids)], capture_output=True, timeout=30)


@pytest.mark.slurm
def test_submission_failing_midway_cancels_what_it_queued(slurm_cluster, demo_assets, tmp_path):
    """sbatch refuses the second job (pre-flight now catches what the cluster would refuse, so
    the refusal comes from a wrapper around the real sbatch): the prepare_data job this launch
    had really queued is cancelled, and the manifest says so."""
    import shutil

    from tests.conftest import asset_overrides

    shims = tmp_path / "shims"
    shims.mkdir()
    count = tmp_path / "count"
    shim = shims / "sbatch"
    shim.write_text(f"""#!/bin/sh
n=$(cat {count} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {count}
if [ $n -ge 2 ]; then
  echo "sbatch: error: Batch job submission failed: Requested node configuration is not available" >&2
  exit 1
fi
exec {shutil.which("sbatch")} "$@"
""")
    shim.chmod(0o755)
    run_dir = tmp_path / "run"
    name = f"mid{uuid.uuid4().hex[:6]}"
    res = subprocess.run(
        [sys.executable, str(REPO / "launch" / "distill.py"), "--cluster", "ci", "--config",
         "tiny_demo", "--run-dir", str(run_dir), f"name={name}", *asset_overrides(demo_assets),
         "train.micro_batch_size=8", "cluster.additional_parameters={begin: now+600}"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO),
                       "PATH": f"{shims}:{os.environ['PATH']}"},
        capture_output=True, text=True, timeout=240)
    ids = re.findall(r"submitted job (\d+)", res.stdout)
    try:
        assert res.returncode == 1, res.stdout + res.stderr
        assert "distill" in res.stdout and "sbatch refused it" in res.stdout
        manifest = json.loads((run_dir / "manifest.json").read_text())
        launch = manifest["launches"][-1]
        assert launch["failed_stage"] == "distill" and launch["cancelled"] == ids and ids
        assert manifest["stages"]["prepare_data"]["state"] == "CANCELLED"
        assert manifest["stages"]["distill"]["state"] == "NOT_SUBMITTED"
        queued = subprocess.run(["squeue", "-h", "-t", "PD,R", "-o", "%i", "-j", ",".join(ids)],
                                capture_output=True, text=True, timeout=30).stdout.split()
        assert not queued, queued
    finally:
        if ids:
            subprocess.run(["scancel", *ids], capture_output=True, timeout=30)


@pytest.mark.slurm
@pytest.mark.parametrize("override, message", [
    ("cluster.partition=nosuchpartition", "cluster.partition='nosuchpartition': no such partition"),
    ("cluster.mem_gb=100000", "cluster.mem_gb=100000"),
    ("cluster.stages.mem_gb=4096", "cluster.stages.mem_gb=4096"),
    ("cluster.gpus_per_node=1", "gpus_per_node=1"),
], ids=["no-such-partition", "distill-memory-over-any-node", "eval-memory-over-any-node",
        "gpus-on-a-cpu-cluster"])
def test_live_preflight_refuses_what_sbatch_would(slurm_cluster, world, capsys, override, message):
    code, out, err = run_cli(distill_cli.main, ["--cluster", "ci", "--config", "tiny_demo",
                                                "--run-dir", "run", "name=bnd", *world["base"],
                                                override], capsys)
    assert code == 2 and message in err and "nothing was queued." in err, out + err
    assert not world["queued"] and not (world["work"] / "run").exists()


@pytest.mark.parametrize("value", [HF, "https://u:pw@host/x", "AccountKey=abc=="],
                         ids=["token", "url-password", "connection-string"])
def test_manifest_never_holds_a_secret(tmp_path, value):
    """The last gate: manifest.write refuses a secret anywhere in the tree, naming the path."""
    from launch import manifest as mf
    from launch.shell import UnsafeValue

    data = mf.new(tmp_path, {"name": "x", "extra": {"notes": [value]}}, {"name": "ci"})
    with pytest.raises(UnsafeValue, match=r"manifest\.experiment\.extra\.notes\[0\]"):
        mf.write(tmp_path / "manifest.json", data)
    assert not (tmp_path / "manifest.json").exists()


# ---------------------------------------------------------------- live pre-flight: accounting
_REAL_SUBMIT = (submit.launch, submit._submit_graph)


def _live_refusal(world, capsys, monkeypatch, *overrides: str) -> tuple[int, str]:
    """Launch tiny_demo on ci with the REAL submission path; return (code, stderr) and what
    squeue shows for this run's job names (must be nothing)."""
    monkeypatch.setattr(submit, "launch", _REAL_SUBMIT[0])
    monkeypatch.setattr(submit, "_submit_graph", _REAL_SUBMIT[1])
    tag = f"acct{uuid.uuid4().hex[:8]}"
    try:
        code, out, err = run_cli(distill_cli.main, ["--cluster", "ci", "--config", "tiny_demo",
                                                    "--run-dir", tag, f"name={tag}",
                                                    *world["base"], *overrides], capsys)
    finally:
        names = subprocess.run(["squeue", "-h", "-o", "%i %j"], capture_output=True, text=True,
                               timeout=30).stdout.splitlines()
        mine = [line.split()[0] for line in names if tag in line]
        if mine:  # a regression queued our own jobs: cancel exactly those
            subprocess.run(["scancel", *mine], capture_output=True, timeout=30)
    assert not mine, f"queued despite the refusal: {mine}\n{out}{err}"
    assert not (world["work"] / tag).exists()
    return code, out + err


@pytest.mark.slurm
@pytest.mark.parametrize("override, message", [
    ("cluster.account=kd_no_such_account", "cluster.account='kd_no_such_account': user "),
    ("cluster.qos=kd_no_such_qos", "cluster.qos='kd_no_such_qos': no such QOS"),
], ids=["account-not-associated", "qos-does-not-exist"])
def test_live_accounting_refuses_before_queueing(slurm_cluster, world, capsys, monkeypatch,
                                                 override, message):
    code, text = _live_refusal(world, capsys, monkeypatch, override)
    assert code == 2 and message in text and "nothing was queued." in text, text


@pytest.mark.slurm
def test_live_qos_not_allowed_and_max_wall(slurm_cluster, world, capsys, monkeypatch):
    """A QOS that only this test creates, then deletes: refused while the user
    may not use it; once allowed (MaxWall 25 min), a stage time above its MaxWall is refused naming the field."""
    qos = f"kdtest{uuid.uuid4().hex[:8]}"
    user = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()

    def sacctmgr(*args: str) -> None:
        proc = subprocess.run(["sacctmgr", "-i", *args], capture_output=True, text=True,
                              timeout=30)
        assert proc.returncode == 0, proc.stdout + proc.stderr

    sacctmgr("add", "qos", qos, "MaxWall=00:25:00")
    try:
        code, text = _live_refusal(world, capsys, monkeypatch, f"cluster.qos={qos}")
        assert code == 2 and f"cluster.qos='{qos}' is not allowed for user {user}" in text, text
        sacctmgr("modify", "user", user, "set", f"qos+={qos}")
        code, text = _live_refusal(world, capsys, monkeypatch, f"cluster.qos={qos}",
                                   "cluster.time_min=28")
        assert code == 2 and "cluster.time_min=28 min is over QOS" in text, text
        assert "MaxWall of 25 min" in text
    finally:
        subprocess.run(["sacctmgr", "-i", "modify", "user", user, "set", f"qos-={qos}"],
                       capture_output=True, timeout=30)
        subprocess.run(["sacctmgr", "-i", "delete", "qos", qos], capture_output=True, timeout=30)


FAKE_SCONTROL = """#!/bin/sh
case "$1 $2" in
  "ping "*) echo "Slurmctld(primary) at fake is UP" ;;
  "show partition") echo "PartitionName=short AllowAccounts=ALL AllowQos=ALL Default=YES MaxNodes=UNLIMITED MaxTime=00:40:00 State=UP" ;;
  "show node") for n in 1 2; do echo "NodeName=f$n CPUTot=4 RealMemory=4000 Gres=(null) Partitions=short State=IDLE"; done ;;
  "show config") echo "ClusterName              = fake" ;;
  *) exit 1 ;;
esac
"""
FAKE_SACCTMGR = """#!/bin/sh
case "$4" in
  assoc) echo "acct_a||normal,slow|normal" ;;
  user) echo "acct_a" ;;
  qos) printf 'normal|\\nslow|00:25:00\\n' ;;
  *) exit 1 ;;
esac
"""


@pytest.mark.parametrize("overrides, message", [
    (["cluster.time_min=50"], "stage distill: cluster.time_min=50 min is over partition short's "
                              "MaxTime of 40 min"),
    (["cluster.stages.eval_min=45"], "cluster.stages.eval_min=45 min is over partition short's "
                                     "MaxTime"),
    (["cluster.time_min=28", "cluster.qos=slow"], "cluster.time_min=28 min is over QOS slow's "
                                                  "MaxWall of 25 min"),
    (["cluster.account=acct_b"], "cluster.account='acct_b': user "),
    (["cluster.qos=fast"], "cluster.qos='fast': no such QOS"),
], ids=["distill-over-partition-maxtime", "eval-over-partition-maxtime", "over-qos-maxwall",
        "account-not-associated", "no-such-qos"])
def test_preflight_reads_partition_and_qos_limits(world, capsys, monkeypatch, tmp_path,
                                                  overrides, message):
    """Limits the shared test cluster does not set (its partitions have MaxTime=UNLIMITED),
    read through fake scontrol/sacctmgr on PATH: the parsing and the refusal, before queueing."""
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    for name, text in (("scontrol", FAKE_SCONTROL), ("sacctmgr", FAKE_SACCTMGR)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    for var in ("SBATCH_ACCOUNT", "SBATCH_QOS", "SBATCH_PARTITION"):
        monkeypatch.delenv(var, raising=False)
    code, out, err = run_cli(distill_cli.main, ["--cluster", "ci", "--config", "tiny_demo",
                                                "--run-dir", "run", "name=bnd", *world["base"],
                                                "cluster.partition=short", "cluster.signal_delay_s=30",
                                                *overrides], capsys)
    assert code == 2 and message in err and "nothing was queued." in err, out + err
    assert not world["queued"] and not (world["work"] / "run").exists()
