"""Config loading: shipped configs validate; bad input names the field and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from launch import config as cfg
from launch.schema import ConfigError

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "clusters").glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_shipped_clusters_load(path):
    cl = cfg.load_cluster(str(path))
    assert cl.name == path.stem


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "experiments").glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_shipped_experiments_load(path):
    exp = cfg.load_experiment(str(path))
    assert exp.name == path.stem
    assert path.read_text().startswith("#"), "each experiment starts with a runbook comment"


def test_guide_experiment_matches_the_guide():
    exp = cfg.load_experiment("guide_llama31_8b")
    t = exp.train
    assert (t.tp, t.pp, t.seq_length, t.micro_batch_size, t.global_batch_size) == (8, 1, 4096, 1, 4)
    assert (t.train_iters, t.lr, t.min_lr, t.lr_warmup_iters) == (100, 1e-4, 1e-5, 10)
    assert (t.eval_interval, t.eval_iters, t.log_interval) == (10, 10, 1)
    assert exp.export.hf_template == "meta-llama/Llama-3.1-8B-Instruct"
    assert exp.data.sources[0].weight == 1.0


@pytest.mark.parametrize("ref", ["seed_llama31_8b", "configs/experiments/seed_llama31_8b.yaml"])
def test_the_former_experiment_name_still_loads_with_a_notice(ref, capsys):
    """Recorded commands name the guide's experiment by its former name (a name or the shipped
    path): it loads configs/experiments/guide_llama31_8b.yaml and says so on stderr, once."""
    exp = cfg.load_experiment(ref)
    assert exp == cfg.load_experiment("guide_llama31_8b")
    err = capsys.readouterr().err
    assert err.count("'seed_llama31_8b' is now 'guide_llama31_8b'") == 1 and "deprecated" in err
    assert err.count("\n") == 1
    with pytest.raises(ConfigError):  # other unknown names are still refused
        cfg.load_experiment("seed_llama31_9b")


def test_pyxis_example_uses_nemo_image_and_8_gpus():
    cl = cfg.load_cluster("pyxis_nemo")
    assert cl.container.image == "nvcr.io#nvidia/nemo:26.02" and cl.gpus_per_node == 8


def test_overrides_are_typed(make_experiment):
    exp = cfg.load_experiment(str(make_experiment()), ["train.lr=3e-4", "train.train_iters=50",
                                                       "kd.logit_kl_topk=16"])
    assert exp.train.lr == 3e-4 and exp.train.train_iters == 50 and exp.kd.logit_kl_topk == 16


def test_unknown_key_lists_valid_ones(make_experiment):
    with pytest.raises(ConfigError) as e:
        cfg.load_experiment(str(make_experiment()), ["train.learning_rate=1"])
    msg = str(e.value)
    assert "train.learning_rate" in msg and "valid keys of train:" in msg and "lr" in msg


def test_unknown_top_level_key(make_experiment):
    with pytest.raises(ConfigError, match=r"unknown key\(s\) optimiser; valid keys: checkpoint, "):
        cfg.load_experiment(str(make_experiment(optimiser={"lr": 1})))


def test_wrong_type_names_field(make_experiment):
    with pytest.raises(ConfigError, match=r"train.seq_length: expected an integer, got 'long'"):
        cfg.load_experiment(str(make_experiment()), ["train.seq_length=long"])
    with pytest.raises(ConfigError, match=r"train.tp='eight': expected a positive integer or "
                                          r"'auto'"):
        cfg.load_experiment(str(make_experiment()), ["train.tp=eight"])
    with pytest.raises(ConfigError, match=r"train.recompute='some': choose one of auto, none"):
        cfg.load_experiment(str(make_experiment()), ["train.recompute=some"])


def test_missing_required_field(make_experiment, tmp_path):
    path = make_experiment()
    text = "\n".join(ln for ln in path.read_text().splitlines() if not ln.startswith("teacher")
                     and not ln.startswith("  path: " + str(tmp_path / "teacher")))
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"teacher is required but missing"):
        cfg.load_experiment(str(path))


@pytest.mark.parametrize("override, message", [
    (["train.global_batch_size=5", "train.micro_batch_size=2"], "not a multiple of train.micro_batch_size"),
    (["train.lr_warmup_iters=100"], "lr_warmup_iters=100 must be < train.train_iters"),
    (["train.min_lr=1"], "need lr > 0 and 0 <= min_lr <= lr"),
    (["train.precision=fp8"], "train.precision='fp8': choose one of bf16, fp32"),
    (["train.cp=2"], "context parallelism is not supported"),
    (["data.sources=[{name: a, jsonl: x.jsonl, weight: 0}]"], "weight=0.0: must be a finite number > 0"),
    (["data.sources=[{name: a, jsonl: x.jsonl, weight: -1}]"], "weight=-1.0: must be a finite number > 0"),
    (["data.sources=[{name: a, jsonl: x.jsonl, weight: heavy}]"], "weight: expected a number"),
    (["data.sources=[{name: a, jsonl: x.jsonl, prefix: y}]"], "set exactly one of jsonl, hf_name, prefix"),
    (["data.sources=[]"], "data.sources is empty"),
    (["export.hf_template=null"], "export.hf_template is not set but export.enabled is true"),
    (["kd.logit_kl_temperature=0"], "kd.logit_kl_temperature=0.0: must be a finite number > 0"),
])
def test_bad_experiment_values(make_experiment, override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("+", r"\+")):
        cfg.load_experiment(str(make_experiment()), override)


@pytest.mark.parametrize("override, message", [
    (["executor=kubernetes"], "cluster.executor='kubernetes': choose one of slurm, local"),
    (["signal_delay_s=20", "save_time_s=60"], "cannot hold one checkpoint save"),
    (["time_min=1", "signal_delay_s=90"], "must be shorter than the time limit"),
    (["env.HF_TOKEN=abc"], "looks like a secret"),
    (["nodes=0"], "cluster.nodes=0: must be > 0"),
    (["container.mounts=[/data]"], "is not SRC:DST"),
])
def test_bad_cluster_values(override, message):
    with pytest.raises(ConfigError, match=message):
        cfg.load_cluster("slurm", override)


def test_unknown_cluster_profile_lists_profiles():
    with pytest.raises(ConfigError, match=r"no such profile; choose one of .*local.*slurm"):
        cfg.load_cluster("nosuch")


# ---------------------------------------------------------------- one declaration per section
def test_sections_are_declared_once():
    """The launcher's experiment sections ARE the stages' sections (kd/sections.py), and a stage
    spec never re-declares a knob of a section it holds: a value has one name and one default."""
    import dataclasses

    from kd import sections, specs

    for name in ("Experiment", "Data", "Source", "Train", "KD", "Export", "Eval", "ModelRef"):
        assert getattr(cfg, name) is getattr(sections, name), name
    held = 0
    for _, cls in specs.STAGE_SPECS.values():
        own = {f.name: f for f in dataclasses.fields(cls)}
        for f in own.values():
            section = f.type if isinstance(f.type, type) else getattr(sections, f.type, None)
            if dataclasses.is_dataclass(section):
                held += 1
                twice = own.keys() & {g.name for g in dataclasses.fields(section)}
                assert not twice, f"{cls.__name__} re-declares {twice} of {section.__name__}"
    assert held >= 4  # data, train, kd, export, eval are held, not copied


ONE_LINE = '    warmup_style: str = knob("linear", one_of("linear", "cosine"))  # the new knob\n'
FLOW = r"""
import json, sys
from dataclasses import asdict
from launch import config, layout, plan
from kd.specs import STAGE_SPECS, spec_from_dict
cl = config.load_cluster("local")
exp, _ = layout.load_experiment(sys.argv[1], sys.argv[2:], cl)
job = plan.plan(exp, cl, sys.argv[1] + ".run").job("distill")
data = json.loads(json.dumps(asdict(job.spec)))
back = spec_from_dict(STAGE_SPECS["distill"][1], data)
print(json.dumps({"spec": data["train"]["warmup_style"], "back": back.train.warmup_style}))
"""


def test_a_new_knob_is_one_line(make_experiment, tmp_path):
    """Add ONE line to kd/sections.py (a field with its default and check) in a copy of the
    code: the knob is read from YAML and --set, reaches the distill spec's JSON and comes back
    from it (kd.job --spec), and a bad value is refused naming train.warmup_style."""
    import shutil
    import subprocess
    import sys

    copy = tmp_path / "code"
    for part in ("kd", "launch", "configs"):
        shutil.copytree(REPO / part, copy / part,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    src = copy / "kd" / "sections.py"
    text = src.read_text()
    marker = "    split: str = knob("
    assert text.count(marker) == 1
    src.write_text(text.replace(marker, ONE_LINE + marker))
    exp = make_experiment(train={"tp": 1, "pp": 1, "micro_batch_size": 1, "recompute": "none",
                                 "global_batch_size": 4, "warmup_style": "cosine"})

    def flow(*overrides: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", FLOW, str(exp), *overrides], cwd=copy,
                              capture_output=True, text=True, timeout=120,
                              env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(copy)})

    good = flow()
    assert good.returncode == 0, good.stderr[-2000:]
    assert '{"spec": "cosine", "back": "cosine"}' in good.stdout
    bad = flow("train.warmup_style=step")
    assert bad.returncode != 0
    assert "train.warmup_style='step': choose one of linear, cosine" in bad.stderr
    # and without that line the key is unknown, naming the valid ones: nothing else declares it
    src.write_text(text)
    unknown = flow()
    assert "unknown key(s) train.warmup_style; valid keys of train:" in unknown.stderr
