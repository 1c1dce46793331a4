"""The paper's experiment matrix, resumable: ``python -m pinn_apts.paper.experiments``.

Heat, Burgers, Laplace x {APTS D = 2, 4, 8, Adam, L-BFGS, L-BFGS with strong Wolfe (our
addition), TR} x seeds x 2000 outer iterations, float64, from the configs in ``configs/``.
Each run writes ``<out>/<problem>_<method>_s<seed>.json`` (curves of the loss, relative L2
error, RMSE, and for APTS/TR the radius, Stage I acceptance and Stage II tries per outer
iteration, plus the wall time and the final network's parameters, from which
:func:`final_network` rebuilds it for the error heatmaps) and is skipped when that file exists,
so the matrix can be completed over several sessions; ``--jobs 2`` runs two at a time (one thread each).
A run in progress saves a checkpoint every :data:`RESUME_EVERY` outer iterations; started again
after an interruption (a killed process, a session's end), it resumes from the last one if the code
and settings are the same, and ends as the uninterrupted run would have, bit for bit.

Every file records where it comes from (``provenance``: the commit, whether the tree was clean,
torch and lightning versions, device, threads, CPU; :mod:`~pinn_apts.paper.provenance`) and,
for TR and APTS, whether the steps were compiled.  The runner refuses a checkout with uncommitted
changes unless given ``--allow-dirty``; ``--rerun-other-commits`` reruns the files another commit
made; ``--check FILE --iterations K`` reruns a file's first ``K`` iterations with its settings
and the code of the commit it names (from a ``git archive`` of that commit, in a fresh process)
and compares the curves bit for bit, the promise a results file makes; ``--here`` reruns it with
this checkout's code, which must take the same decisions and stay within a tolerance.

``--budget`` runs the time-to-accuracy study instead: each baseline for a fixed wall-clock
budget (:data:`BUDGET_SECONDS`), stopped after the outer iteration at which its training clock
(``time/elapsed``: compilation and the first iteration counted) reaches the budget
(:class:`~pinn_apts.training.callbacks.StopAtSeconds`).  Its schedule is
planned in ``budget.json`` beside this module: a number of outer iterations, :data:`BUDGET_MARGIN`
times the number that fills the budget at the fastest seconds per iteration measured
(``--calibrate``, or whole budget runs); the curriculum switches at 30% of that planned number, as
in a matrix run (so later in a run's seconds: 40-65% of them here), and the run ends at the budget or at the planned
number, whichever comes first.  A results file records both (``schedule``, ``iterations``) and
reproduces bit for bit like any other: ``--check`` reruns its first iterations on its schedule.  Long
runs keep about :data:`BUDGET_POINTS` points per curve: the error is evaluated, and the scalars
kept, every ``log_every = schedule // BUDGET_POINTS`` outer iterations and at the last.

    python -m pinn_apts.paper.experiments --out results --jobs 2
    python -m pinn_apts.paper.experiments --problems burgers --methods apts_d4 adam --seeds 0 --iterations 200
    python -m pinn_apts.paper.experiments --check results/burgers_apts_d4_s0.json --iterations 20
    python -m pinn_apts.paper.experiments --calibrate --jobs 2      # writes budget.json
    python -m pinn_apts.paper.experiments --budget --out results/budget --seeds 0 1 2 3 4 --jobs 2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only

__all__ = [
    "BUDGET_FILE", "BUDGET_MARGIN", "BUDGET_METHODS", "BUDGET_POINTS", "BUDGET_SECONDS", "DECISIONS", "HERE_TOLERANCE",
    "ITERATIONS", "METHODS", "PROBLEMS", "RESUME_EVERY", "CurveLogger", "batch_run_args", "budget_plan",
    "calibrate_budget", "check_at_commit", "check_rerun", "final_network", "plan_iterations", "rerun_verdict", "run_one",
]

PROBLEMS = ("heat", "burgers", "laplace")
METHODS = ("apts_d2", "apts_d4", "apts_d8", "adam", "lbfgs", "lbfgs_wolfe", "tr")
#: outer iterations of a run of the paper's matrix
ITERATIONS = 2000
#: the per-iteration scalars kept in a results file
CURVES = (
    "loss/total", "error/rel_l2", "error/rmse", "time/iteration", "time/elapsed", "time/stage1", "time/stage2",
    "apts/radius", "apts/stage1_accepted", "apts/stage2_tries", "apts/replica_coherence", "tr/radius", "tr/tries",
)
#: outer iterations between a run's checkpoints (in ``<log root>/<run>/resume``, removed once its file is
#: written), times the run's ``log_every``
RESUME_EVERY = 50
#: the wall-clock budget of a run of the time-to-accuracy study (``--budget``), seconds
BUDGET_SECONDS = 600
#: the methods of the time-to-accuracy study: the baselines (APTS's matrix runs already take 5-20 minutes)
BUDGET_METHODS = ("adam", "lbfgs", "lbfgs_wolfe", "tr")
#: points kept per curve of a budget run, about
BUDGET_POINTS = 2000
#: the outer iterations of each budget run, by problem and method, measured by ``--calibrate``
BUDGET_FILE = Path(__file__).with_name("budget.json")
#: how many more outer iterations than fill the budget a budget run is planned for, by method, so that it
#: ends at the budget and not at its planned count on a faster machine or a faster stretch (the same CPU
#: model string ran 0.75-1.3 times as fast from one session to the next here); the larger, the later in
#: a run its curriculum switch
BUDGET_MARGIN = {"adam": 1.5, "tr": 1.5, "lbfgs": 1.5, "lbfgs_wolfe": 1.5}
#: outer iterations of a calibration run (``--calibrate``), by method: one to three minutes each here.
#: TR's run compiled, as its budget runs do (``compile="auto"`` compiles from 5000 iterations on).
CALIBRATION_ITERATIONS = {"adam": 6000, "lbfgs": 3000, "lbfgs_wolfe": 600, "tr": 800}
CALIBRATION_COMPILE = {"tr": "on"}


class CurveLogger(Logger):
    """A Lightning logger that keeps the chosen scalars in memory, step by step, and appends them
    to ``journal`` (JSON lines), if given, so that a resumed run can :meth:`reload` them.

    With ``every > 1`` it keeps the steps that are multiples of ``every`` and those with a solution
    error (a run's last), so that a long run with ``log_every = every`` keeps its error points and
    the scalars beside them."""

    def __init__(self, keep: tuple[str, ...] = CURVES, journal: Path | None = None, every: int = 1) -> None:
        super().__init__()
        self.keep = keep
        self.journal = journal
        self.every = every
        self.curves: dict[str, list[tuple[int, float]]] = defaultdict(list)

    def reload(self, before: int) -> bool:
        """Take the journal's scalars of the steps before ``before`` (the iterations a checkpoint at
        global step ``before`` has done); ``False``, keeping none, if the journal lacks one of them."""
        logged: dict[str, dict[int, float]] = defaultdict(dict)
        lines = self.journal.read_text().splitlines() if self.journal is not None and self.journal.exists() else []
        for line in lines:
            try:
                step, values = json.loads(line)
            except ValueError:  # a line cut short by a killed process
                continue
            if step < before:
                for key, value in values.items():
                    logged[key][step] = value
        if len(logged["loss/total"]) != len(range(0, before, self.every)):
            return False
        self.curves = defaultdict(list, {key: sorted(values.items()) for key, values in logged.items()})
        return True

    @property
    def name(self) -> str:
        return "curves"

    @property
    def version(self) -> str:
        return "0"

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        step = int(step if step is not None else -1)
        if step % self.every and "error/rel_l2" not in metrics:
            return
        kept = {key: float(metrics[key]) for key in self.keep if key in metrics}
        for key, value in kept.items():
            self.curves[key].append((step, value))
        if self.journal is not None and kept:
            with self.journal.open("a") as journal:
                journal.write(json.dumps([step, kept]) + "\n")


def batch_run_args(config: Path | str, seed: int, iterations: int, root: Path | str,
                   schedule: int | None = None) -> list[str]:
    """CLI arguments of an unattended run: ``config`` with ``seed`` for ``iterations`` outer
    iterations, no progress bar, model summary, checkpoints or callbacks, its folder ``root``.
    ``schedule`` (if given) is the run length the curriculum and resampling are planned for,
    so a short run can stop early on a long run's schedule."""
    extra = [] if schedule is None else [f"--data.total_iterations={schedule}"]
    return [*extra,
        "--config", str(config), f"--seed_everything={seed}", f"--data.seed={seed}",
        f"--trainer.max_steps={iterations}", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false", "--trainer.enable_checkpointing=false",
        "--trainer.callbacks=null", f"--trainer.default_root_dir={root}",
    ]


