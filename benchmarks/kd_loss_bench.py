"""The KD loss alone at the 8B shape: ModelOpt's full-vocabulary KL vs kd/kd_loss.py's chunked
one. One GPU, random bf16 logits [seq, mbs, vocab], forward + backward.

    python benchmarks/kd_loss_bench.py --seq 4096 --vocab 128256 --mbs 1,2 --out loss.json

Per micro-batch size and loss: median milliseconds of forward + backward (CUDA events, after
warm-up), the peak memory it adds above its inputs (GiB), and the chunked loss's relative
error against the full one (loss and gradient, same inputs).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def measure(fn, student, teacher, reps: int) -> tuple[float, float, object, object]:
    import torch

    times = []
    for i in range(reps + 2):
        student.grad = None
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        loss = fn(student, teacher)
        loss.sum().backward()
        b.record()
        torch.cuda.synchronize()
        if i >= 2:
            times.append(a.elapsed_time(b))
        peak = (torch.cuda.max_memory_allocated() - base) / 2**30
    return statistics.median(times), peak, loss.detach(), student.grad.detach().clone()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seq", type=int, default=4096)
    p.add_argument("--vocab", type=int, default=128256)
    p.add_argument("--mbs", default="1,2")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--out", type=Path, default=Path("runs/kd_loss_bench.json"))
    args = p.parse_args()
    import torch

    from kd.kd_loss import chunked_kl, reference_kl

    result = {"device": torch.cuda.get_device_name(0), "seq": args.seq, "vocab": args.vocab,
              "reps": args.reps, "rows": []}
    for mbs in (int(m) for m in args.mbs.split(",")):
        gen = torch.Generator(device="cuda").manual_seed(mbs)
        shape = (args.seq, mbs, args.vocab)
        student = (torch.randn(shape, device="cuda", generator=gen) * 2).bfloat16()
        teacher = (torch.randn(shape, device="cuda", generator=gen) * 2).bfloat16()
        student.requires_grad_()
        rows = {}
        for name, fn in (("full", reference_kl), ("chunked", chunked_kl)):
            ms, peak, loss, grad = measure(fn, student, teacher, args.reps)
            rows[name] = (ms, peak, loss, grad)
        (f_ms, f_peak, f_loss, f_grad), (c_ms, c_peak, c_loss, c_grad) = rows["full"], rows[
            "chunked"]
        row = {
            "mbs": mbs,
            "full_ms": round(f_ms, 2), "chunked_ms": round(c_ms, 2),
            "full_peak_extra_gib": round(f_peak, 2), "chunked_peak_extra_gib": round(c_peak, 2),
            "loss_rel_err": float((c_loss - f_loss).norm() / f_loss.norm()),
            "grad_rel_err": float((c_grad.float() - f_grad.float()).norm()
                                  / f_grad.float().norm()),
        }
        result["rows"].append(row)
        print("KD_LOSS_BENCH " + json.dumps(row), flush=True)
        del student, teacher, rows
        torch.cuda.empty_cache()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
