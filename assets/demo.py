"""Assets of the embedded demo: a synthetic language, a teacher that has learned it, a
Puzzletron-style pruned student, and held-out tasks that show what KD recovers.

    python -m assets.demo .cache/demo        # idempotent; about a minute on 2 CPU cores

The language: the word two positions back decides the next word (``w[i] = rule[w[i-2]]``
nine times in ten, otherwise a random word), so predicting it needs attention. The teacher
(a tiny Llama) is trained on it from scratch; the student is the teacher converted to AnyModel
with the attention of the layer the teacher relies on most removed (measured, as Puzzletron
scores blocks) and one FFN narrowed, so it is measurably worse. KD can teach the remaining
attention layer to do the job. ``kd_synth`` (an lm-eval multiple-choice task on held-out
documents: which word comes next, 4 choices) measures the gap; MMLU of models this small is
chance and is kept only to exercise the real MMLU path.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

from assets.tiny import build_pruned_anymodel, build_tokenizer

N_WORDS = 200  # w0..w199: words of the language (the tokenizer knows w0..w233)
RULE_P = 0.9
SYNTH_TASK = "kd_synth"


def language(seed: int = 0) -> list[int]:
    """rule[w]: the word that follows two positions after ``w``."""
    rng = random.Random(seed)
    return [rng.randrange(N_WORDS) for _ in range(N_WORDS)]


def document(rng: random.Random, rule: list[int], length: int) -> list[int]:
    words = [rng.randrange(N_WORDS), rng.randrange(N_WORDS)]
    while len(words) < length:
        ruled = rng.random() < RULE_P
        words.append(rule[words[-2]] if ruled else rng.randrange(N_WORDS))
    return words


def text(words: list[int]) -> str:
    return " ".join(f"w{w}" for w in words)


def write_corpus(out: Path, n_docs: int, seed: int, length: int = 32) -> Path:
    rng, table = random.Random(seed), language()
    tmp = out.with_suffix(".tmp")
    with tmp.open("w") as f:
        for _ in range(n_docs):
            f.write(json.dumps({"text": text(document(rng, table, length))}) + "\n")
    os.replace(tmp, out)
    return out


def write_synth_task(task_dir: Path, n_questions: int = 600, seed: int = 7) -> Path:
    """lm-eval task ``kd_synth``: held-out context -> which of 4 words comes next."""
    rng, rule = random.Random(seed), language()
    rows = []
    for _ in range(n_questions):
        context = document(rng, rule, rng.randint(6, 24))
        target = rule[context[-2]]
        distractors = rng.sample([w for w in range(N_WORDS) if w != target], 3)
        choices = [target, *distractors]
        rng.shuffle(choices)
        rows.append({"context": text(context), "choices": [f"w{c}" for c in choices],
                     "label": choices.index(target)})
    task_dir.mkdir(parents=True, exist_ok=True)
    data = task_dir / "kd_synth_test.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (task_dir / "kd_synth.yaml").write_text(
        f"task: {SYNTH_TASK}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        "doc_to_text: '{{context}}'\n"
        "target_delimiter: ' '\n"
        "doc_to_choice: '{{choices}}'\n"
        "doc_to_target: label\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "metadata:\n  version: 1.0\n"
    )
    return task_dir


def train_teacher(out: Path, tokenizer_dir: Path, corpus: Path, *, steps: int = 300,
                  batch: int = 32, seed: int = 0) -> Path:
    """A tiny Llama trained from scratch on the corpus (plain PyTorch loop, CPU)."""
    if (out / ".kdlaunch-built").is_file():
        return out
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    docs = [tok(json.loads(line)["text"]).input_ids for line in corpus.read_text().splitlines()]
    ids = torch.tensor([d + [tok.eos_token_id] for d in docs])
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=256,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512, tie_word_embeddings=False,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, torch_dtype="float32")
    model = LlamaForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    model.train()
    t0 = time.time()
    for step in range(steps):
        rows = ids[torch.randint(0, len(ids), (batch,))]
        loss = model(input_ids=rows, labels=rows).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"teacher step {step}/{steps} loss {loss.item():.3f} ({time.time() - t0:.0f} s)",
                  flush=True)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.eval().save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / ".kdlaunch-built").write_text(json.dumps({"kind": "demo-teacher", "steps": steps}))
    os.replace(tmp, out)
    return out


def build(root: str | Path, *, teacher_steps: int = 600, train_docs: int = 4000) -> dict:
    """Every demo asset under ``root``; returns their paths. Idempotent."""
    from assets.mmlu import build_fake_mmlu
    from kd.mmlu_local import DEFAULT_SUBJECTS, write_task_overrides

    root = Path(root).absolute()
    root.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(root / "tokenizer")
    corpus = root / "corpus_train.jsonl"
    if not corpus.exists():
        write_corpus(corpus, train_docs, seed=1)
    teacher = train_teacher(root / "teacher", tok, corpus, steps=teacher_steps)
    student = build_pruned_anymodel(teacher, root / "student", no_op_attention_layer=0,
                                    pruned_ffn_layer=1, ffn_keep=0.25)
    tasks = root / "tasks"
    if not (tasks / "kd_synth.yaml").exists():
        write_synth_task(tasks)
        mmlu = build_fake_mmlu(root / "mmlu_data", n_test=10)
        write_task_overrides(tasks, mmlu, DEFAULT_SUBJECTS)
    return {"tokenizer": tok, "corpus": corpus, "teacher": teacher, "student": student,
            "tasks": tasks}


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    paths = build(sys.argv[1] if len(sys.argv) > 1 else ".cache/demo")
    for k, v in paths.items():
        print(f"{k:<10} {v}")