def run_one(problem: str, method: str, seed: int, iterations: int, out: Path, config_dir: Path,
            log_root: Path = Path("lightning_logs/experiments"), schedule: int | None = None,
            replace: bool = False, compile: str | None = None, name: str | None = None,
            log_every: int = 1, seconds: float | None = None) -> Path:
    """Train one cell of the matrix and write its results file (unless it exists, or ``replace``);
    a run that stops before ``iterations`` (interrupted) raises ``RuntimeError`` and writes none,
    unless ``seconds`` (a budget run) stopped it: :class:`~pinn_apts.training.callbacks.StopAtSeconds`
    ends the run after the outer iteration at which its ``time/elapsed`` reaches ``seconds`` (a resumed
    run's earlier seconds included).
    Called again, it resumes from the run's last checkpoint (every :data:`RESUME_EVERY` iterations)
    if the same code made it with the same settings, and starts over otherwise.

    TensorBoard logs go to ``log_root/<problem>_<method>_s<seed>`` (not meant for git), the
    checkpoints to its ``resume`` folder.
    ``schedule``: see :func:`batch_run_args`.  ``compile`` (``"on"``, ``"off"``; TR and APTS only)
    overrides the config's choice.  ``name`` replaces the file's name.  ``log_every`` > 1 evaluates the
    error, and keeps the curves' points, every ``log_every`` outer iterations (and at the last).
    """
    from lightning.pytorch.callbacks import ModelCheckpoint
    from torch.nn.utils import parameters_to_vector

    from ..core.apts import APTS
    from ..core.optim import TrustRegion
    from ..training.callbacks import StopAtSeconds
    from ..training.cli import cli_main
    from .provenance import code_stamp, provenance

    target = out / (name or f"{problem}_{method}_s{seed}.json")
    if target.exists() and not replace:
        return target
    config = config_dir / f"{problem}_{method}.yaml"
    if not config.exists():
        raise ValueError(f"no config {config} for problem {problem!r} and method {method!r}")
    args = batch_run_args(config, seed, iterations, log_root / target.stem, schedule)
    if compile is not None:
        args.append(f"--model.init_args.compile={compile}")
    if log_every != 1:
        args.append(f"--model.init_args.log_every={log_every}")
    saved = log_root / target.stem / "resume"
    logger = CurveLogger(journal=saved / "curves.jsonl", every=log_every)
    stamp = {"code": code_stamp(), "args": args, **({} if seconds is None else {"seconds": seconds})}
    resumed = _resume_point(saved, stamp, logger)
    cli = cli_main(args, run=False)
    cli.trainer.loggers = [*cli.trainer.loggers, logger]  # TensorBoard as usual, and the curves
    cli.trainer.callbacks.append(ModelCheckpoint(dirpath=saved, save_last=True, save_top_k=0,
                                                 every_n_train_steps=RESUME_EVERY * log_every))
    budget = None if seconds is None else StopAtSeconds(seconds)
    if budget is not None:
        cli.trainer.callbacks.insert(0, budget)
    start = time.perf_counter()
    cli.trainer.fit(cli.model, cli.datamodule, ckpt_path=None if resumed == 0 else saved / "last.ckpt")
    wall = time.perf_counter() - start
    done = cli.trainer.global_step
    if (done < iterations and not (budget is not None and budget.stopped(cli.model))) or cli.trainer.interrupted:
        # an interrupted fit (SIGTERM, Ctrl-C: Lightning shuts down gracefully) returns normally
        last = _saved_step(saved / "last.ckpt")
        raise RuntimeError(f"{target.name}: the run stopped after {done} of {iterations} outer iterations "
                           f"(interrupted?); no results file written, the next run of the matrix resumes it "
                           f"from iteration {last}")
    model = cli.model
    final = {k: float(v) for k, v in model.solution_errors().items()}
    optimizer = cli.trainer.optimizers[0]
    record: dict[str, Any] = {
        "problem": problem,
        "method": method,
        "seed": seed,
        "provenance": provenance(model.device),
        "compile": bool(optimizer.compile) if isinstance(optimizer, (APTS, TrustRegion)) else None,
        "schedule": cli.datamodule.sampler.total_iterations,
        "iterations": cli.trainer.global_step,
        "max_seconds": seconds,
        "stopped_by": "max_seconds" if done < iterations else "iterations",
        "wall_seconds": wall,
        "elapsed_seconds": model.elapsed(),
        "seconds_per_iteration": wall / max(cli.trainer.global_step - resumed, 1),
        "final_rel_l2": final.get("error/rel_l2"),
        "final_rmse": final.get("error/rmse"),
        "curves": {k: v for k, v in logger.curves.items()},
        "hparams": {k: v for k, v in model.hparams.items() if isinstance(v, (int, float, str, bool, type(None)))},
        "layer_sizes": list(model.net.layer_sizes),
        "final_parameters": parameters_to_vector(model.net.parameters()).double().tolist(),
    }
    if isinstance(optimizer, APTS):
        record["stage1_acceptance_rate"] = optimizer.totals.acceptance_rate
        record["mean_stage2_tries"] = optimizer.totals.mean_stage2_tries
    if resumed:
        record["resumed_at"] = resumed  # the wall time is that of the iterations from here on
    out.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".json.part")
    partial.write_text(json.dumps(record))
    partial.replace(target)  # a file that exists is complete
    shutil.rmtree(saved, ignore_errors=True)
    return target


