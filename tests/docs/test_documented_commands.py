"""Every command the docs show works as written, and every relative link resolves.

Commands are collected from README.md, CONTRIBUTING.md, CHANGELOG.md, docs/*.md (fenced blocks
and inline code that starts like a command) and from the runbook header of every file in
configs/ (its `$ ` lines). ``RULES`` gives each one a kind; a command no rule matches fails
``test_every_command_is_classified``:

- ``real``: run as written, in a scratch copy of the repository (``scratch`` fixture: the same
  code, ``.cache/demo`` = the demo assets of the fixture cache, an empty ``runs/``), with the
  short overrides stated next to each run. The ``local`` group is the embedded demo (and the
  end-to-end test of the local pipeline); the ``slurm`` group is the nightly sweep on the SLURM
  test cluster, with the status/check/cron commands on its runs.
- ``dry-run``: would queue real GPU work: run with ``--dry-run``. Placeholder paths
  (``/path/to/...``, ``/lustre/...``, assets built on the GPU machine) must end in the
  pre-flight's refusal, whose message is checked.
- ``help``: GPU-machine and benchmark scripts: ``--help`` (Python) or ``bash -n`` (shell).
- ``not-run``: cannot run inside a test (the reason is in the rule); the make target or script
  must exist.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MARKDOWN = [REPO / "README.md", REPO / "CONTRIBUTING.md", REPO / "CHANGELOG.md",
            *sorted((REPO / "docs").glob("*.md"))]
CONFIGS = sorted((REPO / "configs").glob("*/*.yaml"))
COMMAND_WORDS = ("python ", "make ", "bash ", "source ", "scripts/", "sudo ", ".venv/bin/")
SHELL_BLOCKS = ("", "bash", "sh", "shell")


@dataclass(frozen=True)
class Command:
    text: str
    where: str  # file:line


# ---------------------------------------------------------------- collecting
def _logical_lines(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Join `\\` continuations; returns (first line number, joined text)."""
    out, buf, start = [], "", None
    for n, line in lines:
        start = n if start is None else start
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        out.append((start, buf + line))
        buf, start = "", None
    return out


def _clean(text: str) -> str:
    text = re.split(r"\s+#\s", " " + text.strip(), maxsplit=1)[0]  # a trailing comment
    return " ".join(text.split())


def markdown_commands(path: Path) -> list[Command]:
    rel = path.relative_to(REPO)
    cmds: list[Command] = []
    lines = path.read_text().splitlines()
    block: list[tuple[int, str]] | None = None
    lang = ""
    for n, line in enumerate(lines, 1):
        fence = re.match(r"^\s*```(\S*)\s*$", line)
        if fence and block is None:
            block, lang = [], fence.group(1)
            assert lang in (*SHELL_BLOCKS, "crontab", "yaml", "text"), (
                f"{rel}:{n}: code block language {lang!r}: use bash/sh (commands), crontab, yaml "
                f"(its run: steps) or text (not commands), so the doc test knows what it holds")
            continue
        if fence and block is not None:
            for start, text in _logical_lines(block):
                cmd = _block_command(lang, text)
                if cmd:
                    cmds.append(Command(cmd, f"{rel}:{start}"))
            block = None
            continue
        if block is not None:
            block.append((n, line))
            continue
        assert line.count("`") % 2 == 0, (
            f"{rel}:{n}: inline code broken over two lines: keep it on one line, so the doc "
            f"test sees the whole command")
        for span in re.findall(r"`([^`]+)`", line):  # a command, not a word or a folder
            if span.startswith(COMMAND_WORDS) and (len(span.split()) > 1
                                                   or span.endswith((".sh", ".py"))):
                cmds.append(Command(_clean(span), f"{rel}:{n}"))
    return cmds


def _block_command(lang: str, text: str) -> str | None:
    stripped = text.strip()
    if not stripped or stripped.startswith("#"):
        return None
    if lang in SHELL_BLOCKS:
        return _clean(stripped)
    if lang == "crontab":
        if re.match(r"^[A-Z_]+=", stripped):  # MAILTO=..., a crontab setting
            return None
        return " ".join(stripped.split(maxsplit=5)[5].split())  # after the 5 schedule fields
    if lang == "yaml":
        m = re.match(r"^-?\s*run:\s*(.+)$", stripped)
        return " ".join(m.group(1).split()) if m else None
    return None


