"""The ``pinn-apts`` command line, built on ``LightningCLI``.

``pinn-apts fit`` trains the embedded default, the recommended configuration
(``default.yaml``, then ``least_squares_rad/burgers_apts_d4.yaml`` and ``recommended.yaml``'s 500
iterations: least-squares APTS with residual-based points, not the paper's method);
``pinn-apts fit --config FILE`` any other, which starts from ``default.yaml`` alone (the paper's
APTS and the trainer settings every config shares), with overrides such as
``--trainer.max_steps 200``; ``pinn-apts fit --print_config`` prints the full configuration to
start a new one from.

Exit status of the console script (:func:`main`): 0 after a finished run; ``128 + N`` after
a run stopped by signal ``N`` (130 for Ctrl-C, 143 for SIGTERM; ``last.ckpt`` then holds the
last finished outer iteration); 2 after bad input (a missing or unreadable file included), 1 after
a non-finite loss, and 3 when a peer process of a multi-process run failed or hung past
``--collective_timeout`` (the message names the checkpoint to resume from and the command), each
with the message as the last line (``PINN_APTS_TRACEBACK=1`` shows the traceback instead).
"""

from __future__ import annotations

import math
import os
import signal
import sys
import warnings
from datetime import timedelta
from pathlib import Path

import torch
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.strategies import DDPStrategy
from torch.distributed.constants import default_pg_timeout

from .callbacks import GracefulStop
from .data import PINNDataModule
from .faults import FAULT_ATTRIBUTE
from .module import PINNModule

__all__ = ["COLLECTIVE_TIMEOUT", "CONFIG_DIR", "PINNCLI", "cli_main", "main"]

#: seconds a process of a DDP run waits for its peers in a collective before it gives up (``--collective_timeout``)
COLLECTIVE_TIMEOUT = 300.0

_PACKAGE_DIR = str(Path(__file__).resolve().parents[1])  # pinn_apts/

CONFIG_DIR = Path(__file__).parents[1] / "configs"


class PINNCLI(LightningCLI):
    """LightningCLI whose model gets its problem and seed from the data section."""

    def add_arguments_to_parser(self, parser) -> None:
        # One problem and one seed per run: the model takes the data module's.
        parser.link_arguments("data.problem", "model.init_args.problem", apply_on="instantiate")
        parser.link_arguments("data.seed", "model.init_args.seed")
        parser.add_argument(
            "--collective_timeout", type=float, default=COLLECTIVE_TIMEOUT,
            help="seconds a process of a multi-process (DDP) run waits in a collective operation for its peers "
                 "before it stops with a message naming the checkpoint to resume from (torch's default, 30 "
                 "minutes, is far longer than an outer iteration; it must also cover the processes' start); a "
                 "DDPStrategy given its own timeout keeps it",
        )
        parser.add_argument(
            "--threads", type=int, default=1,
            help="CPU threads of this process (torch.set_num_threads). PINN tensors are small: one "
                 "thread is as fast as two on an idle 2-core machine and many times faster on a busy one.",
        )

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.threads < 1:
            raise ValueError(f"threads must be an integer >= 1, got {config.threads}")
        if not (config.collective_timeout > 0 and math.isfinite(config.collective_timeout)):
            raise ValueError(f"collective_timeout must be a number of seconds > 0, got {config.collective_timeout}")
        torch.set_num_threads(config.threads)

    def instantiate_trainer(self, **kwargs):
        """Lightning's trainer, whose DDP strategy (if any) waits ``--collective_timeout`` seconds for a peer
        instead of torch's default 30 minutes, unless it was given a timeout of its own."""
        trainer = super().instantiate_trainer(**kwargs)
        config = self.config[self.subcommand] if self.subcommand else self.config
        strategy = trainer.strategy
        if isinstance(strategy, DDPStrategy) and getattr(strategy, "_timeout", None) == default_pg_timeout:
            strategy._timeout = timedelta(seconds=config.collective_timeout)  # read when the process group starts
        return trainer

    def _parse_ckpt_path(self) -> None:
        """Keep the configuration as given when a run is resumed with ``--ckpt_path``.

        LightningCLI would overwrite the model's settings with the checkpoint's hyper-parameters
        (and its method with the checkpoint's, while the data section stays the configuration's).
        Here the configuration is the run's, and the modules refuse a checkpoint that does not
        match it, naming both sides (:meth:`PINNModule.on_load_checkpoint`,
        :meth:`PINNDataModule.load_state_dict`).
        """


