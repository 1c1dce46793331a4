"""Helper of tests/test_distributed.py (run as a script): APTS under Lightning with W processes.

    python tests/ddp_run.py --devices 2 --subdomains 4 --replicas sequential --steps 10 --out theta.pt
    python tests/ddp_run.py --devices 2 --compile on --steps 6 --out theta.pt   # compiled steps across processes
    python tests/ddp_run.py --devices 2 --least-squares --out theta.pt       # exact Gauss–Newton steps
    python tests/ddp_run.py --devices 2 --residual-sampling --out theta.pt   # interior points by the residual

Rank 0 saves the final parameters, radius and counters to ``--out``.
"""

import argparse

import lightning as L
import torch

from pinn_apts import APTSPINN, PINNDataModule

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--subdomains", type=int, default=4)
    parser.add_argument("--replicas", default="sequential")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--problem", default="burgers")
    parser.add_argument("--compile", default="auto", choices=["auto", "on", "off"])
    parser.add_argument("--coherent", action="store_true", help="first-order coherent local objectives")
    parser.add_argument("--least-squares", action="store_true", help="both stages' Gauss–Newton models solved exactly")
    parser.add_argument("--residual-sampling", action="store_true", help="interior points chosen by the residual")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    least_squares = dict(curvature="gauss_newton", subproblem="exact", local_curvature="gauss_newton",
                         local_subproblem="exact", damping=0.0) if args.least_squares else {}
    model = APTSPINN(problem=args.problem, num_subdomains=args.subdomains, replicas=args.replicas, seed=3,
                     compile=args.compile, coherent=args.coherent, **least_squares)
    # least squares: at least as many residuals as parameters (921), as at the paper's sizes, so that one
    # process and several both solve Stage II from the normal equations (with fewer, one process takes
    # the eigenbasis of J J^T and several that of J^T J: both exact, equal to the problem's conditioning)
    sizes = dict(early_sizes=(800, 100, 40), late_sizes=(800, 100, 60)) if args.least_squares else \
        dict(early_sizes=(400, 100, 40), late_sizes=(400, 50, 50))
    sampling = dict(interior_sampling="residual", residual_pool=2000, resample_every=4) if args.residual_sampling else {}
    data = PINNDataModule(args.problem, seed=3, **sizes, **sampling)
    trainer = L.Trainer(
        max_steps=args.steps, precision="64-true", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=args.devices,
        strategy="ddp" if args.devices > 1 else "auto",
    )
    trainer.fit(model, data)
    if trainer.is_global_zero:
        apts = model.optimizers().optimizer
        torch.save({
            "theta": torch.nn.utils.parameters_to_vector(model.parameters()).detach(),
            "radius": apts.radius,
            "stage1_accepted": apts.totals.stage1_accepted,
            "stage2_tries": apts.totals.stage2_tries,
            "world_size": trainer.world_size,
        }, args.out)