def header_commands(path: Path) -> tuple[list[Command], list[str]]:
    """The `$ ` lines of a config's leading comment; and header lines that look like a command
    but are not marked (they would escape the test)."""
    rel = path.relative_to(REPO)
    cmds, unmarked = [], []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.startswith("#"):
            break
        body = line[1:].strip()
        if body.startswith("$ "):
            cmds.append(Command(_clean(body[2:]), f"{rel}:{n}"))
        elif re.search(r"(^|\s)(python|make|source|bash|sudo)\s+[\w./-]", body):
            unmarked.append(f"{rel}:{n}: {body}")
    return cmds, unmarked


def collect() -> list[Command]:
    cmds = [c for path in MARKDOWN for c in markdown_commands(path)]
    cmds += [c for path in CONFIGS for c in header_commands(path)[0]]
    return cmds


# ---------------------------------------------------------------- classifying
@dataclass(frozen=True)
class Rule:
    name: str
    pattern: str
    kind: str  # real | dry-run | help | not-run
    why: str

    def matches(self, text: str) -> bool:
        return re.fullmatch(self.pattern, text) is not None


RULES = (
    # not-run: the reason is the point
    Rule("make-target", r"make (env|test|test-fast|lint|format|golden|cluster|cluster-stop|demo)",
         "not-run", "make targets build .venv (minutes of pip), run the whole suite (CI itself) "
                    "or rewrite golden files; `make -n` must show the target. `make demo` = "
                    "`make env` + the two commands of tiny_demo.yaml's runbook, run for real here"),
    Rule("setup-env", r"scripts/setup_env\.sh", "not-run",
         "builds .venv (what `make env` and CI run first); syntax-checked"),
    Rule("cluster-start", r"scripts/slurm/start_cluster\.sh", "not-run",
         "the `slurm_cluster` fixture runs it when the cluster does not answer; rerunning it "
         "here could restart daemons under other tests; syntax-checked"),
    Rule("cluster-stop", r"scripts/slurm/stop_cluster\.sh", "not-run",
         "cancels every job on the shared test cluster; syntax-checked"),
    Rule("pytest", r"python -m pytest tests/\S+( -s)?", "not-run",
         "the test suite itself (CI runs it; tests/kd/test_gpu.py needs CUDA); the path must exist"),
    Rule("fetch-wheels", r"scripts/gpu/fetch_wheels\.sh", "not-run",
         "downloads wheels from the internet; syntax-checked"),
    # help: device machine and benchmarks
    Rule("gpu-shell", r"([A-Z0-9_]+=\S+ )*(source |bash )?scripts/gpu/\S+\.sh( .*)?", "help",
         "runs on the GPU machine (CUDA, device wheels); syntax-checked with bash -n"),
    Rule("gpu-python", r"python scripts/gpu/\S+\.py( .*)?", "help",
         "needs the GPU machine or its run logs; --help"),
    Rule("benchmark", r"python benchmarks/\S+\.py( .*)?", "help",
         "GPU benchmarks (numbers only from the device machine); --help"),
    # dry-run: would queue GPU work
    Rule("distill-gpu", r"python launch/distill\.py --cluster (slurm|pyxis_nemo|local_gpu) .*",
         "dry-run", "queues GPU jobs: run with --dry-run; placeholder paths must be refused"),
    # real, local: the embedded demo (= the local end-to-end test)
    Rule("demo-assets", r"python -m assets\.demo \.cache/demo", "real",
         "local: builds (here: checks, it is idempotent) the demo assets in .cache/demo"),
    Rule("demo-local", r"python launch/distill\.py --cluster local --config tiny_demo", "real",
         "local: the whole pipeline, with train.train_iters=60 and checkpoint selection "
         "over its two saves (DEMO_SHORT)"),
    Rule("report", r"python launch/report\.py .*", "real",
         "local: A/B/C.json = the demo run's eval results, report/ in the scratch copy"),
    Rule("mmlu-local", r"python -m kd\.mmlu_local tasks .*", "real",
         "local: /data/mmlu = the demo's local MMLU copy, the output in the scratch copy"),
    # real, slurm: the nightly sweep on the test cluster and what follows it
    Rule("cluster-status", r"scripts/slurm/start_cluster\.sh status", "real",
         "slurm: read-only, exit 0 when the cluster is ready"),
    Rule("sweep-dry-run", r"python launch/sweep\.py configs/sweeps/nightly_tiny\.yaml "
                          r"--cluster ci --dry-run", "real", "slurm: graphs + pre-flight"),
    Rule("sweep-launch", r"python launch/sweep\.py configs/sweeps/nightly_tiny\.yaml"
                         r"( --cluster ci| --retry-failed)?", "real",
         "slurm: tonight's sweep (short overrides in the scratch copy's sweep file); the second "
         "and later launches of the night submit nothing"),
    Rule("cron-launch", r"cd /path/to/kdlaunch && \.venv/bin/python launch/sweep\.py "
                        r"configs/sweeps/nightly_tiny\.yaml >> runs/sweeps/cron\.log 2>&1",
         "real", "slurm: /path/to/kdlaunch = the scratch copy, .venv/bin/python = this python"),
    Rule("sweep-check", r"python launch/sweep\.py check configs/sweeps/nightly_tiny\.yaml"
                        r"( --date \d{4}-\d\d-\d\d)?", "real",
         "slurm: tonight while queued (3), when done (0); another night (3, not launched)"),
    Rule("cron-check", r"(cd /path/to/kdlaunch && )?\.venv/bin/python launch/sweep\.py check "
                       r"configs/sweeps/nightly_tiny\.yaml --date .*yesterday.*", "real",
         "slurm: yesterday was not launched: exit 3 and a partial report"),
    Rule("scrontab", r"(mkdir -p runs/sweeps && )?scrontab( configs/sweeps/nightly_tiny\.scrontab"
                     r"| -l| -r)|squeue --me -n kd-nightly-launch,kd-nightly-check .*"
                     r"|sacct .* --name=kd-nightly-launch,kd-nightly-check .*", "real",
         "slurm: tests/slurm/test_scrontab.py runs them on the shipped scrontab file (schedule "
         "and paths substituted): install, list, follow both runs, remove"),
    Rule("bad-config-counts", r"python tests/bad_inputs/test_bad_config\.py", "real",
         "prints the bad-config table's count per category (no jobs)"),
    Rule("compat-table", r"\.venv/bin/python -m kd\.compat --device cpu --probe", "real",
         "prints this machine's workaround table (a few seconds, no jobs)"),
    Rule("status", r"python launch/status\.py runs/(kd1|<run>)"
                   r"( --logs distill| --wait| --cancel| --provenance)?",
         "real", "slurm: runs/kd1 and runs/<run> = a member of the sweep run here"),
)


