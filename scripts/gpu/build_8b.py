"""Build the 8B-shaped KD pair on the GPU (Llama-3.1-8B widths; random bf16 weights, no Hub).

    python scripts/gpu/build_8b.py ROOT [--layers 32] [--docs 4000]
    python scripts/gpu/build_8b.py ROOT --tiny          # same recipe, CPU-sized (pre-flight)

ROOT/tokenizer  word-level tokenizer with Llama-3.1's 128256 entries (assets.tiny.build_tokenizer)
ROOT/teacher    Llama-3.1-8B dimensions: hidden 4096, 32 heads, 8 KV heads, FFN 14336, vocab
                128256, rope theta 500000; ``--layers`` of them (32 = the real 8B, 8.03B
                parameters), random init (normal, std 0.02) on the GPU in bf16
ROOT/student    Puzzletron AnyModel cut from it (assets.tiny.build_pruned_anymodel): attention
                no-op in every 4th layer, every FFN cut to 4608 (48 % of the parameters at 32
                layers: 3.87B; the embeddings do not shrink with depth, so a shallower pair is a
                little above half)
ROOT/data_text_document.{bin,idx}  Megatron dataset of uniformly random tokens, ``--docs``
                documents of 4096 tokens (throughput does not depend on the text)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

LLAMA_8B = dict(hidden=4096, heads=32, kv_heads=8, ffn=14336, vocab=128256)
TINY = dict(hidden=64, heads=8, kv_heads=2, ffn=224, vocab=512)
STUDENT_FFN = 4608 / 14336  # of the teacher's FFN width
NO_OP_ATTENTION_EVERY = 4


def build_teacher(out: Path, tok_dir: Path, layers: int, dims: dict, device: str) -> Path:
    from assets.tiny import DONE, _publish

    if (out / DONE).is_file():
        return out
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    cfg = LlamaConfig(vocab_size=dims["vocab"], hidden_size=dims["hidden"],
                      intermediate_size=dims["ffn"], num_hidden_layers=layers,
                      num_attention_heads=dims["heads"], num_key_value_heads=dims["kv_heads"],
                      max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=500000.0,
                      tie_word_embeddings=False, torch_dtype="bfloat16",
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(dtype).eval()
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, max_shard_size="4GB")
    tok.save_pretrained(tmp)
    params = sum(p.numel() for p in model.parameters())
    del model
    return _publish(tmp, out, {"kind": "llama", "layers": layers, **dims, "parameters": params})


def write_random_tokens(prefix: Path, vocab: int, docs: int, length: int) -> Path:
    """A Megatron indexed dataset (``prefix``.bin/.idx) of uniformly random token ids."""
    if prefix.with_suffix(".idx").is_file():
        return prefix
    import numpy as np
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    rng = np.random.default_rng(0)
    tmp = prefix.with_name(prefix.name + f".tmp{os.getpid()}")
    builder = IndexedDatasetBuilder(str(tmp) + ".bin", dtype=np.int32)
    for _ in range(docs):
        builder.add_document(torch.from_numpy(rng.integers(0, vocab, length, dtype=np.int32)),
                             [length])
    builder.finalize(str(tmp) + ".idx")
    os.replace(str(tmp) + ".bin", str(prefix) + ".bin")
    os.replace(str(tmp) + ".idx", str(prefix) + ".idx")
    return prefix


def build(root: Path, layers: int, tiny: bool, docs: int) -> dict:
    from kd import compat

    device = compat.resolve_device("auto")
    compat.activate(device)  # import stubs modelopt needs (pulp, ...)
    from assets.tiny import build_pruned_anymodel, build_tokenizer

    dims = TINY if tiny else LLAMA_8B
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    tok = build_tokenizer(root / "tokenizer", vocab_size=dims["vocab"])
    teacher = build_teacher(root / "teacher", tok, layers, dims, device)
    t_teacher = time.time() - t0
    student = build_pruned_anymodel(
        teacher, root / "student",
        no_op_attention_layer=tuple(range(NO_OP_ATTENTION_EVERY - 1, layers,
                                          NO_OP_ATTENTION_EVERY)),
        pruned_ffn_layer=tuple(range(layers)), ffn_keep=STUDENT_FFN)
    t_student = time.time() - t0 - t_teacher
    data = write_random_tokens(root / "data_text_document", dims["vocab"], docs,
                               64 if tiny else 4096)
    from launch.memory import parameters

    cfg = {r: json.loads((p / "config.json").read_text())
           for r, p in (("teacher", teacher), ("student", student))}
    return {
        "teacher": str(teacher), "student": str(student), "data": str(data),
        "teacher_parameters": parameters(cfg["teacher"]),
        "student_parameters": parameters(cfg["student"]),
        "teacher_build_s": round(t_teacher, 1), "student_build_s": round(t_student, 1),
        "total_s": round(time.time() - t0, 1),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("root", nargs="?", default=".cache/gpu_8b")
    p.add_argument("--layers", type=int, default=32, help="teacher depth (32 = Llama-3.1-8B)")
    p.add_argument("--tiny", action="store_true", help="CPU-sized widths, same recipe")
    p.add_argument("--docs", type=int, default=2000, help="random-token documents")
    args = p.parse_args()
    print("KD_ASSETS " + json.dumps(build(Path(args.root).absolute(), args.layers, args.tiny,
                                          args.docs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