def cli_main(args: list[str] | None = None, run: bool = True) -> PINNCLI:
    """Entry point of the ``pinn-apts`` console script.

    With ``run=False``, ``args`` hold no subcommand: the model, data and trainer are built
    from the configuration and returned unfitted.
    """
    # One batch per outer iteration is produced in the main process by design.
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    # A checkpoint after outer iteration k holds theta_{k+1} with global_step k+1: exactly the
    # state a resumed run needs, so Lightning's manual-optimization caveat does not apply.
    warnings.filterwarnings("ignore", message=r".*no pre-optimization state was saved.*")
    # Lightning's loop asks torch whether a tree node is a LeafSpec, which torch 2.13 deprecates: one
    # line of noise per run that no user of this package can act on
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")
    if args is not None:
        # args given from Python (the experiment runner, tests) are the whole command line: the
        # caller's own sys.argv is not meant for the CLI, so Lightning's warning about both is noise
        warnings.filterwarnings("ignore", message=r".*LightningCLI's args parameter is intended.*")
    given = sys.argv[1:] if args is None else args
    # default.yaml, the base of every config file; without one, the recommended configuration on top
    defaults = [str(CONFIG_DIR / "default.yaml")]
    if not _names_a_config(given):
        defaults += [str(CONFIG_DIR / "least_squares_rad" / "burgers_apts_d4.yaml"),
                     str(CONFIG_DIR / "recommended.yaml")]
    return PINNCLI(
        PINNModule,
        PINNDataModule,
        subclass_mode_model=True,
        parser_kwargs=(
            {"fit": {"default_config_files": defaults}} if run else {"default_config_files": defaults}
        ),
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        args=args,
        run=run,
    )


def _names_a_config(args: list[str]) -> bool:
    """Whether a command line gives a config file (``--config FILE``, ``--config=FILE``, ``-c FILE``)."""
    return any(arg in ("--config", "-c") or arg.startswith("--config=") for arg in args)


def main(args: list[str] | None = None) -> int:
    """The ``pinn-apts`` console script: run :func:`cli_main` and return the exit status.

    The working directory is put on the module search path (as ``python -m`` does), so that
    a config can name a problem class in a module beside it (``class_path: mymodule.Advection``).
    """
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        cli = cli_main(args)
    except Exception as err:
        fault = getattr(err, FAULT_ATTRIBUTE, None)
        if os.environ.get("PINN_APTS_TRACEBACK") or (
                fault is None and not isinstance(err, (ValueError, TypeError, FloatingPointError, FileNotFoundError))):
            raise
        if fault is not None:
            sys.stderr.write(f"pinn-apts: error: {fault}\n")
            return 3
        sys.stderr.write(f"pinn-apts: error: {_user_message(err)}\n")
        return 1 if isinstance(err, FloatingPointError) else 2
    stop = next((cb for cb in cli.trainer.callbacks if isinstance(cb, GracefulStop) and cb.stopped), None)
    if stop is not None:
        return 128 + int(stop.signal or signal.SIGTERM)
    return 0


def _user_message(err: BaseException) -> str:
    """The message of the first exception in ``err``'s chain of causes that this package raised.

    jsonargparse wraps a module's ``ValueError`` (say, ``num_subdomains must be an integer >= 1``)
    in its own, whose message ends in a dump of the whole configuration.
    """
    chain: list[BaseException] = []
    while err is not None and err not in chain:
        chain.append(err)
        err = err.__cause__
    for exc in chain:
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        if tb is not None and tb.tb_frame.f_code.co_filename.startswith(_PACKAGE_DIR):
            return str(exc)
    return str(chain[0])


if __name__ == "__main__":
    sys.exit(main())
