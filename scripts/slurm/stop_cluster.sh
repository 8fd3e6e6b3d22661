#!/usr/bin/env bash
# Stop the local SLURM test cluster: cancel jobs, then stop every daemon by pid file.
# Same as `scripts/slurm/start_cluster.sh stop`.
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/start_cluster.sh" stop
