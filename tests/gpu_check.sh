#!/usr/bin/env bash
# The one-GPU check (tests/gpu_check.py): parity, fused attention, collectives, the Triton kernel, the sampler, the
# KV-cache budget, three GRPO steps with mining, a save and a resume. One line per check; < 8 minutes on an H100.
# Needs one CUDA device and the project's requirements; downloads nothing.   Usage: bash tests/gpu_check.sh [WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
export TRITON_INTERPRET=0 PYTHONUNBUFFERED=1  # the real Triton backend (CI's CPU runs interpret)
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: no CUDA device, nothing to check')"
python tests/gpu_check.py --device cuda ${1:+--workdir "$1"}
