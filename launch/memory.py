"""Peak GPU memory of one distill rank, estimated from the HF configs (login node: pure Python).

    estimate(student_cfg, teacher_cfg, tp=2, pp=1, seq=2048, mbs=2) -> Estimate (GiB parts)

What is counted (Megatron, bf16 mixed precision, no distributed optimizer, no sequence
parallelism — the distill stage's defaults without TE):
- student weights, 18 bytes per parameter: bf16 weights (2) + fp32 main weights (4) + fp32
  gradient buffer (4) + Adam moments (8), divided over TP x PP;
- teacher weights, bf16 (2 bytes per parameter), divided over TP x PP, no optimizer state;
- student activations per layer (Korthikanti et al. 2022, bf16):
  ``seq * mbs * hidden * (10 + 24 / tp)`` bytes, plus ``5 * heads * seq^2 * mbs / tp`` when the
  attention is the unfused local one (SDPA/flash keeps no score matrix);
- with ``recompute=True`` (full, one layer per checkpoint): each layer's bf16 input
  ``2 * seq * mbs * hidden`` plus the largest single layer's activations;
- KD logits: student and teacher logits and the softmax / KL intermediates over the TP-sharded
  padded vocabulary, ``LOGIT_COPIES`` fp32 copies of ``seq * mbs * vocab / tp``.

``LOGIT_COPIES`` is the one fitted constant (from the 1B TP=2 SDPA mbs=1 run); the estimate is
checked against peak memory measured on 4 x H100 for six layouts in tests/launch/test_memory.py
(all within 15 %).
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1024**3
LOGIT_COPIES = 10.8
OPTIMIZER_BYTES = 18  # bf16 param + fp32 main param + fp32 grad + 2 x fp32 Adam moments
VOCAB_MULTIPLE = 128  # Megatron pads the vocabulary to a multiple of 128 x TP


@dataclass(frozen=True)
class Estimate:
    student_states: float
    teacher_weights: float
    activations: float
    logits: float

    @property
    def total(self) -> float:
        return self.student_states + self.teacher_weights + self.activations + self.logits


def _blocks(cfg: dict) -> list[tuple[bool, int]]:
    """(has attention, FFN width) per layer; AnyModel ``block_configs`` aware."""
    n, ffn = int(cfg["num_hidden_layers"]), int(cfg.get("intermediate_size", 0))
    blocks = cfg.get("block_configs")
    if not blocks:
        return [(True, ffn)] * n
    out = []
    for b in blocks:
        att, mlp = b.get("attention", {}), b.get("ffn", {})
        has_att = not (att.get("no_op") or att.get("replace_with_linear"))
        width = 0 if mlp.get("no_op") else int(mlp.get("intermediate_size") or ffn)
        out.append((has_att, width))
    return out


def padded_vocab(cfg: dict, tp: int) -> int:
    multiple = VOCAB_MULTIPLE * tp
    v = int(cfg["vocab_size"])
    return -(-v // multiple) * multiple


def parameters(cfg: dict, tp: int = 1) -> int:
    """Parameter count as Megatron holds it (padded vocabulary, untied unless configured)."""
    h, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    head_dim = int(cfg.get("head_dim") or h // heads)
    kv = int(cfg.get("num_key_value_heads") or heads)
    total = padded_vocab(cfg, tp) * h * (1 if cfg.get("tie_word_embeddings") else 2) + h
    for has_att, ffn in _blocks(cfg):
        if has_att:
            total += h * heads * head_dim * 2 + h * kv * head_dim * 2 + h
        total += 3 * h * ffn + (h if ffn else 0)
    return total


def estimate(student: dict, teacher: dict, *, tp: int, pp: int = 1, seq: int, mbs: int,
             attention: str = "sdpa", recompute: bool = False) -> Estimate:
    shards = tp * pp
    h, heads = int(student["hidden_size"]), int(student["num_attention_heads"])
    layers = [b for b in _blocks(student)]
    per_layer = seq * mbs * h * (10 + 24 / tp)
    acts = 0.0
    for has_att, _ in layers:
        full = per_layer + (5 * heads * seq * seq * mbs / tp
                            if has_att and attention == "local" else 0.0)
        # full recomputation keeps only each layer's bf16 input, plus one layer rebuilt at a time
        acts = max(acts, full) if recompute else acts + full
    if recompute:
        acts += len(layers) * 2 * seq * mbs * h
    logits = LOGIT_COPIES * 4 * seq * mbs * padded_vocab(student, tp) / tp
    return Estimate(
        student_states=OPTIMIZER_BYTES * parameters(student, tp) / shards / GIB,
        teacher_weights=2 * parameters(teacher, tp) / shards / GIB,
        activations=acts / pp / GIB,
        logits=logits / GIB,
    )
