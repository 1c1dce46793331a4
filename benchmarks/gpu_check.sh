#!/usr/bin/env bash
# One device check (at most about 8 minutes on an H100/H200): APTS D = 4 on Burgers, float64,
# eager and compiled, sequential and batched replicas; TR, Adam and L-BFGS rows beside it through
# Trainer.fit; APTS through Trainer.fit against its bare loop; then as much of the README's main
# job (2000 iterations, compiled) as fits in the time left.  Tables go to OUTDIR (default
# gpu_results); copy them to benchmarks/results/.
#   Usage: bash benchmarks/gpu_check.sh [OUTDIR]
#   On the lent H100/H200 give the interpreter that holds torch: PYTHON=/opt/torch/.venv/bin/python3
#   (a symlink to it loses its venv), and PYTHONPATH=$PWD, PYTHONUNBUFFERED=1; pipe nothing through tail.
#   Test its CPU path with tiny runs: DEVICE=cpu ITERS=2 WARMUP=1 MAIN=3 bash benchmarks/gpu_check.sh /tmp/out
set -uo pipefail
out=${1:-gpu_results}
device=${DEVICE:-cuda}
iters=${ITERS:-15}
warmup=${WARMUP:-5}
main=${MAIN:-2000}
# Seconds each part may take (a lease is short): APTS rows, the Trainer.fit table, the main job (0 skips it).
t_apts=${T_APTS:-150}
t_method=${T_METHOD:-200}
t_main=${T_MAIN:-240}
mkdir -p "$out"
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"; } | tee "$out/device.txt"
"${PYTHON:-python}" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())" | tee -a "$out/device.txt"
py=${PYTHON:-python}
for args in "--replicas sequential --compile off" "--replicas sequential --compile on" "--replicas batched --compile off"; do
  timeout "$t_apts" "$py" benchmarks/apts_speed.py --device "$device" --subdomains 4 $args --iterations "$iters" --warmup "$warmup" \
    2>&1 | grep -v Warning | tee -a "$out/apts_speed.txt"
done
timeout "$t_method" "$py" benchmarks/method_speed.py --device "$device" --iterations "$iters" --warmup "$warmup" \
  --methods adam lbfgs tr tr_compiled apts apts_compiled apts_loop 2>&1 | grep -v Warning | tee "$out/method_speed.md"
# The main job: warm-up (compilation) + iterations x mean = its wall time, compilation included.
if [ "$t_main" -gt 0 ]; then
  timeout "$t_main" "$py" benchmarks/apts_speed.py --device "$device" --subdomains 4 --replicas sequential --compile on \
    --iterations $((main - 5)) --warmup 5 2>&1 | grep -v Warning | tee "$out/main_job.txt"
fi
