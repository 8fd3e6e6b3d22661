"""Job graph shape, dry-run output pinned by golden files, login-node lightness, quoting."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from launch import backends, layout
from launch import config as cfg
from launch.executors import sbatch_text, setup_lines
from launch.plan import plan
from launch.start import dry_run_text

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "golden" / "sbatch"
RUN_DIR = Path("/runs/golden")


def guide_graph(cluster_name: str, *cluster_over: str):
    cl = cfg.load_cluster(cluster_name, ["python=python", *cluster_over])
    exp, _ = layout.load_experiment("guide_llama31_8b", [], cl)
    return exp, cl, plan(exp, cl, RUN_DIR)


def test_guide_graph_edges():
    _, _, g = guide_graph("pyxis_nemo")
    assert g.stages == ("prepare_data", "distill", "export_hf", "eval_student_before",
                        "eval_teacher", "eval_student_after", "report")
    deps = {j.stage: j.deps for j in g.jobs}
    assert deps["distill"] == ("prepare_data",)
    assert deps["export_hf"] == ("distill",)
    assert deps["eval_student_after"] == ("export_hf",)
    assert deps["eval_student_before"] == () and deps["eval_teacher"] == ()
    assert set(deps["report"]) == {"eval_student_before", "eval_teacher", "eval_student_after"}
    d = g.job("distill")
    assert (d.nodes, d.tasks_per_node, d.gpus_per_node, d.requeue) == (1, 8, 8, True)
    assert d.spec.train.tp == 8 and d.spec.data_blend == ((1.0, "/runs/golden/data/wikitext-train_text_document"),)
    assert g.dependents("distill") == ("export_hf", "eval_student_after", "report")
    assert g.job("eval_teacher").spec.cache_dir == "/lustre/fsw/my_account/kd_eval_cache"


def test_distill_spec_carries_the_resolved_layout_and_the_stage_holds_it():
    """The layout is resolved once, on the login side: the distill spec says the world size it
    was resolved for, and the stage refuses any other (a job that somehow got other nodes)."""
    from kd.distill import validate

    _, cl, g = guide_graph("pyxis_nemo", "nodes=2")
    spec = g.job("distill").spec
    assert spec.world_size == 16 and spec.data_parallel_size == 2
    assert spec.train.distributed_optimizer is True  # auto resolved for dp 2, not left "auto"
    assert spec.train.sequence_parallel is True  # tp 8
    with pytest.raises(ValueError, match="student"):  # past the world check: the paths
        validate(spec, 16)
    with pytest.raises(ValueError, match="this job has 8 ranks, but the launcher resolved the "
                                         "layout .*tp 8, pp 1, dp 2.* for 16"):
        validate(spec, 8)


def test_pretokenized_prefix_skips_data_prep(tmp_path):
    cl = cfg.load_cluster("slurm")
    exp, _ = layout.load_experiment(
        "guide_llama31_8b", [f"data.sources=[{{name: w, prefix: {tmp_path}/w}}]"], cl)
    g = plan(exp, cl, RUN_DIR)
    assert "prepare_data" not in g.stages and g.job("distill").deps == ()
    assert g.job("distill").spec.data_blend == ((1.0, f"{tmp_path}/w"),)


@pytest.mark.parametrize("cluster", ["pyxis_nemo", "ci"])
def test_dry_run_matches_golden(cluster):
    exp, cl, g = guide_graph(cluster)
    text = dry_run_text(g, backends.for_cluster(cl, g.run_dir, exp.name))
    golden = GOLDEN / f"guide__{cluster}.txt"
    if os.environ.get("KD_UPDATE_GOLDEN"):
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
    assert text == golden.read_text(), f"re-record with KD_UPDATE_GOLDEN=1 if intended ({golden})"


def test_pyxis_arguments_in_srun_line():
    exp, cl, g = guide_graph("pyxis_nemo")
    text = sbatch_text(g.job("distill"), cl, RUN_DIR, exp.name, ["123"])
    srun = next(line for line in text.splitlines() if line.startswith("srun "))
    assert "'--container-image=nvcr.io#nvidia/nemo:26.02'" in srun
    assert "--container-mounts=/runs/golden:/runs/golden,/lustre/fsw/my_account:/lustre/fsw/my_account" in srun
    assert "#SBATCH --dependency=afterok:123" in text and "#SBATCH --kill-on-invalid-dep=yes" in text
    assert "#SBATCH --ntasks-per-node=8" in text and "#SBATCH --gpus-per-node=8" in text
    assert "#SBATCH --requeue" in text and "#SBATCH --signal=USR2@300" in text


def test_shell_metacharacters_are_inert(tmp_path):
    """Values with shell syntax end up quoted: running the setup lines executes nothing."""
    canary = tmp_path / "pwned"
    evil = f"x; touch {canary}; $(touch {canary}) `touch {canary}`"
    cl = cfg.load_cluster("slurm", [f"env.MY_VAR={evil}", "partition=p;touch x"])
    # quotes and backticks cannot be carried by a '#SBATCH' line (launch.shell refuses them, see
    # tests/bad_inputs/test_bad_boundary.py); every other metacharacter is quoted
    exp, _ = layout.load_experiment("guide_llama31_8b", [f"name=a b x; touch {canary}; "
                                                        f"$(touch {canary})"], cl)
    g = plan(exp, cl, tmp_path / "run dir; touch x")
    text = sbatch_text(g.job("distill"), cl, g.run_dir, exp.name, ["1"])
    assert "#SBATCH --partition='p;touch x'" in text
    script = "\n".join(setup_lines(cl, g.job("distill")) + ['printf %s "$MY_VAR"'])
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout == evil and not canary.exists()
    # the whole sbatch header parses as comments + quoted words: run it with srun stubbed out
    header = text.replace("srun ", "true ", 1)
    subprocess.run(["bash", "-c", header], check=True, capture_output=True)
    assert not canary.exists()


HEAVY = ("torch", "megatron", "modelopt", "lm_eval", "transformers")


def test_launch_never_imports_heavy_libraries():
    code = ("import sys; import launch.distill, launch.plan, launch.submit, launch.status, "
            "launch.preflight, launch.executors, launch.report, kd.job, kd.specs, launch.cli, "
            "launch.sweep, launch.backends.slurm, launch.backends.local; "
            f"bad=[m for m in sys.modules if m.split('.')[0] in {HEAVY!r}]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_help_and_dry_run(tmp_path):
    """--help and --dry-run answer without a cluster (that they import nothing heavy is
    test_launch_never_imports_heavy_libraries: no wall-clock bound on a shared machine)."""
    subprocess.run([sys.executable, "launch/distill.py", "--help"], cwd=REPO, check=True,
                   capture_output=True)
    res = subprocess.run([sys.executable, "launch/distill.py", "--cluster", "pyxis_nemo",
                          "--config", "guide_llama31_8b", "--dry-run", "--run-dir",
                          str(tmp_path / "run")], cwd=REPO, capture_output=True, text=True)
    out = res.stdout
    assert "===== sbatch: report =====" in out
    # the guide's models are not on this machine: the graph is printed, and pre-flight's refusal
    # makes --dry-run exit 2 so that it can serve as a check in scripts
    assert res.returncode == 2 and "student.path" in res.stderr, res.stderr
    assert not (tmp_path / "run").exists()


def test_standalone_sbatch_matches_golden(tmp_path):
    exp, cl, g = guide_graph("pyxis_nemo")
    out = tmp_path / "standalone"
    backends.for_cluster(cl, g.run_dir, exp.name).emit_scripts(g, out)
    parts = [f"===== {p.name} =====\n{p.read_text()}" for p in sorted(out.glob("*.sbatch"))]
    parts.append(f"===== submit.sh =====\n{(out / 'submit.sh').read_text()}")
    text = "\n".join(parts).replace(str(out), "{OUT}")  # the golden names no temp path
    golden = GOLDEN / "standalone__guide__pyxis_nemo.txt"
    if os.environ.get("KD_UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text(), f"re-record with KD_UPDATE_GOLDEN=1 if intended ({golden})"
    distill = (out / "distill.sbatch").read_text()
    assert f"python -u -m kd.job distill --spec {out}/specs/distill.json" in distill
    assert "export CUDA_DEVICE_MAX_CONNECTIONS=1" in distill  # slurm_templates/distill_env.sh
    subprocess.run(["bash", "-n", str(out / "submit.sh")], check=True)  # valid bash


def test_spec_json_round_trip():
    import dataclasses
    import json

    from kd.specs import STAGE_SPECS, spec_from_dict

    _, _, g = guide_graph("pyxis_nemo")
    for job in g.jobs:
        cls = STAGE_SPECS[job.stage][1]
        data = json.loads(json.dumps(dataclasses.asdict(job.spec)))
        assert spec_from_dict(cls, data) == job.spec, job.stage


def test_stage_specs_round_trip_through_the_one_converter():
    """``kd.job --spec`` JSON goes through launch.schema.build: every stage spec of the guide's
    graph comes back equal; a foreign key or a NaN is refused naming the field."""
    import dataclasses
    import json

    from kd.specs import STAGE_SPECS, spec_from_dict
    from launch.schema import ConfigError

    _, _, g = guide_graph("pyxis_nemo")
    for job in g.jobs:
        cls = STAGE_SPECS[job.stage][1]
        data = json.loads(json.dumps(dataclasses.asdict(job.spec)))
        assert spec_from_dict(cls, data) == job.spec
    distill = json.loads(json.dumps(dataclasses.asdict(g.job("distill").spec)))
    with pytest.raises(ConfigError, match="DistillSpec.lrr"):
        spec_from_dict(STAGE_SPECS["distill"][1], {**distill, "lrr": 1})
    with pytest.raises(ConfigError, match="DistillSpec.lr"):
        spec_from_dict(STAGE_SPECS["distill"][1], {**distill, "lr": float("nan")})
