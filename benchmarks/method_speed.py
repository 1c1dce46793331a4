"""Seconds per outer iteration of each method through ``Trainer.fit``, and APTS's bare optimizer loop beside it.

Usage::

    python benchmarks/method_speed.py [--problem burgers] [--methods adam lbfgs tr tr_compiled apts apts_compiled apts_loop]
                                      [--iterations 30] [--warmup 15] [--threads 1] [--device cpu]

Each method trains the problem with the package's defaults (the paper's set-up: Adam and L-BFGS two
steps per outer iteration, TR one global step, APTS ``D = 4``, ``J = 3``, sequential replicas) for
``warmup + iterations`` outer iterations, float64, seed 0, no logger, no checkpoints, and the median
wall time of the measured iterations is printed (a callback takes the time from the end of one
training step to the end of the next, so the batch, hooks and logging count; on CUDA it synchronizes).  ``*_compiled`` takes ``compile="on"`` (compiled while warming up), the others
``compile="off"``.  ``apts_loop`` runs the same APTS iterations without Lightning (the loop of
``benchmarks/apts_speed.py``: :class:`~pinn_apts.core.apts.APTS` on the same batches), so the
difference to ``apts`` is what ``Trainer.fit`` and the module add: logging, the error metrics
(every iteration, on a 101 x 101 grid), the data module.
"""

from __future__ import annotations

import argparse
import statistics
import time

import lightning as L
import torch

from pinn_apts import AdamPINN, APTSPINN, LBFGSPINN, PINNDataModule, TrustRegionPINN
from pinn_apts.core.apts import APTS
from pinn_apts.pde.model import MLP
from pinn_apts.pde.objective import PINNObjective
from pinn_apts.pde.problems import get_problem
from pinn_apts.pde.sampling import CollocationSampler

MODULES = {
    "adam": lambda problem: AdamPINN(problem=problem),
    "lbfgs": lambda problem: LBFGSPINN(problem=problem),
    "tr": lambda problem: TrustRegionPINN(problem=problem, compile="off"),
    "tr_compiled": lambda problem: TrustRegionPINN(problem=problem, compile="on"),
    "apts": lambda problem: APTSPINN(problem=problem, replicas="sequential", compile="off"),
    "apts_compiled": lambda problem: APTSPINN(problem=problem, replicas="sequential", compile="on"),
}


class StepTimer(L.Callback):
    """Wall time from the end of one training step (one outer iteration) to the end of the next:
    the step and everything Lightning does around it (the batch, hooks, logging)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_train_start(self, trainer, module) -> None:
        self._last = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        _sync(module.device)
        now = time.perf_counter()
        self.seconds.append(now - self._last)
        self._last = now


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def through_fit(method: str, problem: str, total: int, device: str) -> tuple[list[float], torch.Tensor]:
    timer = StepTimer()
    trainer = L.Trainer(max_steps=total, precision="64-true", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator=device, devices=1,
                        callbacks=[timer])
    module = MODULES[method](problem)
    trainer.fit(module, PINNDataModule(problem, seed=0))
    return timer.seconds, torch.nn.utils.parameters_to_vector(module.net.parameters()).detach().cpu()


def bare_loop(problem_name: str, total: int, device: str) -> tuple[list[float], torch.Tensor]:
    torch.set_default_dtype(torch.float64)
    problem = get_problem(problem_name)
    sampler = CollocationSampler(problem, total_iterations=total, seed=0)
    net = MLP(seed=0).to(device)
    opt = APTS(net.parameters(), num_subdomains=4, replicas="sequential")
    seconds, last = [], time.perf_counter()
    for k in range(total):
        batch = sampler.batch(k).to(device=device, dtype=torch.float64)
        opt.step(PINNObjective(net, problem, batch, 4))
        _sync(torch.device(device))
        now = time.perf_counter()
        seconds.append(now - last)
        last = now
    return seconds, torch.nn.utils.parameters_to_vector(net.parameters()).detach().cpu()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problem", default="burgers")
    parser.add_argument("--methods", nargs="+", default=["adam", "lbfgs", "tr", "apts", "apts_loop"],
                        choices=[*MODULES, "apts_loop"])
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # Networks are built (and initialised) in float64 whichever method comes first: a module made under
    # float32 and cast by precision="64-true" starts from other weights than the bare loop's.
    torch.set_default_dtype(torch.float64)
    total = args.warmup + args.iterations
    name = torch.cuda.get_device_name(0) if args.device == "cuda" else "CPU"
    print(f"{args.problem}, {name}, torch {torch.__version__}, float64, {args.threads} thread(s): median seconds per "
          f"outer iteration over iterations {args.warmup}..{total - 1}\n")
    print("| method | s / iteration | warm-up s (compilation included) |")
    print("|---|---|---|")
    final = {}
    for method in args.methods:
        seconds, final[method] = bare_loop(args.problem, total, args.device) if method == "apts_loop" else through_fit(
            method, args.problem, total, args.device)
        print(f"| {method} | {statistics.median(seconds[args.warmup:]):.4f} | {sum(seconds[:args.warmup]):.1f} |",
              flush=True)
    if "apts" in final and "apts_loop" in final:
        gap = float((final["apts"] - final["apts_loop"]).abs().max())
        print(f"\nAPTS through Trainer.fit and in the bare loop: max |theta difference| after {total} iterations {gap:.1e}")


if __name__ == "__main__":
    main()
