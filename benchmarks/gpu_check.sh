#!/usr/bin/env bash
# One short device check: APTS seconds per iteration, sequential vs batched replicas,
# D in {1, 2, 4, 8}, Burgers, float64, on the GPU (and the CPU build's numbers come
# from benchmarks/apts_speed.py on the CPU machine).  Usage: bash benchmarks/gpu_check.sh [OUTDIR]
set -uo pipefail
out=${1:-gpu_results}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/gpu.txt"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())" | tee -a "$out/gpu.txt"
for d in 1 2 4 8; do
  for mode in sequential batched; do
    python benchmarks/apts_speed.py --device cuda --subdomains "$d" --replicas "$mode" --iterations 15 --warmup 3 \
      2>&1 | tee -a "$out/apts_speed.txt"
  done
done
