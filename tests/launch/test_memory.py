"""The KD memory estimate (launch/memory.py) against peak memory measured on GPUs: the 12 layouts
its coefficients were fitted to (benchmarks/results/h100x4_2026-11-28*.json) and 4 held-out
layouts measured after the fit (h200x4_2026-11-28_issue8_val.json: a 1B student at 56 GiB,
micro-batch 8, micro-batch 1 at seq 2048, full recompute), each within 15 % (the bar;
all are within 7 %); and the pre-flight check that uses it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launch import config as cfg
from launch import preflight
from launch.memory import estimate, parameters
from launch.schema import ConfigError

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results"
MEASURED = json.loads((RESULTS / "h100x4_2026-11-28.json").read_text())
BENCH_1B = json.loads((RESULTS / "h100x4_2026-11-28_issue8.json").read_text())
HELD_OUT = json.loads((RESULTS / "h200x4_2026-11-28_issue8_val.json").read_text())["runs"]
BENCH_8B = json.loads((RESULTS / "h200x1_2026-11-28_issue14_8b.json").read_text())


def llama(layers, hidden, ffn, heads, kv, vocab):
    return {"num_hidden_layers": layers, "hidden_size": hidden, "intermediate_size": ffn,
            "num_attention_heads": heads, "num_key_value_heads": kv, "vocab_size": vocab}


def pruned(teacher):  # assets.tiny.build_pruned_anymodel defaults: layer-0 attention off, FFN 1 halved
    blocks = [{"attention": {"no_op": i == 0},
               "ffn": {"intermediate_size": teacher["intermediate_size"] // (2 if i == 1 else 1)}}
              for i in range(teacher["num_hidden_layers"])]
    return {**teacher, "block_configs": blocks}


SMALL_T = llama(12, 1024, 4096, 16, 4, 256)  # tests/kd/test_gpu.py
SMALL_S = llama(10, 1024, 2816, 16, 4, 256)
BIG_T = llama(16, 2048, 8192, 16, 8, 32000)  # configs/experiments/gpu_1b_tp.yaml
BIG_S = pruned(BIG_T)
SMALL_BENCH_S = {**BIG_T, "block_configs": [  # scripts/gpu/build_assets.py student_small
    {"attention": {"no_op": i in (0, 8)}, "ffn": {"intermediate_size": 2048}} for i in range(16)]}


def measured_points():
    gpu = {r["run"]: r for r in MEASURED["issue3_test_gpu"]}
    bench = MEASURED["issue8_kd_throughput"]["variants"]
    runs = {r["tp"]: r for r in MEASURED["issue9_launcher_runs"]}
    return [
        ("test_gpu dense", SMALL_S, SMALL_T, 2, 1024, 2, "sdpa", gpu["gpu_dense"]),
        ("test_gpu anymodel", pruned(SMALL_T), SMALL_T, 2, 1024, 2, "sdpa", gpu["gpu_anymodel"]),
        ("1B local mbs1", BIG_S, BIG_T, 2, 2048, 1, "local", bench["reference"]),
        ("1B sdpa mbs1", BIG_S, BIG_T, 2, 2048, 1, "sdpa", bench["sdpa_mbs1"]),
        ("1B sdpa mbs2", BIG_S, BIG_T, 2, 2048, 2, "sdpa", bench["ours"]),
        ("1B TP=4 mbs2", BIG_S, BIG_T, 4, 2048, 2, "sdpa", runs[4]),
        *bench_1b_points(),
    ]


def bench_1b_points():
    out = []
    for key in ("kd_throughput_4gpu", "kd_throughput_2gpu"):
        for name, v in BENCH_1B[key]["variants"].items():
            out.append((f"{key} {name}", SMALL_BENCH_S, BIG_T, v["tp"], BENCH_1B[key]["seq"],
                        v["micro_batch_size"], v["attention"], v))
    return out


def held_out_points():
    out = []
    for run, r in HELD_OUT.items():
        student = BIG_S if r["student"].endswith("/student") else SMALL_BENCH_S
        for name, v in r["variants"].items():
            out.append((f"{run} {name}", student, BIG_T, v["tp"], r["seq"], v["micro_batch_size"],
                        v["attention"], v))
    return out


def llama8b_widths(layers):  # scripts/gpu/build_8b.py: teacher and its AnyModel student
    teacher = llama(layers, 4096, 14336, 32, 8, 128256)
    blocks = [{"attention": {"no_op": i % 4 == 3}, "ffn": {"intermediate_size": 4608}}
              for i in range(layers)]
    return {**teacher, "block_configs": blocks}, teacher


def bench_8b_points():
    """Layouts at the 8B widths (12 layers), measured after the fit: held out by construction."""
    student, teacher = llama8b_widths(12)
    runs = [(4096, BENCH_8B["kd_throughput"])] + [
        (r["seq"], r) for r in BENCH_8B["held_out_layout_runs"].values()]
    return [(f"8B-width seq{seq} {name} {v['recompute']}", student, teacher, v["tp"], seq,
             v["micro_batch_size"], v["attention"], v)
            for seq, r in runs for name, v in r["variants"].items()]


def test_parameter_counts_match_the_built_models():
    student, teacher = llama8b_widths(12)
    assets = BENCH_8B["pair"]
    assert f"{parameters(teacher) / 1e9:.2f}B" in assets["teacher"]
    assert f"{parameters(student) / 1e9:.2f}B" in assets["student"]
    gpu = {r["run"]: r for r in MEASURED["issue3_test_gpu"]}
    assert parameters(SMALL_S, 2) == gpu["gpu_dense"]["student_params"]
    assert parameters(pruned(SMALL_T), 2) == gpu["gpu_anymodel"]["student_params"]
    assert parameters(SMALL_T, 2) == gpu["gpu_dense"]["teacher_params"]


@pytest.mark.parametrize("point", measured_points() + held_out_points(), ids=lambda p: p[0])
def test_estimate_within_15_percent_of_measured_peak(point):
    _, student, teacher, tp, seq, mbs, attention, run = point
    measured = max(run["peak_allocated_gib_per_rank"])
    est = estimate(student, teacher, tp=tp, seq=seq, mbs=mbs, attention=attention,
                   recompute=run.get("recompute") == "full").total
    assert abs(est - measured) / measured < 0.15, (est, measured)


def test_preflight_refuses_a_layout_that_does_not_fit(make_experiment, tmp_path):
    from .conftest import write_hf_dir

    for role in ("student", "teacher"):  # an 8B-shaped pair (Llama-3.1-8B dimensions)
        d = write_hf_dir(tmp_path / role)
        c = json.loads((d / "config.json").read_text())
        c.update(llama(32, 4096, 14336, 32, 8, 128256))
        (d / "config.json").write_text(json.dumps(c))
    exp = cfg.load_experiment(str(make_experiment()), [
        "train.tp=1", "train.pp=1", "train.recompute=none", "train.global_batch_size=8"])
    cl = cfg.load_cluster("pyxis_nemo")
    with pytest.raises(ConfigError, match=r"estimated peak .* GiB per GPU .* raise train.tp"):
        preflight.check_memory(exp, cl)
    exp8 = cfg.load_experiment(str(make_experiment()), ["train.tp=8", "train.pp=1",
                                                         "train.recompute=none"])
    preflight.check_memory(exp8, cl)  # the guide's layout fits 80 GB


@pytest.mark.parametrize("point", bench_8b_points(), ids=lambda p: p[0])
def test_estimate_within_10_percent_on_held_out_8b_width_layouts(point):
    """The bar for held-out layouts of the 8B-shaped pair (all 7 are within 3.5 %), incl. the
    chunked KD loss."""
    _, student, teacher, tp, seq, mbs, attention, run = point
    measured = max(run["peak_allocated_gib_per_rank"])
    est = estimate(student, teacher, tp=tp, seq=seq, mbs=mbs, attention=attention,
                   recompute=run["recompute"] == "full", kd_loss=run["kd_loss"]).total
    assert abs(est - measured) / measured < 0.10, (est, measured)
