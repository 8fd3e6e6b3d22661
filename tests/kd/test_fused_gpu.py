"""GPU tier (device machine, one GPU): kd/fused.py's compiled norm and RoPE and megatron-core's
compiled SwiGLU and bias-dropout-add, with inductor (``kd.fused.BACKEND``'s default), against
the unfused modules, in fp32 and bf16. The CPU tests (tests/kd/test_sequence_parallel.py) run
the same checks with the aot_eager backend.

    source scripts/gpu/setup_device.sh   # on the device machine
    python -m pytest tests/kd/test_fused_gpu.py -s
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fusions_match_with_inductor_on_cuda(dtype):
    """The inductor kernels (kd.fused.BACKEND's default) against the unfused modules, on CUDA."""
    from kd import compat

    compat.activate("cuda")
    from tests.kd._sp_probe import fusion_checks

    tol = 1e-5 if dtype == "float32" else 2e-2  # bf16: one rounding of a fused vs split chain
    rows = fusion_checks("cuda", dtype)
    assert len(rows) == 7
    for r in rows:
        assert r["out_diff"] <= tol * max(1.0, r["scale"]), r
        assert r["grad_diff"] <= tol * max(1.0, r["scale"]) * 4, r