def _saved_step(checkpoint: Path) -> int:
    """The global step of ``checkpoint``; 0 if there is none or it cannot be read (cut short by a kill)."""
    import torch

    try:
        return int(torch.load(checkpoint, weights_only=True)["global_step"])
    except Exception:  # noqa: BLE001 - a missing or truncated checkpoint: nothing to resume from
        return 0


def _resume_point(saved: Path, stamp: dict[str, Any], logger: CurveLogger) -> int:
    """The outer iteration a run resumes from: that of ``saved/last.ckpt`` if ``stamp`` (the code,
    :func:`~pinn_apts.paper.provenance.code_stamp`, and the run's arguments) is the one it was saved
    with and ``logger`` reloads the curves up to it; else 0, with ``saved`` emptied and stamped for
    the run that starts now."""
    stamp_file = saved / "stamp.json"
    checkpoint = saved / "last.ckpt"
    if stamp_file.exists() and json.loads(stamp_file.read_text()) == stamp:
        step = _saved_step(checkpoint)
        if step > 0 and logger.reload(step):
            print(f"{saved.parent.name}: resuming from iteration {step}", flush=True)
            return step
    shutil.rmtree(saved, ignore_errors=True)
    saved.mkdir(parents=True)
    stamp_file.write_text(json.dumps(stamp))
    return 0


