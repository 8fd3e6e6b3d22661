"""kd/kd_loss.py: the chunked KL loss equals ModelOpt's LogitsKLLoss in value and gradient."""

from __future__ import annotations

import pytest
import torch

from kd.kd_loss import chunked_kl, reference_kl


@pytest.mark.parametrize("dtype,temperature,chunk", [(torch.float32, 1.0, 3),
                                                      (torch.float32, 2.0, 64),
                                                      (torch.bfloat16, 1.0, 5)])
def test_chunked_kl_matches_the_full_loss_and_gradient(dtype, temperature, chunk):
    gen = torch.Generator().manual_seed(int(temperature * 10) + chunk)
    seq, batch, vocab = 7, 2, 97  # 14 tokens: chunks of 3 and 5 leave a ragged last chunk
    s0 = (torch.randn(seq, batch, vocab, generator=gen) * 3).to(dtype)
    t = (torch.randn(seq, batch, vocab, generator=gen) * 3).to(dtype)
    upstream = torch.rand(seq, batch, generator=gen)  # a loss mask / scale, as Megatron applies
    ref_s, ours_s = s0.clone().requires_grad_(), s0.clone().requires_grad_()
    ref = reference_kl(ref_s, t, temperature)
    ours = chunked_kl(ours_s, t, temperature, chunk_tokens=chunk)
    assert ours.shape == ref.shape == (seq, batch) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    (ref * upstream).sum().backward()
    (ours * upstream).sum().backward()
    assert ours_s.grad.dtype == dtype
    tol = 1e-6 if dtype == torch.float32 else 1e-2  # bf16 gradients: rounding of the cast only
    torch.testing.assert_close(ours_s.grad.float(), ref_s.grad.float(), rtol=tol, atol=tol)
    assert ref_s.grad.abs().sum() > 0


def test_chunked_kl_refuses_mismatched_vocabularies():
    with pytest.raises(ValueError, match="same vocabulary"):
        chunked_kl(torch.zeros(2, 1, 5), torch.zeros(2, 1, 6))

