"""The options Model-Optimizer's ``examples/megatron_bridge/distill.py`` offers (issue 15, item 3),
as config sections shared by the experiment config and the distill spec (stdlib only).

Each check sits beside its field (``__post_init__`` raises ``FieldError``; the converter
``launch.schema.build`` prefixes the section, so a message names e.g. ``optimizer.adam_beta2``).
``kd/distill.py`` turns them into Megatron-Bridge's config objects (``optimizer_configs``,
``checkpoint_config``, ``logger_config``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from kd.specs import FieldError, _require

# megatron-core 0.16.1 TransformerConfig.recompute_modules: the dense ones work for every student
# here; the others need MoE or MLA layers, which no model of this project has.
RECOMPUTE_MODULES = ("core_attn", "mlp", "layernorm")
RECOMPUTE_MODULES_UNSUPPORTED = {
    "moe": "needs MoE layers",
    "moe_act": "needs MoE layers with grouped GEMM",
    "shared_experts": "needs MoE shared experts",
    "mla_up_proj": "needs multi-latent attention",
}
LR_DECAY_STYLES = ("cosine", "linear", "constant", "inverse-square-root", "WSD")
WANDB_MODES = ("offline", "online", "disabled")


def _number(value: object, name: str, low: float, high: float | None = None,
            low_open: bool = False, high_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    lo = f"{'>' if low_open else '>='} {low}"
    hi = "" if high is None else f" and {'<' if high_open else '<='} {high}"
    _require(ok, name, value, f"must be a number {lo}{hi}")


def check_recompute_modules(modules: tuple[str, ...], recompute: str,
                            name: str = "recompute_modules") -> None:
    """``train.recompute_modules``: only with ``recompute: selective``; names megatron-core knows
    and that apply to the dense/AnyModel students here."""
    if recompute != "selective":
        _require(not modules, name, list(modules),
                 "only used with recompute: selective; remove it or set recompute: selective")
        return
    _require(bool(modules), name, list(modules),
             f"recompute: selective needs at least one module, e.g. [core_attn] (choose from "
             f"{', '.join(RECOMPUTE_MODULES)})")
    for m in modules:
        if m in RECOMPUTE_MODULES_UNSUPPORTED:
            raise FieldError(name, list(modules), f"{m!r} {RECOMPUTE_MODULES_UNSUPPORTED[m]}; the "
                             f"students here are dense: choose from {', '.join(RECOMPUTE_MODULES)}")
        _require(m in RECOMPUTE_MODULES, name, list(modules),
                 f"{m!r} is not a megatron-core recompute module: choose from "
                 f"{', '.join(RECOMPUTE_MODULES)}")
    _require(len(set(modules)) == len(modules), name, list(modules), "a module is named twice")


@dataclass(frozen=True)
class OptimizerOptions:
    """Adam and the learning-rate schedule (peak/min lr and warm-up stay in ``train``)."""

    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    weight_decay: float = 0.01
    clip_grad: float = 1.0  # global gradient-norm clip; 0 turns clipping off
    lr_decay_style: str = "cosine"  # cosine | linear | constant | inverse-square-root | WSD

    def __post_init__(self) -> None:
        _number(self.adam_beta1, "adam_beta1", 0.0, 1.0, high_open=True)
        _number(self.adam_beta2, "adam_beta2", 0.0, 1.0, high_open=True)
        _number(self.adam_eps, "adam_eps", 0.0, low_open=True)
        _number(self.weight_decay, "weight_decay", 0.0)
        _number(self.clip_grad, "clip_grad", 0.0)
        _require(self.lr_decay_style in LR_DECAY_STYLES, "lr_decay_style", self.lr_decay_style,
                 f"choose one of {', '.join(LR_DECAY_STYLES)}")


@dataclass(frozen=True)
class CheckpointOptions:
    """How distill saves: retention and async writes (the save interval is ``train.save_interval``)."""

    # keep the newest k complete checkpoints (kd.checkpoints.prune); null keeps all. The latest
    # complete one (what a rerun resumes from), export.iteration and checkpoint candidates are
    # never deleted.
    keep_last: int | None = None
    # Megatron's async save (torch_dist): training goes on while a background worker writes.
    # Needs CUDA (the worker calls torch.cuda.set_device): refused on CPU runs
    # (kd.distill.check_options and the launch-time check).
    async_save: bool = False

    def __post_init__(self) -> None:
        _require(self.keep_last is None or (isinstance(self.keep_last, int) and self.keep_last >= 1),
                 "keep_last", self.keep_last,
                 "must be >= 1 (the latest complete checkpoint is what a rerun resumes from), or "
                 "null to keep every checkpoint")


@dataclass(frozen=True)
class LoggingOptions:
    """TensorBoard timers and the optional Weights & Biases logger.

    W&B: set ``wandb_project`` to turn it on (needs ``pip install wandb`` in the job's
    environment). ``wandb_mode: offline`` (default) writes under ``RUN/distill/wandb`` for a later
    ``wandb sync``; ``online`` reads the key from ``WANDB_API_KEY`` in the launching environment
    only: no config field holds it.
    """

    timers: int = 0  # Megatron timing_log_level 0|1|2; > 0 also writes the timers to TensorBoard
    wandb_project: str | None = None
    wandb_entity: str | None = None
    wandb_name: str | None = None  # default: the experiment name
    wandb_mode: str = "offline"  # offline | online | disabled
    wandb_api_key: str | None = None  # never set: refused with the way to pass the key

    def __post_init__(self) -> None:
        _require(self.wandb_api_key is None, "wandb_api_key", "<hidden>",
                 "a W&B key is never read from a config (configs are copied into manifest.json "
                 "and job files): remove it and export WANDB_API_KEY in the shell that launches")
        _require(self.timers in (0, 1, 2) and not isinstance(self.timers, bool), "timers",
                 self.timers, "choose 0 (iteration time only), 1 or 2 (finer timers, written to "
                 "TensorBoard)")
        _require(self.wandb_mode in WANDB_MODES, "wandb_mode", self.wandb_mode,
                 f"choose one of {', '.join(WANDB_MODES)}")
        for name in ("wandb_project", "wandb_entity", "wandb_name"):
            value = getattr(self, name)
            _require(value is None or (isinstance(value, str) and value.strip() != ""), name,
                     value, "give a non-empty name or remove the key")