#: ``--check --here``: the relative difference today's code may show against a committed file in a
#: few iterations (rounding grows about 50-fold per APTS iteration from 1e-16)
HERE_TOLERANCE = 1e-6

#: curves that record decisions (a step accepted or not, how many tries): a rerun must match them exactly
DECISIONS = ("apts/stage1_accepted", "apts/stage2_tries", "tr/tries")


def check_rerun(path: Path, iterations: int, config_dir: Path, work: Path) -> dict[str, float]:
    """Rerun the first ``iterations`` outer iterations of the results file ``path`` with its
    settings (problem, method, seed, schedule, compile) in ``work``; return, per curve both hold
    (the seconds left out), the largest relative difference over those iterations,
    ``|new - old| / |old|`` (``0.0``: bit for bit; a difference from a zero is taken as is)."""
    record = json.loads(Path(path).read_text())
    if iterations > record["iterations"]:
        raise ValueError(f"--iterations {iterations} exceeds the {record['iterations']} iterations of {path}")
    compile = None if record.get("compile") is None else ("on" if record["compile"] else "off")
    schedule = record.get("schedule", record["iterations"])
    rerun = run_one(record["problem"], record["method"], record["seed"], iterations, work, config_dir,
                    work / "logs", schedule, replace=True, compile=compile, name="rerun.json",
                    log_every=record["hparams"].get("log_every", 1))
    again = json.loads(rerun.read_text())["curves"]
    gaps = {}
    for key in record["curves"]:
        if key.startswith("time/") or key not in again:
            continue
        old = dict(record["curves"][key])
        gaps[key] = max(abs(value - old[k]) / (abs(old[k]) or 1.0)
                        for k, value in again[key] if k in old)  # a rerun's last point may not be kept
    return gaps


