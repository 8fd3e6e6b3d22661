"""Build the local assets of configs/experiments/gpu_1b_tp.yaml (idempotent, no Hub).

    python scripts/gpu/build_assets.py [ROOT]            # default .cache/gpu_1b, ~1B teacher
    python scripts/gpu/build_assets.py ROOT --tiny       # the same layout, CPU-sized (pre-flight)

ROOT/tokenizer     word-level tokenizer, 32000 entries (assets.tiny.build_tokenizer)
ROOT/teacher       random-init Llama: 16 layers, hidden 2048, 16 heads, 8 KV heads, FFN 8192
                   (1.14B parameters with the 32000 x 2048 untied embeddings)
ROOT/student       Puzzletron AnyModel student pruned from it (assets.tiny.build_pruned_anymodel:
                   layer-0 attention no-op, layer-1 FFN halved)
ROOT/student_small the benchmark's ~0.5B Puzzletron-style student (benchmarks/kd_throughput.py):
                   attention no-op in layers 0 and 8, every FFN cut to a quarter (0.54B)
ROOT/corpus.jsonl  synthetic documents (assets.demo's language), the prepare_data stage's input
ROOT/mmlu_data     small fake MMLU (assets.mmlu), ROOT/mmlu_tasks its lm-eval overrides
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

FULL = dict(layers=16, hidden=2048, ffn=8192, heads=16, kv_heads=8, max_positions=4096)
TINY = dict(layers=4, hidden=64, ffn=128, heads=8, kv_heads=8, max_positions=4096)


def build(root: Path, tiny: bool, docs: int) -> dict:
    from kd import compat

    compat.activate(compat.resolve_device("auto"))  # import stubs modelopt needs (pulp, ...)
    from assets.demo import write_corpus
    from assets.mmlu import build_fake_mmlu
    from assets.tiny import build_llama, build_pruned_anymodel, build_tokenizer
    from kd.mmlu_local import DEFAULT_SUBJECTS, write_task_overrides

    root.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    tok = build_tokenizer(root / "tokenizer", vocab_size=512 if tiny else 32000)
    teacher = build_llama(root / "teacher", tok, seed=0, **(TINY if tiny else FULL))
    t_teacher = time.time() - t0
    student = build_pruned_anymodel(teacher, root / "student")
    layers = (TINY if tiny else FULL)["layers"]
    small = build_pruned_anymodel(teacher, root / "student_small",
                                  no_op_attention_layer=(0, layers // 2),
                                  pruned_ffn_layer=tuple(range(layers)), ffn_keep=0.25)
    corpus = root / "corpus.jsonl"
    if not corpus.exists():
        write_corpus(corpus, docs, seed=1, length=64)
    tasks = root / "mmlu_tasks"
    if not (tasks / "_mmlu.yaml").exists():
        write_task_overrides(tasks, build_fake_mmlu(root / "mmlu_data", n_test=8), DEFAULT_SUBJECTS)
    return {
        "teacher": str(teacher),
        "student": str(student),
        "student_small": str(small),
        "corpus": str(corpus),
        "tasks": str(tasks),
        "teacher_build_s": round(t_teacher, 1),
        "total_s": round(time.time() - t0, 1),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("root", nargs="?", default=".cache/gpu_1b")
    p.add_argument("--tiny", action="store_true", help="CPU-sized models, same layout")
    p.add_argument("--docs", type=int, default=20000, help="documents in the corpus")
    args = p.parse_args()
    print("KD_ASSETS " + json.dumps(build(Path(args.root).absolute(), args.tiny, args.docs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
