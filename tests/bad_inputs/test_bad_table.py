"""Bad input across every category in one table (issue 13), complementing test_bad_config.py
(config values) and test_bad_boundary.py (scripts, files, live cluster): every case ends in exit 2
and one message that names the offending field or file, with no traceback, nothing queued,
nothing written outside the run directory and no trace of an injected command.

The CLIs run in-process (their ``main(argv)``) against the demo assets of the fixture cache;
``launch.submit.launch`` is replaced by a tripwire, so a case that slipped through validation
fails loudly instead of running the pipeline. ``test_bad_boundary.py`` holds the rest of the
table (scripts executed under no-op srun/sbatch, the run-dir lock, the live cluster checks).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PWNED = Path("/tmp") / f"kd-pwned-{uuid.uuid4().hex[:8]}"  # no case may create it
INJECT = f"touch {PWNED}"


@dataclass(frozen=True)
class Case:
    id: str
    category: str
    named: str  # must appear in the message
    overrides: tuple[str, ...] = ()
    yaml: str | None = None  # experiment file text (replaces --config tiny_demo)
    cluster_yaml: str | None = None  # cluster profile text (replaces --cluster local)
    args: tuple[str, ...] = ()  # extra CLI arguments (may use {tmp})
    setup: str | None = None  # name of a setup function below
    cli: str = "distill"  # distill | status | report | sweep
    dry_run: bool = True
    extra: dict = field(default_factory=dict)


def C(id, category, named, *overrides, **kw):  # noqa: N802  (a table row)
    return Case(id, category, named, tuple(overrides), **kw)


DEMO_YAML = (REPO / "configs" / "experiments" / "tiny_demo.yaml").read_text()
CI_YAML = (REPO / "configs" / "clusters" / "ci.yaml").read_text()
LOCAL_YAML = (REPO / "configs" / "clusters" / "local.yaml").read_text()

def ci_with(key: str, value: str) -> str:
    """The ci profile with ``key: value`` (replacing the key's line where it has one)."""
    lines = [ln for ln in CI_YAML.splitlines() if not ln.startswith(f"{key}:")]
    return "\n".join(lines) + f"\n{key}: {value}\n"


YAML = "YAML form"
TYPES = "types and ranges"
PATHS = "paths"
LAYOUT = "layout and model consistency"
CLUSTER = "the cluster profile"
INJECTION = "injection and secrets"
FILES = "run directory, status and report files"
SWEEPS = "sweeps"

BOMB = "name: bomb\n" + "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 7))

CASES = [
    # ---------------------------------------------------------------- YAML form
    C("dup-top-key", YAML, "duplicate key 'name'", yaml=DEMO_YAML + "\nname: other\n"),
    C("second-train", YAML, "duplicate key 'train'", yaml=DEMO_YAML + "\ntrain:\n  lr: 1.0\n"),
    C("dup-nested-key", YAML, "duplicate key 'lr'",
      yaml=DEMO_YAML.replace("  lr: 3.0e-3\n", "  lr: 3.0e-3\n  lr: 1.0\n")),
    C("alias-bomb", YAML, "aliases", yaml=BOMB),
    C("non-utf8", YAML, "not UTF-8", yaml="name: caf\udcff\n"),
    C("oversize", YAML, "bytes", yaml=DEMO_YAML + "#" + "x" * (1 << 20) + "\n"),
    C("top-level-list", YAML, "mapping", yaml="- name: x\n"),
    C("empty-file", YAML, "mapping", yaml=""),
    C("syntax-error", YAML, "not valid YAML", yaml="name: [unclosed\n"),
    C("tab-indent", YAML, "not valid YAML", yaml="name: x\ntrain:\n\tlr: 1\n"),
    C("unknown-top-key", YAML, "trian", yaml=DEMO_YAML + "\ntrian:\n  lr: 1\n"),
    C("unknown-nested-override", YAML, "train.lrr", "train.lrr=1"),
    C("scalar-for-section", YAML, "train", "train=5"),
    C("override-not-key-value", YAML, "not key=value", "train.lr"),
    C("override-empty-key", YAML, "empty key", ".lr=1"),
    C("cluster-dup-key", YAML, "duplicate key", cluster_yaml=LOCAL_YAML + "\nname: again\n"),
    C("cluster-non-utf8", YAML, "not UTF-8", cluster_yaml="name: \udcff\n"),
    # ---------------------------------------------------------------- types and ranges
    *[C(f"nonfinite-{k}-{v}", TYPES, k, f"{k}={v}")
      for k in ("train.lr", "train.min_lr", "kd.logit_kl_temperature")
      for v in (".nan", ".inf", "-.inf")],
    C("lr-not-a-number", TYPES, "train.lr", "train.lr=fast"),
    C("iters-negative", TYPES, "train.train_iters", "train.train_iters=-1"),
    C("iters-zero", TYPES, "train.train_iters", "train.train_iters=0"),
    C("gbs-zero", TYPES, "train.global_batch_size", "train.global_batch_size=0"),
    C("seq-zero", TYPES, "train.seq_length", "train.seq_length=0"),
    C("tp-word", TYPES, "train.tp", "train.tp=two"),
    C("tp-zero", TYPES, "train.tp", "train.tp=0"),
    C("pp-negative", TYPES, "train.pp", "train.pp=-1"),
    C("mbs-zero", TYPES, "train.micro_batch_size", "train.micro_batch_size=0"),
    C("gbs-indivisible", TYPES, "train.global_batch_size", "train.global_batch_size=15",
      "train.micro_batch_size=2"),
    C("precision", TYPES, "train.precision", "train.precision=fp8"),
    C("recompute", TYPES, "train.recompute", "train.recompute=sometimes"),
    C("iters-float", TYPES, "train.train_iters", "train.train_iters=1.5"),
    C("iters-bool", TYPES, "train.train_iters", "train.train_iters=true"),
    C("eval-tasks-list-type", TYPES, "eval.tasks", "eval.tasks=5"),
    # ---------------------------------------------------------------- paths
    C("student-missing", PATHS, "student.path", "student.path=/nonexistent/student"),
    C("teacher-missing", PATHS, "teacher.path", "teacher.path=/nonexistent/teacher"),
    C("jsonl-missing", PATHS, "jsonl", "data.sources=[{name: s, jsonl: /nonexistent/c.jsonl}]"),
    C("include-path-missing", PATHS, "eval.include_path", "eval.include_path=/nonexistent/tasks"),
    C("name-dotdot", PATHS, "name", "name=../escape", args=("--run-dir=",)),
    C("name-slash", PATHS, "name", "name=a/b"),
    C("name-empty", PATHS, "name", "name="),
    C("name-hidden", PATHS, "name", "name=.hidden"),
    C("name-dash", PATHS, "name", "name=-rf"),
    C("run-dir-empty", PATHS, "--run-dir: empty", args=("--run-dir=",)),
    C("run-dir-blank", PATHS, "--run-dir: empty", args=("--run-dir= ",)),
    C("run-dir-file", PATHS, "is a file", args=("--run-dir={tmp}/afile",), setup="make_file"),
    C("run-dir-under-file", PATHS, "--run-dir", args=("--run-dir={tmp}/afile/run",),
      setup="make_file"),
    C("emit-dir-file", PATHS, "--emit-sbatch", args=("--emit-sbatch={tmp}/afile",),
      setup="make_file", dry_run=False),
    C("config-missing", PATHS, "nope", args=("--config=/nonexistent/nope.yaml",)),
    C("cluster-missing", PATHS, "nope", args=("--cluster=nope",)),
    # ---------------------------------------------------------------- layout and model
    C("student-config-invalid", LAYOUT, "config.json", setup="student_bad_json"),
    C("student-config-no-heads", LAYOUT, "num_attention_heads", setup="student_no_heads"),
    C("student-no-config", LAYOUT, "student.path", setup="student_no_config"),
    C("tp-indivisible-heads", LAYOUT, "train.tp", "train.tp=3"),
    C("pp-indivisible-layers", LAYOUT, "train.pp", "train.pp=3"),
    C("tp-over-gpus", LAYOUT, "train.tp", "train.tp=16"),
    C("export-iteration-beyond", LAYOUT, "export.iteration", "export.iteration=100000"),
    # ---------------------------------------------------------------- the cluster profile
    C("mem-negative", CLUSTER, "cluster.stages.mem_gb", "cluster.stages.mem_gb=-1"),
    C("mem-negative-distill", CLUSTER, "cluster.mem_gb", "cluster.mem_gb=-1"),
    C("stage-time-negative", CLUSTER, "cluster.stages.eval_min", "cluster.stages.eval_min=-5"),
    C("eval-batch-zero", TYPES, "eval.batch_size", "eval.batch_size=0"),
    C("eval-tasks-empty", TYPES, "eval.tasks", "eval.tasks=[]"),
    C("export-iteration-off-boundary", LAYOUT, "export.iteration", "export.iteration=7"),
    C("time-zero", CLUSTER, "cluster.time_min", "cluster.time_min=0"),
    C("nodes-zero", CLUSTER, "cluster.nodes", "cluster.nodes=0"),
    C("executor-unknown", CLUSTER, "cluster.executor", "cluster.executor=pbs"),
    C("signal-delay-negative", CLUSTER, "cluster.signal_delay_s", "cluster.signal_delay_s=-1"),
    C("gpus-negative", CLUSTER, "cluster.gpus_per_node", "cluster.gpus_per_node=-1"),
    C("requeues-negative", CLUSTER, "cluster.max_requeues", "cluster.max_requeues=-2"),
    C("local-two-nodes", CLUSTER, "cluster.nodes", "cluster.nodes=2"),
    C("unknown-cluster-key", CLUSTER, "cluster.partitoin", "cluster.partitoin=x"),
    C("signal-over-limit", CLUSTER, "cluster.signal_delay_s", "cluster.signal_delay_s=100000"),
    C("env-bad-name", CLUSTER, "cluster.env", "cluster.env={1BAD: x}"),
    C("mount-no-colon", CLUSTER, "cluster.container.mounts",
      "cluster.container.mounts=[/only/one]"),
    # ---------------------------------------------------------------- injection and secrets
    *[C(f"newline-in-{k}", INJECTION, f"cluster.{k}", cluster_yaml=ci_with(k, f'"x\\n{INJECT}"'))
      for k in ("partition", "account", "qos")],
    C("newline-in-setup", INJECTION, "cluster.setup[0]",
      cluster_yaml=ci_with("setup", f'["echo hi\\n{INJECT}"]')),
    C("newline-in-srun-arg", INJECTION, "cluster.srun_args[0]",
      cluster_yaml=ci_with("srun_args", f'["--x\\n{INJECT}"]')),
    C("newline-in-extra-param", INJECTION, "cluster.additional_parameters.comment",
      cluster_yaml=ci_with("additional_parameters", f'{{comment: "a\\n{INJECT}"}}')),
    C("newline-in-env-value", INJECTION, "cluster.env.FOO",
      cluster_yaml=CI_YAML.replace("env:\n", f'env:\n  FOO: "a\\n{INJECT}"\n')),
    C("newline-in-python", INJECTION, "cluster.python",
      cluster_yaml=ci_with("python", f'"python3\\n{INJECT}"')),
    C("newline-in-name", INJECTION, "name", yaml=DEMO_YAML.replace(
        "name: tiny_demo", f'name: "demo\\n{INJECT}"')),
    C("newline-in-run-dir", INJECTION, "newline", args=(f"--run-dir={{tmp}}/r\n{INJECT}",)),
    C("newline-in-emit-dir", INJECTION, "newline", args=(f"--emit-sbatch={{tmp}}/e\n{INJECT}",),
      dry_run=False),
    C("cr-in-partition", INJECTION, "cluster.partition",
      cluster_yaml=ci_with("partition", '"debug\\rx"')),
    C("nul-in-account", INJECTION, "cluster.account", cluster_yaml=ci_with("account", '"a\\0b"')),
    C("esc-in-qos", INJECTION, "cluster.qos", cluster_yaml=ci_with("qos", '"a\\eb"')),
    C("del-in-partition", INJECTION, "control character",
      cluster_yaml=ci_with("partition", '"a\\x7fb"')),
    C("newline-in-override", INJECTION, "newline", f"cluster.partition=x\n{INJECT}"),
    C("newline-in-source-name", INJECTION, "data.sources[0].name",
      f'data.sources=[{{name: "a\\n{INJECT}", jsonl: x.jsonl}}]'),
    C("secret-key-env", INJECTION, "cluster.env.HF_TOKEN", "cluster.env={HF_TOKEN: abc}"),
    C("secret-export-setup", INJECTION, "cluster.setup",
      "cluster.setup=[export HF_TOKEN=abc123]"),
    C("secret-hf-token-value", INJECTION, "Hugging Face token",
      "cluster.env={MY_VAR: hf_AbCdEfGhIjKlMnOpQrStUvWxYz012345}"),
    C("secret-srun-export", INJECTION, "cluster.srun_args",
      "cluster.srun_args=[--export=ALL,HF_TOKEN=abc]"),
    C("secret-url-password", INJECTION, "password in a URL",
      "eval.include_path=https://user:hunter2@host/tasks"),
    C("secret-connection-string", INJECTION, "connection string",
      "cluster.additional_parameters={comment: 'DefaultEndpointsProtocol=https;AccountName=a;"
      "AccountKey=abcd=='}"),
    C("secret-github-token", INJECTION, "GitHub token",
      "cluster.setup=[echo ghp_abcdefghijklmnopqrstuvwxyz0123456789]"),
    C("secret-aws-key", INJECTION, "AWS access key", "cluster.env={X: AKIAABCDEFGHIJKLMNOP}"),
    C("secret-wandb-key", INJECTION, "cluster.setup",
      "cluster.setup=[export WANDB_API_KEY=0123456789abcdef]"),
    C("secret-private-key", INJECTION, "private key",
      "cluster.env={K: '-----BEGIN RSA PRIVATE KEY-----'}"),
    C("secret-in-argv-run-dir", INJECTION, "Hugging Face token",
      args=("--run-dir={tmp}/hf_AbCdEfGhIjKlMnOpQrStUvWxYz012345",)),
    C("secret-jwt", INJECTION, "JSON web token",
      "cluster.env={T: eyJhbGciOiJIUzI1.eyJzdWIiOiIxMjM0NTY3.SflKxwRJSMeKKF2QT4fw}"),
    # ---------------------------------------------------------------- run dir, status, report
    *[C(f"relaunch-{m}", FILES, "manifest.json", args=("--run-dir={tmp}/run",), setup=m)
      for m in ("manifest_corrupt", "manifest_truncated", "manifest_foreign", "manifest_future",
                "manifest_list", "manifest_stages_list", "manifest_binary", "manifest_dir")],
    *[C(f"status-{m}", FILES, "manifest.json", args=("{tmp}/run",), setup=m, cli="status")
      for m in ("manifest_corrupt", "manifest_truncated", "manifest_foreign", "manifest_future",
                "manifest_list", "manifest_stages_list", "manifest_binary")],
    C("status-not-a-run", FILES, "not a kdlaunch run directory", args=("{tmp}",), cli="status"),
    C("status-logs-not-a-run", FILES, "not a kdlaunch run directory", args=("{tmp}", "--logs", "distill"),
      cli="status"),
    *[C(f"report-{m}", FILES, n, setup=m, cli="report", args=(
        "--before={tmp}/before.json", "--after={tmp}/after.json",
        "--teacher={tmp}/teacher.json", "--out={tmp}/report"))
      for m, n in (("results_nan", "groups.mmlu.acc"), ("results_inf_stderr", "groups.mmlu.acc_stderr"),
                   ("results_string", "groups.mmlu.acc"), ("results_above_one", "groups.mmlu.acc"),
                   ("results_no_groups", "groups"), ("results_missing_group", "mmlu_stem"),
                   ("results_not_json", "not valid JSON"), ("results_missing", "does not exist"),
                   ("results_non_utf8", "not valid JSON"), ("results_foreign", "neither"),
                   ("results_negative_stderr", "groups.mmlu.acc_stderr"), ("results_bool", "groups.mmlu.acc"))],
    C("report-out-is-file", FILES, "is a file", setup="results_good", cli="report", args=(
        "--before={tmp}/before.json", "--after={tmp}/after.json",
        "--teacher={tmp}/teacher.json", "--out={tmp}/afile")),
    # ---------------------------------------------------------------- sweeps
    C("sweep-dup-key", SWEEPS, "duplicate key", cli="sweep", setup="sweep_dup"),
    C("sweep-member-slash", SWEEPS, "grid.lr value name", cli="sweep", setup="sweep_member_slash"),
    C("sweep-empty-axis", SWEEPS, "grid.lr", cli="sweep", setup="sweep_empty_axis"),
    C("sweep-base-missing", SWEEPS, "nope", cli="sweep", setup="sweep_base_missing"),
    C("sweep-bad-override", SWEEPS, "train.lrr", cli="sweep", setup="sweep_bad_override"),
    C("sweep-alarm-nan", SWEEPS, "alarm.z", cli="sweep", setup="sweep_alarm_nan"),
    C("sweep-secret", SWEEPS, "cluster.setup", cli="sweep", setup="sweep_secret"),
    C("sweep-newline-name", SWEEPS, "name", cli="sweep", setup="sweep_newline_name"),
    C("sweep-not-utf8", SWEEPS, "not UTF-8", cli="sweep", setup="sweep_not_utf8"),
    C("sweep-night-manifest-corrupt", SWEEPS, "not valid JSON", cli="sweep",
      setup="sweep_night_corrupt"),
]


# ---------------------------------------------------------------- setups
def _results(acc=0.5, stderr=0.01, groups=None) -> dict:
    names = ("mmlu", "mmlu_humanities", "mmlu_other", "mmlu_social_sciences", "mmlu_stem")
    return {"schema": "kdlaunch.results/1", "role": "student_before", "model": "m",
            "groups": groups if groups is not None else
            {k: {"acc": acc, "acc_stderr": stderr, "n": 100} for k in names}}


def _write_results(tmp: Path, before: object) -> None:
    from kd import results

    good = _results()
    good["schema"] = results.SCHEMA
    for name, rec in (("before", before), ("after", good), ("teacher", good)):
        if isinstance(rec, dict) and rec.get("schema") == "kdlaunch.results/1":
            rec["schema"] = results.SCHEMA
        path = tmp / f"{name}.json"
        if isinstance(rec, bytes):
            path.write_bytes(rec)
        elif isinstance(rec, str):
            path.write_text(rec)
        elif rec is not None:
            path.write_text(json.dumps(rec))


def _copy_student(tmp: Path, assets: dict, edit) -> list[str]:
    import shutil

    dst = tmp / "student"
    shutil.copytree(assets["student"], dst)
    edit(dst / "config.json")
    return [f"student.path={dst}"]


def _manifest(tmp: Path, content: bytes | str | None, directory: bool = False) -> None:
    run = tmp / "run"
    run.mkdir()
    if directory:
        (run / "manifest.json").mkdir()
    elif isinstance(content, bytes):
        (run / "manifest.json").write_bytes(content)
    else:
        (run / "manifest.json").write_text(content)


def _sweep(tmp: Path, text: str) -> list[str]:
    path = tmp / "sweep.yaml"
    path.write_text(text) if isinstance(text, str) else path.write_bytes(text)
    return [str(path), "--dry-run"]


SWEEP = (REPO / "configs" / "sweeps" / "nightly_tiny.yaml").read_text()


def setup_case(case: Case, tmp: Path, assets: dict) -> list[str]:
    """Prepare files for a case; returns extra arguments."""
    s = case.setup
    if s is None:
        return []
    if s == "make_file":
        (tmp / "afile").write_text("x")
        return []
    if s == "student_bad_json":
        return _copy_student(tmp, assets, lambda p: p.write_text("{not json"))
    if s == "student_no_heads":
        def drop(p):
            cfg = json.loads(p.read_text())
            cfg.pop("num_attention_heads")
            p.write_text(json.dumps(cfg))
        return _copy_student(tmp, assets, drop)
    if s == "student_no_config":
        return _copy_student(tmp, assets, lambda p: p.unlink())
    manifests = {
        "manifest_corrupt": "{\"kdlaunch_manifest\": 1, \"stages\": {",
        "manifest_truncated": json.dumps({"kdlaunch_manifest": 1, "stages": {}})[:20],
        "manifest_foreign": json.dumps({"name": "something else"}),
        "manifest_future": json.dumps({"kdlaunch_manifest": 99, "stages": {}, "launches": []}),
        "manifest_list": json.dumps([1, 2]),
        "manifest_stages_list": json.dumps({"kdlaunch_manifest": 1, "stages": [], "launches": []}),
        "manifest_binary": b"\x89PNG\r\n\x1a\n\xff\xfe",
    }
    if s in manifests:
        _manifest(tmp, manifests[s])
        return []
    if s == "manifest_dir":
        _manifest(tmp, None, directory=True)
        return []
    results_cases = {
        "results_nan": _results(acc=float("nan")),
        "results_inf_stderr": _results(stderr=float("inf")),
        "results_string": _results(acc="high"),
        "results_above_one": _results(acc=1.5),
        "results_no_groups": {k: v for k, v in _results().items() if k != "groups"},
        "results_missing_group": _results(groups={"mmlu": {"acc": 0.5, "acc_stderr": 0.01}}),
        "results_not_json": "{oops",
        "results_missing": None,
        "results_non_utf8": b"\xff\xfe\x00",
        "results_foreign": {"hello": 1},
        "results_negative_stderr": _results(stderr=-0.1),
        "results_bool": _results(acc=True),
        "results_good": _results(),
    }
    if s in results_cases:
        _write_results(tmp, results_cases[s])
        (tmp / "afile").write_text("x")
        return []
    if s == "sweep_dup":
        return _sweep(tmp, SWEEP + "\nbase: tiny_demo\n")
    if s == "sweep_member_slash":
        return _sweep(tmp, SWEEP.replace("    lr3e-3:", "    ../lr3e-3:"))
    if s == "sweep_empty_axis":
        text = SWEEP.replace("    lr3e-3: [train.lr=3.0e-3]\n", "").replace(
            "    lr1e-3: [train.lr=1.0e-3, train.min_lr=1.0e-4]\n", "")
        return _sweep(tmp, text.replace("  lr:\n", "  lr: {}\n"))
    if s == "sweep_base_missing":
        return _sweep(tmp, SWEEP.replace("base: tiny_demo", "base: nope"))
    if s == "sweep_bad_override":
        return _sweep(tmp, SWEEP.replace("train.save_interval=20", "train.lrr=1"))
    if s == "sweep_alarm_nan":
        return _sweep(tmp, SWEEP.replace("  z: 2.0", "  z: .nan"))
    if s == "sweep_secret":
        return _sweep(tmp, SWEEP.replace("overrides: [", "overrides: ['cluster.setup=[export "
                                         "HF_TOKEN=abc]', "))
    if s == "sweep_newline_name":
        return _sweep(tmp, SWEEP.replace("name: nightly_tiny", f'name: "n\\n{INJECT}"'))
    if s == "sweep_not_utf8":
        return _sweep(tmp, SWEEP.encode() + b"\n# \xff\n")
    if s == "sweep_night_corrupt":
        root = tmp / "sweeps"
        night = root / "nightly_tiny" / "2026-01-01"
        night.mkdir(parents=True)
        from launch.sweep import NIGHT_MANIFEST

        (night / NIGHT_MANIFEST).write_text("{broken")
        args = _sweep(tmp, SWEEP.replace("root: runs/sweeps", f"root: {root}"))
        return ["check", args[0], "--date", "2026-01-01"]
    raise AssertionError(f"unknown setup {s}")


# ---------------------------------------------------------------- running a case
def _asset_overrides(assets: dict) -> list[str]:
    return [f"student.path={assets['student']}", f"teacher.path={assets['teacher']}",
            f"export.hf_template={assets['teacher']}", f"eval.include_path={assets['tasks']}",
            f"data.sources=[{{name: synthetic, jsonl: {assets['corpus']}}}]"]


def _argv(case: Case, tmp: Path, assets: dict, extra: list[str]) -> list[str]:
    args = [a.replace("{tmp}", str(tmp)) for a in case.args]
    if case.cli != "distill":
        return [*extra, *args] if case.cli == "sweep" else [*args, *extra]
    argv = []
    if case.yaml is not None:
        path = tmp / "exp.yaml"
        path.write_bytes(case.yaml.encode("utf-8", "surrogateescape"))
        argv += ["--config", str(path)]
    else:
        argv += ["--config", "tiny_demo"]
    if case.cluster_yaml is not None:
        path = tmp / "cluster.yaml"
        path.write_bytes(case.cluster_yaml.encode("utf-8", "surrogateescape"))
        argv += ["--cluster", str(path)]
    elif not any(a.startswith("--cluster") for a in args):
        argv += ["--cluster", "local"]
    if not any(a.startswith(("--run-dir", "--emit-sbatch")) for a in args):
        argv += ["--run-dir", str(tmp / "run")]
    if case.dry_run and not any(a.startswith("--emit-sbatch") for a in args):
        argv.append("--dry-run")
    student = [o for o in extra if o.startswith("student.path=")]
    base = [o for o in _asset_overrides(assets)
            if not (student and o.startswith("student.path="))]
    return [*argv, *args, *base, *extra, *case.overrides]


def _main(cli: str):
    if cli == "distill":
        from launch.distill import main
    elif cli == "status":
        from launch.status import main
    elif cli == "report":
        from launch.report import main
    else:
        from launch.sweep import main
    return main


def _snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


@pytest.fixture
def tripwire(monkeypatch):
    """Nothing may be queued: launching (or sbatch through submitit) fails the case."""
    from launch import submit

    def refuse(*a, **k):
        raise AssertionError("a bad input reached submission")

    monkeypatch.setattr(submit, "launch", refuse)
    monkeypatch.setattr(submit, "_submit_slurm", refuse)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, tmp_path, demo_assets, tripwire, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    extra = setup_case(case, tmp_path, demo_assets)
    argv = _argv(case, tmp_path, demo_assets, extra)
    before_repo = _snapshot(REPO / "runs")
    before_tmp = _snapshot(tmp_path)
    try:
        code = _main(case.cli)(argv)
    except SystemExit as e:  # argparse errors
        code = e.code
    out = capsys.readouterr()
    text = out.out + out.err
    assert code == 2, f"exit {code}, expected 2:\n{text[-3000:]}"
    assert case.named in text, f"the message does not name {case.named!r}:\n{text[-3000:]}"
    assert "Traceback" not in text, text[-3000:]
    assert len(text) < 20_000, "an error must be a message, not a dump"
    assert _snapshot(REPO / "runs") == before_repo, "wrote under the repository's runs/"
    created = _snapshot(tmp_path) - before_tmp
    assert not any(p == "run" or p.startswith("run/jobs") for p in created), created
    assert not PWNED.exists(), "an injected command ran"


def test_the_table_covers_every_category():
    counts: dict[str, int] = {}
    for case in CASES:
        counts[case.category] = counts.get(case.category, 0) + 1
    assert set(counts) == {YAML, TYPES, PATHS, LAYOUT, CLUSTER, INJECTION, FILES, SWEEPS}, counts
    assert sum(counts.values()) >= 120, counts
    assert len({c.id for c in CASES}) == len(CASES)