def rule_of(text: str) -> Rule | None:
    return next((r for r in RULES if r.matches(text)), None)


def commands_of(*names: str) -> list[Command]:
    """The documented commands of these rules, each text once (several docs show some)."""
    out = {c.text: c for c in collect() if (r := rule_of(c.text)) and r.name in names}
    assert out, f"no documented command matches {names}: drop the rule or restore the docs"
    return list(out.values())


# ---------------------------------------------------------------- fast checks
def test_every_command_is_classified():
    cmds = collect()
    unmarked = [u for path in CONFIGS for u in header_commands(path)[1]]
    assert not unmarked, ("runbook lines that look like commands but do not start with `$ ` "
                          "(the doc test would miss them):\n" + "\n".join(unmarked))
    unknown = [f"{c.where}: {c.text}" for c in cmds if rule_of(c.text) is None]
    assert not unknown, ("documented commands no RULES entry covers (add a rule saying how "
                         "the test runs them):\n" + "\n".join(unknown))
    used = {rule_of(c.text).name for c in cmds}
    assert used == {r.name for r in RULES}, f"rules matching no command: {set(r.name for r in RULES) - used}"
    assert len(cmds) >= 40, len(cmds)
    assert not any(c.text.startswith("sudo ") for c in cmds), "root-only machines have no sudo"


def test_relative_links_resolve_inside_the_repository():
    bad = []
    for path in MARKDOWN:
        text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+://|^mailto:|^#", target):
                continue
            resolved = (path.parent / target.split("#")[0]).resolve()
            if not resolved.is_relative_to(REPO) or not resolved.exists():
                bad.append(f"{path.relative_to(REPO)}: {target}")
    assert not bad, "relative links that do not resolve inside the repository:\n" + "\n".join(bad)


