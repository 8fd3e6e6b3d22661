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



def _tp_rank(rank: int, init: str, queue) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    gen = torch.Generator().manual_seed(7)
    s_full = torch.randn(5, 2, 40, generator=gen) * 3
    t_full = torch.randn(5, 2, 40, generator=gen) * 3
    upstream = torch.rand(5, 2, generator=gen)
    part = slice(20 * rank, 20 * (rank + 1))  # this rank's half of the vocabulary
    s = s_full[..., part].clone().requires_grad_()
    loss = chunked_kl(s, t_full[..., part], 1.5, chunk_tokens=4, group=dist.group.WORLD)
    (loss * upstream).sum().backward()
    queue.put((rank, loss.detach().numpy(), s.grad.numpy()))  # plain pickles, no shm
    dist.destroy_process_group()


def test_chunked_kl_over_a_tensor_parallel_vocabulary_matches_the_full_one(tmp_path):
    """2 gloo ranks, half the vocabulary each: the partial losses sum to the full loss (ModelOpt
    sums them over TP) and each rank's gradient is its slice of the full gradient."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    init = f"file://{tmp_path / 'rendezvous'}"
    procs = [ctx.Process(target=_tp_rank, args=(r, init, queue)) for r in range(2)]
    for p in procs:
        p.start()
    got = {r: (torch.from_numpy(loss), torch.from_numpy(grad))
           for r, loss, grad in (queue.get(timeout=120) for _ in procs)}
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    gen = torch.Generator().manual_seed(7)
    s_full = (torch.randn(5, 2, 40, generator=gen) * 3).requires_grad_()
    t_full = torch.randn(5, 2, 40, generator=gen) * 3
    upstream = torch.rand(5, 2, generator=gen)
    ref = reference_kl(s_full, t_full, 1.5)
    (ref * upstream).sum().backward()
    torch.testing.assert_close(got[0][0] + got[1][0], ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat([got[0][1], got[1][1]], dim=-1), s_full.grad,
                               rtol=1e-5, atol=1e-6)
