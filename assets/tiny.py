"""Tiny, locally built models and tokenizer for tests and the embedded demo (no Hub).

Heavy imports (torch, transformers, tokenizers) stay inside the functions. Every builder is
idempotent: when its output directory already holds a finished build it returns at once, so
tests and the demo can share one cache of fixtures.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

SPECIALS = ("<unk>", "<s>", "</s>", "<pad>")
# A few words MMLU prompts are made of, so lm-eval's prompts/answers are not all <unk>.
PROMPT_WORDS = (
    "A",
    "B",
    "C",
    "D",
    "A.",
    "B.",
    "C.",
    "D.",
    "Answer:",
    "The",
    "following",
    "are",
    "multiple",
    "choice",
    "questions",
    "(with",
    "answers)",
    "about",
)
DONE = ".kdlaunch-built"


def _finished(out: Path) -> bool:
    return (out / DONE).is_file()


def _publish(tmp: Path, out: Path, meta: dict) -> Path:
    """Atomically move a finished build into place (never overwrites an existing build)."""
    (tmp / DONE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    try:
        os.replace(tmp, out)
    except OSError:  # someone else finished first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def vocabulary(size: int = 256) -> list[str]:
    """Specials, the MMLU prompt words, then synthetic words ``w<i>`` up to ``size`` entries."""
    words = list(SPECIALS) + list(PROMPT_WORDS)
    i = 0
    while len(words) < size:
        words.append(f"w{i}")
        i += 1
    return words[:size]


def build_tokenizer(out_dir: str | Path, vocab_size: int = 256) -> Path:
    """A whitespace word-level tokenizer (``PreTrainedTokenizerFast``) saved to ``out_dir``."""
    out = Path(out_dir)
    if _finished(out):
        return out
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(vocabulary(vocab_size))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
    )
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    fast.save_pretrained(tmp)
    return _publish(tmp, out, {"kind": "tokenizer", "vocab_size": vocab_size})


def build_llama(
    out_dir: str | Path,
    tokenizer_dir: str | Path,
    *,
    layers: int = 2,
    hidden: int = 64,
    ffn: int = 128,
    heads: int = 4,
    kv_heads: int = 2,
    max_positions: int = 512,
    seed: int = 0,
) -> Path:
    """A random-init Llama (float32, untied embeddings) with the tokenizer copied beside it."""
    out = Path(out_dir)
    if _finished(out):
        return out
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=ffn,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        torch_dtype="float32",
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    meta = {
        "kind": "llama",
        "layers": layers,
        "hidden": hidden,
        "ffn": ffn,
        "heads": heads,
        "kv_heads": kv_heads,
        "seed": seed,
    }
    return _publish(tmp, out, meta)


def build_pruned_anymodel(
    teacher_dir: str | Path,
    out_dir: str | Path,
    *,
    no_op_attention_layer: int | Sequence[int] = 0,
    pruned_ffn_layer: int | Sequence[int] = 1,
    ffn_keep: float = 0.5,
) -> Path:
    """A Puzzletron AnyModel student: the teacher converted with modelopt's AnyModel converter,
    then really pruned: attention of ``no_op_attention_layer`` (one layer or several) removed
    (no_op) and the FFN of ``pruned_ffn_layer`` (one or several) narrowed to ``ffn_keep`` of its
    width by slicing its weights."""
    out = Path(out_dir)
    if _finished(out):
        return out
    from kd.compat import install_import_stubs

    install_import_stubs()
    from modelopt.torch.puzzletron.anymodel import convert_model

    no_ops, pruned = (
        [x] if isinstance(x, int) else list(x) for x in (no_op_attention_layer, pruned_ffn_layer)
    )
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    convert_model(str(teacher_dir), str(tmp), "llama")
    config = json.loads((tmp / "config.json").read_text())
    blocks = config["block_configs"]
    for name, layers in (("no_op_attention_layer", no_ops), ("pruned_ffn_layer", pruned)):
        for layer in layers:
            if not 0 <= layer < len(blocks):
                raise ValueError(
                    f"{name}={layer} is out of range: the model has {len(blocks)} layers")
    widths = []
    for layer in pruned:
        full = blocks[layer]["ffn"]["intermediate_size"]
        width = int(full * ffn_keep)
        if not 0 < width < full:
            raise ValueError(
                f"ffn_keep={ffn_keep} must leave between 1 and all-but-one FFN channels")
        blocks[layer]["ffn"]["intermediate_size"] = width
        widths.append(width)
        _slice_ffn(tmp / f"subblocks_safetensors/block_{layer}_ffn.safetensors", width)
    for layer in no_ops:
        # a no-op attention must not carry a KV-head count (megatron-core asserts on it)
        blocks[layer]["attention"].update(no_op=True, num_key_value_heads=None)
        _drop_subblock(tmp, f"subblocks_safetensors/block_{layer}_attention.safetensors")
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    meta = {
        "kind": "anymodel",
        "teacher": str(teacher_dir),
        "no_op_attention_layers": no_ops,
        "pruned_ffn_layers": pruned,
        "ffn_widths": widths,
    }
    return _publish(tmp, out, meta)


def _slice_ffn(path: Path, width: int) -> None:
    """Keep the first ``width`` channels of a SwiGLU MLP (gate/up rows, down columns)."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    for name, t in tensors.items():
        if name.endswith(("gate_proj.weight", "up_proj.weight")):
            tensors[name] = t[:width].contiguous()
        elif name.endswith("down_proj.weight"):
            tensors[name] = t[:, :width].contiguous()
    save_file(tensors, str(path), metadata={"format": "pt"})


def _drop_subblock(model_dir: Path, rel_file: str) -> None:
    """Delete one subblock file and its entries in the safetensors index."""
    index_path = model_dir / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if v != rel_file}
    index_path.write_text(json.dumps(index, indent=2) + "\n")
    (model_dir / rel_file).unlink()
