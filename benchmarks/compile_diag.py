"""Which compiled call fails, with its full traceback: TR and APTS (sequential) through the compiled
derivatives for 4 outer iterations on DEVICE (the CUDA cases of tests/test_compiled.py, logged).

Usage: python benchmarks/compile_diag.py cuda   (TORCHDYNAMO_VERBOSE=1 for the compiler's own stack)
"""
import sys
import time
import traceback

sys.path.insert(0, ".")
from pinn_apts.pde import compiled as C  # noqa: E402
from tests.test_compiled import run  # noqa: E402

calls = []
orig = C.CompiledPINNLoss._compiled_call


def logged(self, name, args):
    calls.append((name, tuple(tuple(a.shape) for a in args[:3])))
    try:
        return orig(self, name, args)
    except Exception:
        print(f"FAILED at call {len(calls)}: {name} shapes {calls[-1][1]} device {args[0].device}", flush=True)
        print("previous calls:", calls[-6:-1], flush=True)
        traceback.print_exc()
        raise


C.CompiledPINNLoss._compiled_call = logged
device = sys.argv[1]
for optimizer, replicas in [("tr", None), ("apts", "sequential")]:
    C._CACHE.clear()
    calls.clear()
    t = time.perf_counter()
    run(optimizer, compile=True, iterations=4, device=device, replicas=replicas)
    print(f"== {device} {optimizer} {replicas}: {len(calls)} compiled calls, {time.perf_counter() - t:.0f} s, "
          f"distinct names {sorted(set(n for n, _ in calls))}", flush=True)