def rerun_verdict(gaps: dict[str, float], tolerance: float) -> tuple[bool, str]:
    """Whether a rerun's ``gaps`` (:func:`check_rerun`) pass: the decisions (:data:`DECISIONS`) exactly,
    every other curve within ``tolerance`` (relative; ``0``: bit for bit); and a line saying so."""
    same = all(gap == 0.0 if key in DECISIONS else gap <= tolerance for key, gap in gaps.items())
    words = ("bit for bit" if all(gap == 0.0 for gap in gaps.values()) else
             f"the same decisions, the rest within {tolerance:g}" if same else
             "NOT bit for bit" if tolerance == 0 else f"NOT the same decisions or NOT within {tolerance:g}")
    return same, ", ".join(f"max relative difference of {key} {gap:.3g}" for key, gap in gaps.items()) + f" ({words})"


def check_at_commit(path: Path, iterations: int, config_dir: Path, work: Path) -> int:
    """Rerun ``path``'s first ``iterations`` with the code of the commit it names, from a ``git archive``
    of that commit in ``work`` (the configs too: ``config_dir``, where it lies in this checkout, is
    taken from the archive, unless the commit does not have that folder yet: configs committed after
    the runs, as ``configs/gauss_newton``, are then this checkout's), in a fresh process; print its
    verdict and return its exit status."""
    from .provenance import ROOT, export_commit

    commit = json.loads(Path(path).read_text()).get("provenance", {}).get("commit")
    if not commit:
        raise ValueError(f"{path} names no commit to rerun it with: check it with this code (--here)")
    source = export_commit(commit, work / f"source_{commit[:12]}")
    configs = Path(config_dir).resolve()
    note = ""
    if configs.is_relative_to(ROOT):
        archived = source / configs.relative_to(ROOT)
        if archived.is_dir():
            configs = archived
        else:
            note = f"; its tree has no {configs.relative_to(ROOT)}: the configs of this checkout"
    print(f"{path}: rerun with the code of commit {commit[:12]} (git archive in {source}){note}", flush=True)
    command = [sys.executable, "-m", "pinn_apts.paper.experiments", "--check", str(Path(path).resolve()),
               "--iterations", str(iterations), "--config-dir", str(configs), "--allow-dirty"]
    # the archive is no checkout, and git must not find one around it: its code records no commit
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GIT_CEILING_DIRECTORIES": str(source.parent)}
    return subprocess.run(command, cwd=source, env=env, check=False).returncode


