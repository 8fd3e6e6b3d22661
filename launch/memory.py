"""Peak GPU memory of one distill rank, estimated from the HF configs (login node: pure Python).

    estimate(student_cfg, teacher_cfg, tp=2, pp=1, seq=2048, mbs=2) -> Estimate (GiB parts)

What is counted (Megatron, bf16 mixed precision; the distributed optimizer and sequence
parallelism where the layout has them):
- student weights, 18 bytes per parameter: bf16 weights (2) + fp32 main weights (4) + fp32
  gradient buffer (4) + Adam moments (8), divided over TP x PP; with Megatron's distributed
  optimizer (``sharded_optimizer=True``, the default when DP > 1) the 12 bytes of fp32 main
  weights and moments are further divided over DP: ``6 + 12 / dp`` bytes per parameter;
- teacher weights, bf16 (2 bytes per parameter), divided over TP x PP, no optimizer state;
- student activations per layer, bytes (the terms of Korthikanti et al. 2022, bf16, with
  coefficients fitted to measurements): ``seq * mbs * (ACT_LAYER * hidden`` for norms and
  residuals, ``+ ACT_ATTENTION * hidden / tp`` when the layer has attention, ``+ ACT_FFN *
  ffn_width / tp`` for its SwiGLU MLP (AnyModel no-op parts count 0), ``)``, plus
  ``ACT_SCORES * heads * seq^2 * mbs / tp`` when attention is the unfused local one (SDPA keeps
  no score matrix);
- with sequence parallelism (``sequence_parallel=True``, the stage's default at TP > 1 since
  kd/fused.py) the ``ACT_LAYER`` term is divided by tp too: each rank keeps the norm inputs,
  residuals and dropout masks of its slice of the sequence, and the column-parallel linears
  save their SP-sharded input (re-gathered in backward). That is Korthikanti et al.'s analysis
  (34 sbh/t instead of (10 + 24/t) sbh), **not a fit**: every layout the coefficients were fitted
  to, and every held-out one, ran without sequence parallelism (without TE it was off until
  kd/fused.py), so ``ACT_LAYER`` itself was measured unsplit;
- with ``recompute=True`` (full, one layer per checkpoint): each layer's bf16 input
  ``2 * seq * mbs * hidden`` (``/ tp`` with sequence parallelism: the checkpointed input is the
  rank's slice) plus the largest single layer's activations;
- KD logits: student and teacher logits and the softmax / KL intermediates over the TP-sharded
  padded vocabulary, ``LOGIT_COPIES`` fp32 copies of ``seq * mbs * vocab / tp``.

The five coefficients are a least-squares fit to peak memory measured on H100 for 12 layouts
(TP 1/2/4, micro-batch 1/2/4, seq 1024/2048/4096, local and SDPA attention, three students:
benchmarks/results/h100x4_2026-11-28*.json); every one is within 2 %, and
tests/launch/test_memory.py holds them to 15 %. Layouts measured after the fit are checked there
too (held-out validation): 4 on the 1B pair (within 6.1 %) and 7 at the 8B widths with a 128k
vocabulary (h200x1_2026-11-28_issue14_8b.json, within 3.5 %, held to 10 %).
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1024**3
LOGIT_COPIES = 6.8
# kd/kd_loss.py's chunked KL keeps the bf16 student and teacher logits and the bf16 gradient
# instead: 3 x 2 bytes = 1.5 fp32 copies (analytic; checked against the 8B-shaped run)
LOGIT_COPIES_CHUNKED = 1.5
ACT_LAYER = 10.6
ACT_ATTENTION = 10.2
ACT_FFN = 6.9
ACT_SCORES = 2.3
OPTIMIZER_BYTES = 18  # bf16 param + fp32 main param + fp32 grad + 2 x fp32 Adam moments
SHARDED_BYTES = 12  # of those, what Megatron's distributed optimizer splits over DP ranks:
#                     fp32 main param + 2 x fp32 Adam moments (bf16 param and fp32 grad stay whole)
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


def head_counts(cfg: dict) -> tuple[int, list[int]]:
    """Attention heads and the KV-head counts of every attention layer (AnyModel aware)."""
    heads = int(cfg.get("num_attention_heads", 0))
    blocks = cfg.get("block_configs")
    if blocks:
        kv = []
        for b in blocks:
            att = b.get("attention", {}) if isinstance(b, dict) else {}
            if att.get("no_op") or att.get("replace_with_linear"):
                continue
            n = att.get("num_key_value_heads") or cfg.get("num_key_value_heads") or heads
            kv.append(int(n))
        return heads, kv
    return heads, [int(cfg.get("num_key_value_heads") or heads)]


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


def distributed_optimizer(value: object, dp: int) -> bool:
    """``train.distributed_optimizer`` resolved (``kd.sections.sharded_optimizer``: the rule)."""
    from kd.sections import sharded_optimizer

    return sharded_optimizer(value, dp)


def estimate(student: dict, teacher: dict, *, tp: int, pp: int = 1, seq: int, mbs: int,
             attention: str = "sdpa", recompute: bool = False, dp: int = 1,
             sharded_optimizer: bool = False, kd_loss: str = "full",
             sequence_parallel: bool = False) -> Estimate:
    """Peak GiB per rank; ``sharded_optimizer``: Megatron's distributed optimizer over ``dp``;
    ``kd_loss``: ``full`` (ModelOpt's KL) or ``chunked`` (kd/kd_loss.py);
    ``sequence_parallel``: the per-layer norm/residual term split over tp (analytic, above)."""
    shards = tp * pp
    sp = tp if sequence_parallel else 1  # what divides the sequence-wide, TP-replicated terms
    per_param = (OPTIMIZER_BYTES - SHARDED_BYTES + SHARDED_BYTES / max(1, dp)
                 if sharded_optimizer else OPTIMIZER_BYTES)
    h, heads = int(student["hidden_size"]), int(student["num_attention_heads"])
    layers = [b for b in _blocks(student)]
    acts = 0.0
    for has_att, ffn in layers:
        full = seq * mbs * (ACT_LAYER * h / sp + (ACT_ATTENTION * h / tp if has_att else 0.0)
                            + ACT_FFN * ffn / tp)
        if has_att and attention == "local":
            full += ACT_SCORES * heads * seq * seq * mbs / tp
        # full recomputation keeps only each layer's bf16 input, plus one layer rebuilt at a time
        acts = max(acts, full) if recompute else acts + full
    if recompute:
        acts += len(layers) * 2 * seq * mbs * h / sp
    copies = LOGIT_COPIES_CHUNKED if kd_loss == "chunked" else LOGIT_COPIES
    logits = copies * 4 * seq * mbs * padded_vocab(student, tp) / tp
    return Estimate(
        student_states=per_param * parameters(student, tp) / shards / GIB,
        teacher_weights=2 * parameters(teacher, tp) / shards / GIB,
        # 1F1B: the first stage holds pp micro-batches of its layers/pp layers: all layers' worth
        activations=acts / GIB,
        logits=logits / GIB,
    )
