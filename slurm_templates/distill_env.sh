# Environment of the distill job on GPU nodes (inlined into its sbatch `# setup` section).
# Megatron: one CUDA work queue so TP communication overlaps in issue order.
export CUDA_DEVICE_MAX_CONNECTIONS=1
# NCCL: surface errors instead of hanging; keep the defaults otherwise (sites tune the rest
# through the cluster profile's `env`).
export TORCH_NCCL_ASYNC_ERROR_HANDLING=1
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
