"""GPU kinds the cost estimate knows: datasheet peak and intra-node bus bandwidth (stdlib only).

A leaf: ``launch/config.py`` checks ``cluster.gpu_kind`` against ``GPU_KINDS`` and
``launch/cost.py`` computes with it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GpuKind:
    key: str
    name: str
    peak_tflops: float  # dense bf16 per GPU, datasheet (SXM where there are variants)
    bus_gbps: float  # NCCL all-reduce bus bandwidth inside a node, GB/s (datasheet level)


GPU_KINDS: dict[str, GpuKind] = {k.key: k for k in (
    GpuKind("a100", "NVIDIA A100", 312.0, 230.0),
    GpuKind("h100", "NVIDIA H100 SXM", 989.0, 360.0),
    GpuKind("h200", "NVIDIA H200", 989.0, 360.0),
    GpuKind("gh200", "NVIDIA GH200", 989.0, 360.0),
    GpuKind("b200", "NVIDIA B200", 2250.0, 720.0),
    GpuKind("l40s", "NVIDIA L40S", 362.0, 25.0),
)}