def budget_plan(problem: str, method: str, table: dict[str, Any] | None = None) -> tuple[int, int]:
    """``(iterations, log_every)`` of the budget run of ``method`` on ``problem``, from ``table``
    (default: :data:`BUDGET_FILE`); ``ValueError`` if the table has no such cell."""
    if table is None:
        table = json.loads(BUDGET_FILE.read_text())
    try:
        iterations = int(table["iterations"][problem][method])
    except KeyError:
        raise ValueError(f"{BUDGET_FILE.name} has no budget run of {method!r} on {problem!r}; measure it with "
                         "--calibrate") from None
    return iterations, max(1, iterations // BUDGET_POINTS)


def plan_iterations(measured: dict[str, dict[str, float]], seconds: float,
                    margin: dict[str, float]) -> dict[str, dict[str, int]]:
    """The outer iterations that fill ``margin[method] * seconds`` at the ``measured`` seconds per
    iteration (by problem and method), rounded up to a hundred."""
    return {problem: {method: 100 * math.ceil(margin[method] * seconds / per_iteration / 100)
                      for method, per_iteration in methods.items()} for problem, methods in measured.items()}


def seconds_per_iteration(record: dict[str, Any]) -> float:
    """A results file's wall-clock seconds per outer iteration after its first kept point (so past the
    warm-up), from its ``time/elapsed`` curve."""
    elapsed = sorted(record["curves"]["time/elapsed"])
    (first, start), (last, end) = elapsed[1], elapsed[-1]
    return (end - start) / (last - first)


def calibrate_budget(records: list[dict[str, Any]], seconds: float = BUDGET_SECONDS,
                     margin: dict[str, float] | None = None,
                     whole_runs: dict[tuple[str, str], float] | None = None) -> dict[str, Any]:
    """The budget table from calibration runs: per problem and method, the outer iterations that
    fill ``margin[method] * seconds`` (default :data:`BUDGET_MARGIN`) at the seconds per iteration,
    rounded up to a hundred.

    The seconds per iteration are the calibration run's (the fastest, given several runs of one cell:
    earlier budget runs, say), or, if lower, those of ``whole_runs``
    (by problem and method: e.g. the median over the matrix's 2000-iteration runs): L-BFGS's
    iterations get cheaper along a run (fewer inner iterations), so a short calibration run alone
    would plan budget runs that end early."""
    measured: dict[str, dict[str, float]] = defaultdict(dict)
    for record in records:
        problem, method = record["problem"], record["method"]
        per_iteration = min(seconds_per_iteration(record), (whole_runs or {}).get((problem, method), math.inf),
                            measured[problem].get(method, math.inf))
        measured[problem][method] = round(per_iteration, 6)
    margin = BUDGET_MARGIN if margin is None else margin
    return {"seconds": seconds, "margin": margin, "iterations": plan_iterations(measured, seconds, margin),
            "measured_seconds_per_iteration": dict(measured),
            "provenance": records[0]["provenance"] if records else None}


def final_network(record: dict[str, Any]):
    """The trained network of a results file (float64), or ``None`` for files written without it."""
    import torch
    from torch.nn.utils import vector_to_parameters

    from ..pde.model import MLP

    if "final_parameters" not in record:
        return None
    net = MLP(record["layer_sizes"]).double()
    vector_to_parameters(torch.tensor(record["final_parameters"], dtype=torch.float64), net.parameters())
    return net


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=PROBLEMS)
    parser.add_argument("--methods", nargs="+", default=None, choices=METHODS,
                        help=f"default: all for the matrix, {' '.join(BUDGET_METHODS)} with --budget or --calibrate")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--iterations", type=int, default=ITERATIONS)
    parser.add_argument("--schedule", type=int, default=None,
                        help="run length the curriculum and resampling are planned for (default: --iterations); "
                             "a smaller --iterations stops early on that schedule")
    parser.add_argument("--budget", action="store_true",
                        help=f"the time-to-accuracy study: each run's iterations (and log_every) from {BUDGET_FILE.name}, "
                             f"planned to fill {BUDGET_SECONDS} s here; --iterations and --schedule do not apply")
    parser.add_argument("--calibrate", action="store_true",
                        help=f"measure each method's seconds per iteration (seed 0, --jobs at a time) and write "
                             f"{BUDGET_FILE.name}")
    parser.add_argument("--calibrate-with", type=Path, default=Path("results"), metavar="FOLDER",
                        help="with --calibrate: whole runs whose median seconds per iteration, where lower than the "
                             "calibration run's, plan the budget runs (default: results, the matrix)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time, one thread each")
    parser.add_argument("--config-dir", type=Path, default=Path(__file__).parents[1] / "configs")
    parser.add_argument("--log-root", type=Path, default=Path("lightning_logs/experiments"))
    parser.add_argument("--allow-dirty", action="store_true",
                        help="run from a checkout with uncommitted changes (the files say dirty: true)")
    parser.add_argument("--rerun-other-commits", action="store_true",
                        help="rerun the results files another commit (or no recorded commit) made")
    parser.add_argument("--check", type=Path, default=None, metavar="FILE",
                        help="rerun FILE's first --iterations iterations with the code of the commit FILE names (a git "
                             "archive of it, unless this checkout is that commit, clean) and compare its curves bit "
                             "for bit")
    parser.add_argument("--here", action="store_true",
                        help="with --check: rerun with this checkout's code instead; the decisions (Stage I "
                             "acceptances, tries) must match and the other curves agree to --tolerance")
    parser.add_argument("--tolerance", type=float, default=None,
                        help=f"with --check: the largest relative difference allowed (default 0, bit for bit; "
                             f"{HERE_TOLERANCE:g} with --here)")
    parser.add_argument("--one", nargs=3, metavar=("PROBLEM", "METHOD", "SEED"), help=argparse.SUPPRESS)
    parser.add_argument("--log-every", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--max-seconds", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--compile", choices=("on", "off"), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--replace", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.iterations < 1 or args.jobs < 1 or args.log_every < 1:
        parser.error("--iterations, --jobs and --log-every must be at least 1")
    if args.check is not None and not args.check.is_file():
        parser.error(f"--check {args.check}: no such file")
    if args.tolerance is not None and not (args.tolerance >= 0):
        parser.error(f"--tolerance must be a number >= 0, got {args.tolerance}")
    if (args.here or args.tolerance is not None) and args.check is None:
        parser.error("--here and --tolerance go with --check FILE")
    if args.schedule is not None and args.schedule < args.iterations:
        parser.error("--schedule must be at least --iterations")
    if args.budget and args.calibrate:
        parser.error("--budget runs the study that --calibrate plans: give one of them")
    methods = args.methods or list(BUDGET_METHODS if args.budget or args.calibrate else METHODS)

    import tempfile

    import torch

    from .provenance import check_source, source_state

    torch.set_num_threads(1)
    if args.one:
        problem, method, seed = args.one
        print(run_one(problem, method, int(seed), args.iterations, args.out, args.config_dir, args.log_root,
                      args.schedule, replace=args.replace, log_every=args.log_every, compile=args.compile,
                      seconds=args.max_seconds), flush=True)
        return
    state = source_state()
    if args.check is not None:
        commit = json.loads(args.check.read_text()).get("provenance", {}).get("commit")
        here = args.here or state["commit"] is None or (commit == state["commit"] and not state["dirty"])
        tolerance = args.tolerance if args.tolerance is not None else (HERE_TOLERANCE if args.here else 0.0)
        with tempfile.TemporaryDirectory() as work:
            if not here:
                try:
                    status = check_at_commit(args.check, args.iterations, args.config_dir, Path(work))
                except ValueError as err:
                    raise SystemExit(f"error: {err}") from err
                if status:
                    raise SystemExit(status)
                return
            gaps = check_rerun(args.check, args.iterations, args.config_dir, Path(work))
        same, line = rerun_verdict(gaps, tolerance)
        print(f"{args.check}: first {args.iterations} iterations rerun: {line}", flush=True)
        if not same:
            raise SystemExit(1)
        return
    try:
        check_source(state, args.allow_dirty)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from err
    if args.calibrate:
        with tempfile.TemporaryDirectory() as work:
            out = Path(work)
            cells = [(p, m, 0, CALIBRATION_ITERATIONS[m], 10) for p in args.problems for m in methods]
            _run_cells(cells, out, args)
            table = calibrate_budget([json.loads(path.read_text()) for path in sorted(out.glob("*.json"))],
                                     whole_runs=_median_seconds_per_iteration(args.calibrate_with))
        BUDGET_FILE.write_text(json.dumps(table, indent=1) + "\n")
        print(f"wrote {BUDGET_FILE}: {json.dumps(table['iterations'])}", flush=True)
        return

    def to_do(path: Path) -> bool:
        if not path.exists():
            return True
        made_by = json.loads(path.read_text()).get("provenance", {}).get("commit")
        return args.rerun_other_commits and made_by != state["commit"]

    cells = []
    for s in args.seeds:
        for p in args.problems:
            for m in methods:
                if to_do(args.out / f"{p}_{m}_s{s}.json"):
                    plan = budget_plan(p, m) if args.budget else (args.iterations, 1)
                    cells.append((p, m, s, *plan))
    print(f"{len(cells)} runs to do in {args.out}", flush=True)
    _run_cells(cells, args.out, args)


def _median_seconds_per_iteration(folder: Path) -> dict[tuple[str, str], float]:
    """The median seconds per iteration of the results files in ``folder``, by problem and method."""
    runs: dict[tuple[str, str], list[float]] = defaultdict(list)
    for path in Path(folder).glob("*.json"):
        record = json.loads(path.read_text())
        runs[record["problem"], record["method"]].append(record["seconds_per_iteration"])
    return {key: sorted(values)[len(values) // 2] for key, values in runs.items()}


def _run_cells(cells: list[tuple[str, str, int, int, int]], out: Path, args: argparse.Namespace) -> None:
    """Run each ``(problem, method, seed, iterations, log_every)`` in a process of its own, ``args.jobs``
    at a time, one thread each; ``SystemExit`` if one fails."""
    running: list[subprocess.Popen] = []
    started: list[subprocess.Popen] = []
    for problem, method, seed, iterations, log_every in cells:
        while len(running) >= args.jobs:
            running = [p for p in running if p.poll() is None]
            time.sleep(1)
        schedule = None if args.budget or args.calibrate else args.schedule  # a budget run plans its own length
        command = [sys.executable, "-m", "pinn_apts.paper.experiments", "--out", str(out), "--iterations",
                   str(iterations), "--config-dir", str(args.config_dir), "--log-root", str(args.log_root),
                   *([] if schedule is None else ["--schedule", str(schedule)]),
                   *(["--replace"] if args.rerun_other_commits else []),
                   *(["--max-seconds", str(BUDGET_SECONDS)] if args.budget else []),
                   "--log-every", str(log_every), "--one", problem, method, str(seed)]
        if args.calibrate and method in CALIBRATION_COMPILE:
            command[-4:-4] = ["--compile", CALIBRATION_COMPILE[method]]
        print("start", problem, method, seed, f"({iterations} iterations)", flush=True)
        started.append(subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1"}))
        running.append(started[-1])
    failed = sum(p.wait() != 0 for p in started)
    if failed:
        raise SystemExit(f"{failed} run(s) failed")


if __name__ == "__main__":
    main()
