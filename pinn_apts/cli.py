"""The ``pinn-apts`` command line, built on ``LightningCLI``.

``pinn-apts fit`` trains the embedded default configuration
(``pinn_apts/configs/default.yaml``); ``pinn-apts fit --config FILE`` any other,
with overrides such as ``--trainer.max_steps 200``; ``pinn-apts fit
--print_config`` prints the full configuration to start a new one from.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from lightning.pytorch.cli import LightningCLI

from .data import PINNDataModule
from .modules import PINNModule

__all__ = ["CONFIG_DIR", "PINNCLI", "cli_main"]

CONFIG_DIR = Path(__file__).parent / "configs"


class PINNCLI(LightningCLI):
    """LightningCLI whose model gets its problem and seed from the data section."""

    def add_arguments_to_parser(self, parser) -> None:
        # One problem and one seed per run: the model takes the data module's.
        parser.link_arguments("data.problem", "model.init_args.problem", apply_on="instantiate")
        parser.link_arguments("data.seed", "model.init_args.seed")
        parser.add_argument(
            "--threads", type=int, default=1,
            help="CPU threads of this process (torch.set_num_threads). PINN tensors are small: one "
                 "thread is as fast as two on an idle 2-core machine and many times faster on a busy one.",
        )

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.threads < 1:
            raise ValueError(f"threads must be an integer >= 1, got {config.threads}")
        torch.set_num_threads(config.threads)


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
    if args is not None:
        # args given from Python (the experiment runner, tests) are the whole command line: the
        # caller's own sys.argv is not meant for the CLI, so Lightning's warning about both is noise
        warnings.filterwarnings("ignore", message=r".*LightningCLI's args parameter is intended.*")
    default = str(CONFIG_DIR / "default.yaml")
    return PINNCLI(
        PINNModule,
        PINNDataModule,
        subclass_mode_model=True,
        parser_kwargs=(
            {"fit": {"default_config_files": [default]}} if run else {"default_config_files": [default]}
        ),
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        args=args,
        run=run,
    )


if __name__ == "__main__":
    cli_main()
