#!/usr/bin/env bash
# One device check (at most about 8 minutes on an H100/H200), in parts that PARTS picks (default
# "apts method main"):
#   apts     APTS D = 4 on Burgers, float64, eager and compiled, sequential and batched replicas;
#   method   TR, Adam and L-BFGS rows beside it through Trainer.fit; APTS through Trainer.fit against
#            its bare loop;
#   main     as much of the README's main job (2000 iterations, compiled) as fits in the time left;
#   gn       the Gauss-Newton configs (configs/gauss_newton, D = 4) through Trainer.fit for MATRIX_ITERS
#            iterations, beside the CPU runs in results/gauss_newton (their runs go to OUTDIR/gn_runs);
#   cudatest the CUDA cases of tests/test_compiled.py (compiled against eager iterates on the GPU);
#   diag     benchmarks/compile_diag.py: which compiled call fails on the device, with its traceback;
#   matrix   the paper's APTS D = 4 configs of Heat, Laplace and Burgers the same way (OUTDIR/matrix_runs).
# Tables go to OUTDIR (default gpu_results); copy them to benchmarks/results/.
#   Usage: [PARTS="gn cudatest matrix"] bash benchmarks/gpu_check.sh [OUTDIR]
#   On the lent H100/H200 give the interpreter that holds torch: PYTHON=/opt/torch/.venv/bin/python3
#   (a symlink to it loses its venv), and PYTHONPATH=$PWD:<unpacked jsonargparse, docstring_parser,
#   and typeshed_client wheels>, PYTHONUNBUFFERED=1; pipe nothing through tail.
#   Test its CPU path with tiny runs: DEVICE=cpu ITERS=2 WARMUP=1 MAIN=3 MATRIX_ITERS=3 bash benchmarks/gpu_check.sh /tmp/out
set -uo pipefail
out=${1:-gpu_results}
device=${DEVICE:-cuda}
iters=${ITERS:-15}
warmup=${WARMUP:-5}
main=${MAIN:-2000}
matrix_iters=${MATRIX_ITERS:-80}
parts=" ${PARTS:-apts method main} "
# Seconds each part may take (a lease is short).
t_apts=${T_APTS:-150}
t_method=${T_METHOD:-200}
t_main=${T_MAIN:-240}
t_gn=${T_GN:-200}
t_cudatest=${T_CUDATEST:-150}
t_diag=${T_DIAG:-150}
t_matrix=${T_MATRIX:-200}
has() { [[ "$parts" == *" $1 "* ]]; }
mkdir -p "$out"
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"; } | tee "$out/device.txt"
"${PYTHON:-python}" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())" | tee -a "$out/device.txt"
py=${PYTHON:-python}
has apts && for args in "--replicas sequential --compile off" "--replicas sequential --compile on" "--replicas batched --compile off"; do
  timeout "$t_apts" "$py" benchmarks/apts_speed.py --device "$device" --subdomains 4 $args --iterations "$iters" --warmup "$warmup" \
    2>&1 | grep -v Warning | tee -a "$out/apts_speed.txt"
done
has method && timeout "$t_method" "$py" benchmarks/method_speed.py --device "$device" --iterations "$iters" --warmup "$warmup" \
  --methods adam lbfgs tr tr_compiled apts apts_compiled apts_loop 2>&1 | grep -v Warning | tee "$out/method_speed.md"
# The main job: warm-up (compilation) + iterations x mean = its wall time, compilation included.
if has main && [ "$t_main" -gt 0 ]; then
  timeout "$t_main" "$py" benchmarks/apts_speed.py --device "$device" --subdomains 4 --replicas sequential --compile on \
    --iterations $((main - 5)) --warmup 5 2>&1 | grep -v Warning | tee "$out/main_job.txt"
fi
# Each cell a fresh process through the runner (LightningCLI, replicas: auto = batched on a GPU).
has gn && timeout "$t_gn" "$py" benchmarks/matrix_speed.py --config-dir configs/gauss_newton --results results/gauss_newton \
  --problems burgers heat laplace --methods apts_d4 --iterations "$matrix_iters" --warmup "$warmup" \
  --out "$out/gn_runs" 2>&1 | grep -v Warning | tee "$out/gn_matrix_speed.md"
has cudatest && timeout "$t_cudatest" "$py" -m pytest -q -p no:cacheprovider tests/test_compiled.py -k cuda 2>&1 \
  | tee "$out/cuda_tests.txt"
has diag && timeout "$t_diag" "$py" benchmarks/compile_diag.py "$device" > "$out/compile_diag.txt" 2>&1
has matrix && timeout "$t_matrix" "$py" benchmarks/matrix_speed.py --problems heat laplace burgers --methods apts_d4 \
  --iterations "$matrix_iters" --warmup "$warmup" --out "$out/matrix_runs" 2>&1 | grep -v Warning | tee "$out/matrix_speed.md"
# The runs' logs are large and not needed back.
rm -rf "$out/gn_runs/logs" "$out/matrix_runs/logs"