def test_not_run_and_help_commands_exist(tmp_path):
    for c in collect():
        rule = rule_of(c.text)
        if rule.kind not in ("not-run", "help"):
            continue
        words = c.text.split()
        if words[0] == "make":
            proc = run(["make", "-n", words[1]], REPO)
            assert proc.returncode == 0, (c, proc.stderr)
            if words[1] == "demo":  # its recipe is the runbook's two commands, run for real
                assert "-m assets.demo .cache/demo" in proc.stdout, proc.stdout
                assert "launch/distill.py --cluster local --config tiny_demo" in proc.stdout
        elif words[:3] == ["python", "-m", "pytest"]:
            assert (REPO / words[3]).exists(), c
        else:
            script = next(w for w in words if w.startswith(("scripts/", "benchmarks/")))
            assert (REPO / script).is_file(), c
            if script.endswith(".sh"):
                proc = run(["bash", "-n", script], REPO)
            else:
                proc = run([sys.executable, script, "--help"], REPO)
                assert "usage:" in proc.stdout, (c, proc.stdout[-500:])
            assert proc.returncode == 0, (c, proc.stdout[-1000:], proc.stderr[-1000:])


def test_bad_config_counts_command():
    for c in commands_of("bad-config-counts"):
        proc = run([sys.executable, *c.text.split()[1:]], REPO, timeout=300)
        assert proc.returncode == 0 and "YAML form" in proc.stdout, (c, proc.stdout, proc.stderr)


def test_compat_table_command():
    for c in commands_of("compat-table"):
        proc = run([sys.executable, *c.text.split()[1:]], REPO, timeout=300)
        assert proc.returncode == 0, (c, proc.stderr[-2000:])
        assert "workarounds active" in proc.stdout and "upstream bug: present" in proc.stdout, c


# ---------------------------------------------------------------- running
def run(argv: list[str] | str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # jobs import this checkout's code
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, shell=isinstance(argv, str),
                          executable="/bin/bash" if isinstance(argv, str) else None)


