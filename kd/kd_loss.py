"""Chunked logit KL loss for distillation: the same value and gradient as ModelOpt's
``LogitsKLLoss``, without the full-vocabulary fp32 intermediates.

ModelOpt's ``LogitsKLLoss`` upcasts the student and teacher logits ([seq, batch, vocab/TP],
bf16) to fp32, takes both log-softmaxes and the elementwise KL, and autograd keeps several of
those fp32 tensors until backward: about 6.8 fp32 copies of the logits (``launch/memory.py``
``LOGIT_COPIES``), 13 GiB per sequence of 4096 tokens at a 128k vocabulary. Here the loss is
one autograd function that walks the tokens in chunks (``chunk_tokens``, default: about 64 M
logits per chunk) and keeps only the two bf16 logit tensors it was given plus one fp32 log-sum-
exp per token and model; backward recomputes each chunk's softmaxes and writes the gradient
``g * (softmax(student / T) - softmax(teacher / T)) / T`` chunk by chunk.

Forward KL as ModelOpt computes it: ``sum_v p_t (log p_t - log p_s)``, ``p = softmax(x / T)``.
With tensor parallelism each rank holds a slice of the vocabulary; the max and the sum of
exponentials are all-reduced over the TP group (forward only: the gradient above needs no
communication), and the returned per-token loss is the rank's partial sum, which ModelOpt's
loss reduction sums over TP (``tp_reduce=True``), as for its own loss.

The distill stage keeps ModelOpt's ``LogitsKLLoss`` (it measured faster at the 8B widths);
``benchmarks/kd_throughput.py`` (variant ``ours_chunked``) swaps this one in, only in its own
worker process, for the side-by-side measurement.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger("kd.kd_loss")
CHUNK_ELEMENTS = 1 << 26  # logits per chunk: 256 MiB per fp32 temporary


def _lse(x: torch.Tensor, group) -> torch.Tensor:
    """Log-sum-exp over the last dim, across the TP group's vocabulary slices when given."""
    if group is None:
        return torch.logsumexp(x, dim=-1)
    import torch.distributed as dist

    m = x.max(dim=-1).values
    dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
    s = torch.exp(x - m.unsqueeze(-1)).sum(dim=-1)
    dist.all_reduce(s, op=dist.ReduceOp.SUM, group=group)
    return m + torch.log(s)


class _ChunkedKL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student, teacher, temperature, chunk, group):
        vocab = student.shape[-1]
        s2, t2 = student.reshape(-1, vocab), teacher.reshape(-1, vocab)
        n = s2.shape[0]
        loss = torch.empty(n, dtype=torch.float32, device=student.device)
        lse_s, lse_t = torch.empty_like(loss), torch.empty_like(loss)
        for i in range(0, n, chunk):
            xs = s2[i : i + chunk].float() / temperature
            xt = t2[i : i + chunk].float() / temperature
            ls, lt = _lse(xs, group), _lse(xt, group)
            lse_s[i : i + chunk], lse_t[i : i + chunk] = ls, lt
            xt.sub_(lt.unsqueeze(-1))  # log p_t
            xs.sub_(ls.unsqueeze(-1))  # log p_s
            xs.neg_().add_(xt)  # log p_t - log p_s
            loss[i : i + chunk] = (xt.exp_() * xs).sum(dim=-1)
        ctx.save_for_backward(student, teacher, lse_s, lse_t)
        ctx.temperature, ctx.chunk = temperature, chunk
        return loss.view(student.shape[:-1])

    @staticmethod
    def backward(ctx, grad_loss):
        student, teacher, lse_s, lse_t = ctx.saved_tensors
        temperature, chunk = ctx.temperature, ctx.chunk
        vocab = student.shape[-1]
        s2, t2 = student.reshape(-1, vocab), teacher.reshape(-1, vocab)
        g = grad_loss.reshape(-1).float() / temperature
        grad = torch.empty_like(s2)
        for i in range(0, s2.shape[0], chunk):
            ps = (s2[i : i + chunk].float() / temperature).sub_(lse_s[i : i + chunk, None]).exp_()
            pt = (t2[i : i + chunk].float() / temperature).sub_(lse_t[i : i + chunk, None]).exp_()
            grad[i : i + chunk] = ps.sub_(pt).mul_(g[i : i + chunk, None])
        return grad.view_as(student), None, None, None, None


def chunked_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0,
               chunk_tokens: int | None = None, group=None) -> torch.Tensor:
    """Per-token ``KL(softmax(teacher/T) || softmax(student/T))`` over the last dim, shape of
    ``student`` without its last dim; gradient to ``student`` only."""
    if student.shape != teacher.shape:
        raise ValueError(f"student logits {tuple(student.shape)} != teacher logits "
                         f"{tuple(teacher.shape)}: KD on logits needs the same vocabulary")
    chunk = chunk_tokens or max(1, CHUNK_ELEMENTS // student.shape[-1])
    return _ChunkedKL.apply(student, teacher.detach(), float(temperature), int(chunk), group)


def reference_kl(student: torch.Tensor, teacher: torch.Tensor,
                 temperature: float = 1.0) -> torch.Tensor:
    """ModelOpt's single-rank ``LogitsKLLoss`` arithmetic (full fp32 tensors), for comparisons."""
    import torch.nn.functional as F

    p = F.log_softmax(student.float() / temperature, dim=-1)
    q = F.log_softmax(teacher.detach().float() / temperature, dim=-1)
    return torch.sum(F.kl_div(p, q, reduction="none", log_target=True), dim=-1)


def chunked_loss_class():
    """``ChunkedLogitsKLLoss``: ModelOpt's ``LogitsKLLoss`` interface, this module's arithmetic."""
    from modelopt.torch.distill.plugins.megatron import LogitsKLLoss

    class ChunkedLogitsKLLoss(LogitsKLLoss):
        def forward(self, predictions, targets):
            if self._reverse:
                return super().forward(predictions, targets)
            predictions, targets = self.pre_forward(predictions, targets)
            group = None
            if self._config.tensor_model_parallel_size > 1:
                from megatron.core import parallel_state

                group = parallel_state.get_tensor_model_parallel_group()
            loss = chunked_kl(predictions, targets, self._temperature, group=group)
            return self.post_forward(loss, tp_reduce=True)

    return ChunkedLogitsKLLoss

