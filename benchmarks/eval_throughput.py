"""MMLU eval throughput: lm-eval's ``hf`` backend through kd.evaluate, batch sizes and GPU
counts side by side.

    python benchmarks/eval_throughput.py --model .cache/gpu_1b/teacher --batch-sizes 1,auto \\
        --n-test 10 --out runs/bench/eval_throughput.json
    python benchmarks/eval_throughput.py --model M --batch-sizes auto --processes 1,4 \\
        --n-test 100 --out runs/bench/eval_dp.json     # 1 GPU vs 4 (one process per GPU)

No Hub here, so the questions are MMLU-shaped stand-ins (assets.mmlu): all 57 subjects,
``--n-test`` test questions each, 5 dev questions for the few-shot prompt, written in words the
assets.tiny tokenizer knows, with MMLU-like lengths (question 30-90 words, choices 2-12 words; a
5-shot prompt is then ~550 tokens, real MMLU's are ~400-1000). Each batch size is one full
``kd.evaluate.run`` of the real ``mmlu`` group (the eval stage's code path, model load
included): questions/s = questions / eval_seconds. ``auto`` is lm-eval's own search for the
largest batch that fits. ``--processes 1,4`` runs each batch size with 1 and with 4 data-parallel
model processes (kd/eval_shards.py: one per GPU, ``cuda:0..3``, each loading the model itself,
so load time is included) and checks that the scores are identical; ``--n-test 100`` (5700
questions, the guide's ``limit 100``) keeps the model load from dominating.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def build_questions(root: Path, n_test: int, seed: int = 0,
                    few: bool = False) -> tuple[Path, int]:
    """All 57 subjects (``few``: one per category), MMLU-length questions; returns
    (lm-eval include_path, questions)."""
    from assets.mmlu import write_dataset
    from kd.mmlu_local import DEFAULT_SUBJECTS, mmlu_subjects, write_task_overrides

    rng = random.Random(seed)

    def words(lo: int, hi: int) -> str:
        return " ".join(f"w{rng.randrange(100)}" for _ in range(rng.randint(lo, hi)))

    def question(subject: str) -> dict:
        return {"question": words(30, 90), "subject": subject,
                "choices": [words(2, 12) for _ in range(4)], "answer": rng.randrange(4)}

    subjects = sorted(DEFAULT_SUBJECTS if few else mmlu_subjects())
    data = root / f"mmlu_n{n_test}_s{len(subjects)}"
    if not (data / "README.md").is_file():
        rows = {}
        for s in subjects:
            dev = [question(s) for _ in range(5)]
            rows[s] = {"test": [question(s) for _ in range(n_test)], "validation": dev[:1],
                       "dev": dev}
        write_dataset(data, rows)
    tasks = write_task_overrides(root / f"tasks_n{n_test}_s{len(subjects)}", data,
                                 tuple(subjects) if few else None)
    return tasks, n_test * len(subjects)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, required=True, help="HF checkpoint dir")
    p.add_argument("--batch-sizes", default="1,auto", help="comma-separated; 'auto' = lm-eval's")
    p.add_argument("--processes", default="1",
                   help="comma-separated data-parallel process counts (one GPU each), e.g. 1,4")
    p.add_argument("--n-test", type=int, default=10, help="test questions per subject")
    p.add_argument("--few-subjects", action="store_true",
                   help="4 subjects (one per category) instead of 57: a quick check, not a measure")
    p.add_argument("--fewshot", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--work", type=Path, default=Path("runs/bench/eval"))
    p.add_argument("--out", type=Path, default=Path("runs/bench/eval_throughput.json"))
    args = p.parse_args(argv)

    from kd import compat

    compat.activate(compat.resolve_device(args.device))
    from kd import evaluate
    from kd.specs import EvalSpec, replace_fields

    args.work.mkdir(parents=True, exist_ok=True)
    tasks, questions = build_questions(args.work, args.n_test, few=args.few_subjects)
    result = {"model": str(args.model), "questions": questions, "num_fewshot": args.fewshot,
              "device": device_name(), "runs": {}}
    processes = [int(p) for p in args.processes.split(",")]
    for n_proc in processes:
        for bs in args.batch_sizes.split(","):
            batch = int(bs) if bs.isdigit() else bs
            name = bs if processes == [1] else f"p{n_proc}_bs{bs}"
            out = args.work / f"{name}.json"
            out.unlink(missing_ok=True)  # measure, never reuse
            spec = replace_fields(
                EvalSpec(role="student_before", model=str(args.model.absolute()),
                         out_file=str(out)),
                tasks=("mmlu",), num_fewshot=args.fewshot, batch_size=batch, dtype=args.dtype,
                device=args.device, include_path=str(tasks.absolute()))
            t0 = time.time()
            record = evaluate.run(spec, processes=n_proc)
            wall = time.time() - t0
            seconds = record["eval_seconds"]
            result["runs"][name] = {
                "processes": n_proc,
                "batch_size": bs,
                "eval_seconds": seconds,
                "wall_s": round(wall, 1),
                "questions_per_s": round(questions / seconds, 1),
                "mmlu_acc": record["groups"]["mmlu"]["acc"],
                "mmlu_n": record["groups"]["mmlu"]["n"],
            }
            print(f"EVAL_BENCH {name} " + json.dumps(result["runs"][name]), flush=True)
    runs = result["runs"]
    if "1" in runs and "auto" in runs:
        result["speedup_auto_vs_1"] = round(runs["1"]["eval_seconds"] / runs["auto"]["eval_seconds"],
                                            2)
    for r in runs.values():
        single = runs.get(f"p1_bs{r['batch_size']}")
        if single and r["processes"] > 1:
            r["speedup_vs_1_process"] = round(single["eval_seconds"] / r["eval_seconds"], 2)
            r["same_scores_as_1_process"] = (r["mmlu_acc"], r["mmlu_n"]) == (
                single["mmlu_acc"], single["mmlu_n"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"MMLU ({questions} questions, {args.fewshot}-shot) on {result['device']}")
    print("| processes | batch size | eval s (incl. load) | questions/s | × 1 process |\n"
          "|---|---|---|---|---|")
    for r in runs.values():
        print(f"| {r['processes']} | {r['batch_size']} | {r['eval_seconds']} | "
              f"{r['questions_per_s']} | {r.get('speedup_vs_1_process', '')} |")
    bad = [n for n, r in runs.items() if r.get("same_scores_as_1_process") is False]
    if bad:
        print(f"error: {', '.join(bad)} scored differently from 1 process", file=sys.stderr)
        return 1
    return 0


def device_name() -> str:
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"


if __name__ == "__main__":
    sys.exit(main())