def run_python(text: str, cwd: Path, *extra: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """A documented `python ...` line with this interpreter (and ``extra`` arguments)."""
    words = text.split()
    assert words[0] == "python", text
    return run([sys.executable, *words[1:], *extra], cwd, timeout)


def make_scratch(tmp_path: Path, demo_dir: Path | None = None) -> Path:
    """A copy of the repository to run documented commands in: the same code (links), the
    demo assets (if given) where the configs expect them, its own runs/ and report output."""
    root = tmp_path / "kdlaunch"
    root.mkdir()
    for entry in REPO.iterdir():
        if entry.name not in (".cache", "runs", "configs", ".git"):
            (root / entry.name).symlink_to(entry)
    (root / "configs").mkdir()
    for sub in (REPO / "configs").iterdir():
        (root / "configs" / sub.name).symlink_to(sub)
    (root / ".cache").mkdir()
    if demo_dir is not None:
        (root / ".cache" / "demo").symlink_to(demo_dir)
    return root


@pytest.fixture
def scratch(tmp_path, demo_assets) -> Path:
    return make_scratch(tmp_path, Path(demo_assets["teacher"]).parent)


DRY_REFUSAL = re.compile(
    r"(student|teacher)\.path='(/path/to/|/lustre/|\.cache/gpu_1b/)[^']*'(: no such directory| has "
    r"no readable config\.json)")


def test_dry_run_commands(tmp_path):
    scratch = make_scratch(tmp_path)  # GPU configs: the demo assets play no part
    for c in commands_of("distill-gpu"):
        argv = c.text.split()
        if "--dry-run" not in argv:
            argv.append("--dry-run")
        proc = run_python(" ".join(argv), scratch, timeout=120)
        out = proc.stdout + proc.stderr
        assert DRY_REFUSAL.search(out), (c, out[-2000:])  # every one names placeholder paths
        if proc.returncode == 0:  # the graph, then what the real launch would refuse
            assert "job graph:" in out and "pre-flight: a real launch would stop here" in out, c
        else:  # refused before planning: the layout needs the models' configs
            assert proc.returncode == 2 and "nothing was queued" in out, (c, out[-2000:])
    assert not (scratch / "runs").exists()  # nothing was created


# the local demo run: 60 iterations, saved every 30; checkpoint selection over the two saves (30, 60)
# by kd_synth on a quick eval of 2 questions per subject
DEMO_SHORT = ("train.train_iters=60", "train.save_interval=30", "train.eval_interval=30",
              "select.every_save=true", "select.by=kd_synth", "select.limit=2")
SELECT_STAGES = ("prepare_data", "distill", "candidate_30", "candidate_60",
                 "select", "eval_student_before", "eval_teacher", "eval_student_after", "report")


def check_selection(run_dir: Path, iterations: tuple[int, ...]) -> None:
    """The chosen candidate is the run's export, and the report shows the selection."""
    selection = json.loads((run_dir / "select" / "selection.json").read_text())
    rows = {r["iteration"]: r for r in selection["candidates"]}
    assert tuple(rows) == iterations and selection["by"] == "kd_synth"
    best = max(rows, key=lambda it: (rows[it]["score"], it))  # by hand: highest, ties later
    assert selection["selected"] == best
    assert all(r["val_loss"] is not None for r in rows.values())  # eval_interval = save_interval
    exported = json.loads((run_dir / "export" / "hf" / ".kdlaunch-export.json").read_text())
    assert exported["iteration"] == best  # export/hf holds the chosen iteration
    cand = run_dir / "select" / f"iter_{best:07d}" / "export" / "hf"
    for f in cand.rglob("*.safetensors"):  # hard links of the candidate's files
        assert (run_dir / "export" / "hf" / f.relative_to(cand)).samefile(f)
    after = json.loads((run_dir / "eval" / "student_after.json").read_text())
    assert after["model"] == str(run_dir / "export" / "hf") and after["settings"]["limit"] is None
    report = (run_dir / "report" / "report.md").read_text()
    assert "## Checkpoint selection" in report and f"Chosen iteration: **{best}**" in report
    for it in iterations:
        assert f"| {it} | {100 * rows[it]['score']:.2f} |" in report
    assert ("no sign of overfitting" in report) == (best == iterations[-1])
    assert ("Overfitting" in report or "Within noise" in report) == (best != iterations[-1])
    assert (run_dir / "report" / "selection.png").stat().st_size > 1000
    assert "![checkpoint selection](selection.png)" in report


@pytest.mark.e2e
@pytest.mark.timeout(1200)
def test_local_demo_commands(scratch, demo_assets):
    """The embedded demo as documented; this is also the local end-to-end test (it replaces
    tests/e2e's local run): every stage, the report, relaunch skips, another config refused."""
    from tests.e2e.test_pipeline import check_finished_run

    for c in commands_of("demo-assets"):
        proc = run_python(c.text, scratch)
        assert proc.returncode == 0 and "student" in proc.stdout, (c, proc.stderr[-2000:])
    (demo,) = {c.text for c in commands_of("demo-local")}
    proc = run_python(demo, scratch, *DEMO_SHORT, timeout=1100)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| Before distillation |" in proc.stdout  # the report is printed at the end
    (run_dir,) = (scratch / "runs").glob("tiny_demo-*")
    manifest = check_finished_run(run_dir, proc.stdout, SELECT_STAGES)
    assert manifest["experiment"]["train"]["micro_batch_size"] == 8  # auto: 16 / (8 x DP 1)
    check_selection(run_dir, (30, 60))
    again = run_python(demo, scratch, *DEMO_SHORT, "--run-dir", str(run_dir))
    assert again.returncode == 0, again.stdout
    assert again.stdout.count("complete, skipped") == len(SELECT_STAGES), again.stdout
    other = run_python(demo, scratch, "train.train_iters=61", "--run-dir", str(run_dir))
    assert other.returncode == 2 and "belongs to a different config" in other.stderr

    evals = run_dir / "eval"
    for c in commands_of("report"):
        text = (c.text.replace("A.json", str(evals / "student_before.json"))
                .replace("B.json", str(evals / "student_after.json"))
                .replace("C.json", str(evals / "teacher.json")))
        proc = run_python(text, scratch, timeout=120)
        assert proc.returncode == 0, (c, proc.stderr[-2000:])
        assert "| Before distillation |" in (scratch / "report" / "report.md").read_text()
    for c in commands_of("mmlu-local"):
        text = (c.text.replace("/data/mmlu-tasks", str(scratch / "mmlu-tasks"))
                .replace("/data/mmlu", str(Path(demo_assets["tasks"]).parent / "mmlu_data")))
        proc = run_python(text, scratch, timeout=120)
        assert proc.returncode == 0, (c, proc.stderr[-2000:])
        assert (scratch / "mmlu-tasks" / "_mmlu.yaml").is_file(), list((scratch / "mmlu-tasks").iterdir())


# short overrides for the sweep run on the test cluster (the shipped file: 2 x 2 members, 40
# iterations, two checkpoints per member, every eval in full): one dataset at both learning
# rates (both members share its data prep, the teacher eval and the student-before eval), 10
# iterations, no candidates
SWEEP_SHORT = {"overrides": ["train.train_iters=10", "train.lr_warmup_iters=2", "eval.limit=100"],
               "select": {"iterations": []}}
SWEEP_DATA = "full"


@pytest.mark.e2e
@pytest.mark.slurm
@pytest.mark.timeout(1200)
def test_sweep_and_status_commands_on_slurm(slurm_cluster, scratch):
    """The nightly sweep as documented, on the SLURM test cluster (ci: distill on 2 nodes,
    data-parallel): dry run, launch, check while queued (3, partial report), relaunches submit
    nothing, status on a member, check when done (0, history), other nights (3)."""
    sweeps = scratch / "configs" / "sweeps"
    sweeps.unlink()
    sweeps.mkdir()
    shipped = yaml.safe_load((REPO / "configs" / "sweeps" / "nightly_tiny.yaml").read_text())
    grid = {"data": {SWEEP_DATA: shipped["grid"]["data"][SWEEP_DATA]}, "lr": shipped["grid"]["lr"]}
    (sweeps / "nightly_tiny.yaml").write_text(
        yaml.safe_dump({**shipped, **SWEEP_SHORT, "grid": grid}, sort_keys=False))
    members = tuple(f"{SWEEP_DATA}-{lr}" for lr in grid["lr"])  # full-lr3e-3, full-lr1e-3

    for c in commands_of("cluster-status"):
        assert run(c.text.split(), scratch, 120).returncode == 0, c
    for c in commands_of("sweep-dry-run"):
        proc = run_python(c.text, scratch, timeout=120)
        assert proc.returncode == 0 and proc.stdout.count("pre-flight: ok") == 2, proc.stdout[-3000:]
    launches = commands_of("sweep-launch")
    first, *later = sorted(launches, key=lambda c: "--cluster ci" not in c.text)
    proc = run_python(first.text, scratch, timeout=300)
    assert proc.returncode == 0 and "job(s) submitted" in proc.stdout, proc.stdout + proc.stderr
    night = next((scratch / "runs" / "sweeps" / "nightly_tiny").iterdir())
    try:
        _check_while_queued(scratch, night, len(members))
        for c in later:  # the same night again (cron retry, --retry-failed): nothing submitted
            proc = run_python(c.text, scratch, timeout=120)
            assert proc.returncode == 0 and "0 job(s) submitted" in proc.stdout, (c, proc.stdout)
        for c in commands_of("cron-launch"):
            proc = run(c.text.replace("/path/to/kdlaunch", str(scratch))
                       .replace(".venv/bin/python", sys.executable), scratch, 120)
            assert proc.returncode == 0, (c, proc.stderr)
            assert (scratch / "runs/sweeps/cron.log").read_text().rstrip().endswith(
                "0 job(s) submitted; runs in " + str(night))
        _status_commands(scratch, night, members)
    finally:
        _cancel_own_jobs(night)
    _check_when_done(scratch, night, members)


def _check_while_queued(scratch: Path, night: Path, n_members: int) -> None:
    for c in commands_of("sweep-check"):
        if "--date" not in c.text:
            proc = run_python(c.text, scratch, timeout=120)
            assert proc.returncode == 3, proc.stdout + proc.stderr
            md = (night / "trend" / "trend.md").read_text()
            assert f"(partial: {n_members} member(s) without results)" in md and "waiting: " in md, md
            return


def _status_commands(scratch: Path, night: Path, members: tuple[str, ...]) -> None:
    status = commands_of("status")
    waits = [c for c in status if c.text.endswith("--wait")]
    for member in members:  # `status --wait` on every member: the night ends
        for c in waits:
            proc = run_python(re.sub(r"runs/(kd1|<run>)", str(night / member), c.text),
                              scratch, timeout=900)
            assert proc.returncode == 0, (member, proc.stdout[-3000:])
    manifest = json.loads((night / members[-1] / "manifest.json").read_text())
    own = {s for s, r in manifest["stages"].items() if r.get("job_id")}
    # the last member runs its own training, export, eval and report; the first member's jobs
    # prepare the shared data and evaluate the teacher and the student before distillation
    assert own == {"distill", "export_hf", "eval_student_after", "report"}, own
    for c in status:
        run_dir = str(night / members[-1])
        proc = run_python(re.sub(r"runs/(kd1|<run>)", run_dir, c.text), scratch, timeout=120)
        assert proc.returncode == 0, (c, proc.stdout, proc.stderr)
        if c.text.endswith("--logs distill"):
            assert "_log.out <==" in proc.stdout, proc.stdout
        elif c.text.endswith("--cancel"):
            assert "cancelled 0 job(s)" in proc.stdout, proc.stdout
        elif c.text.endswith("--provenance"):  # the member's own stages, from their markers
            for stage in own:
                row = next(ln for ln in proc.stdout.splitlines() if ln.startswith(stage + " "))
                assert f"slurm {manifest['stages'][stage]['job_id']} step" in row, proc.stdout
        elif not c.text.endswith("--wait"):
            assert proc.stdout.count("COMPLETED") == len(own), proc.stdout


def _check_when_done(scratch: Path, night: Path, members: tuple[str, ...]) -> None:
    import csv

    owners: dict[str, list[str]] = {}
    for m in members:
        assert (night / m / "report" / "report.md").is_file(), m
        for stage, rec in json.loads((night / m / "manifest.json").read_text())["stages"].items():
            if rec.get("job_id"):
                owners.setdefault(stage, []).append(m)
    # one data prep, one teacher eval and one student-before eval for all members
    assert len(owners["prepare_data"]) == 1 and len(owners["eval_teacher"]) == 1
    assert len(owners["eval_student_before"]) == 1 and len(owners["distill"]) == len(members)
    for c in commands_of("sweep-check"):
        proc = run_python(c.text, scratch, timeout=120)
        if "--date" in c.text:  # another night, never launched here
            assert proc.returncode == 3 and "not launched" in proc.stdout, proc.stdout
            continue
        assert proc.returncode == 0, proc.stdout + proc.stderr
        md = (night / "trend" / "trend.md").read_text()
        assert "partial" not in md and (night / "trend" / "trend.png").stat().st_size > 0
    history = night.parent / "history.csv"
    rows = list(csv.DictReader(history.open()))
    assert {r["member"] for r in rows} == set(members) and {r["date"] for r in rows} == {night.name}
    for c in commands_of("cron-check"):
        text = re.sub(r"^cd /path/to/kdlaunch && ", "", c.text).replace(".venv/bin/python",
                                                                         sys.executable)
        proc = run(text, scratch, 120)
        out = proc.stdout
        if "check.log" in text:
            out += (scratch / "runs" / "sweeps" / "check.log").read_text()
        assert "not launched" in out, (c, out[-2000:])
        # `|| cat check.log` turns exit 3 into 0 (cron mails the output); the bare check is 3
        assert proc.returncode == (0 if "|| cat" in text else 3), (c, proc.returncode)


def _cancel_own_jobs(night: Path) -> None:
    """On failure, cancel the jobs this test submitted (by id: the cluster is shared)."""
    ids = []
    for manifest in night.glob("*/manifest.json"):
        ids += [r["job_id"] for r in json.loads(manifest.read_text())["stages"].values()
                if r.get("job_id")]
    states = subprocess.run(["squeue", "-h", "-o", "%i", "-j", ",".join(ids)],
                            capture_output=True, text=True).stdout.split() if ids else []
    if states and shutil.which("scancel"):
        subprocess.run(["scancel", *states], check=False)
