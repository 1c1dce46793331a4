import math

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

from pinn_apts import APTSPINN, LBFGSPINN, AdamPINN, PINNDataModule, TrustRegionPINN
from pinn_apts.pde.problems import Heat

from .conftest import fast_trainer


def initial_error(module):
    return float(module.solution_errors()["error/rel_l2"])


def fit(module, problem, steps, tmp_path=None, **trainer_kwargs):
    data = PINNDataModule(problem, seed=0)
    trainer = fast_trainer(steps, tmp_path, **trainer_kwargs)
    trainer.fit(module, data)
    return trainer


@pytest.mark.parametrize("problem", ["heat", "burgers", "laplace"])
def test_adam_short_run_lowers_error(problem):
    module = AdamPINN(problem=problem)
    before = initial_error(module)
    trainer = fit(module, problem, 40)
    assert trainer.global_step == 40  # one global step per outer iteration, two Adam steps each
    assert initial_error(module) < 0.8 * before


@pytest.mark.parametrize("problem", ["heat", "burgers", "laplace"])
def test_lbfgs_short_run_lowers_error(problem):
    module = LBFGSPINN(problem=problem, line_search_fn="strong_wolfe")
    before = initial_error(module)
    trainer = fit(module, problem, 8)
    assert trainer.global_step == 8
    assert initial_error(module) < 0.5 * before


@pytest.mark.parametrize("problem", ["heat", "burgers", "laplace"])
def test_trust_region_short_run_lowers_error(problem):
    module = TrustRegionPINN(problem=problem)
    before = initial_error(module)
    trainer = fit(module, problem, 12)
    assert trainer.global_step == 12
    totals = module.optimizers().optimizer.totals
    assert totals.steps == 12 and totals.accepted == 12
    assert initial_error(module) < 0.6 * before


def test_two_optimizer_steps_per_outer_iteration():
    module = AdamPINN(problem="heat", steps_per_iteration=2)
    fit(module, "heat", 3)
    state = module.optimizers().optimizer.state
    assert all(int(s["step"]) == 6 for s in state.values())


class ExplodingHeat(Heat):
    """Heat whose residual turns non-finite from the fourth outer iteration on."""

    name = "exploding-heat"
    calls = 0

    def residual(self, jet):
        ExplodingHeat.calls += 1
        residual = super().residual(jet)
        return residual * math.nan if ExplodingHeat.calls > 3 else residual


@pytest.mark.parametrize("module_cls", [AdamPINN, LBFGSPINN, TrustRegionPINN, APTSPINN])
def test_non_finite_loss_is_a_clear_error_and_model_stays_finite(module_cls):
    ExplodingHeat.calls = 0
    problem = ExplodingHeat()
    module = module_cls(problem=problem)
    with pytest.raises(FloatingPointError, match=r"outer iteration \d+: the interior term is nan"):
        fit(module, problem, 20)
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_bad_module_input():
    with pytest.raises(ValueError, match=r"layer_sizes\[0\] must equal the input dimension of problem 'heat' \(2\)"):
        AdamPINN(problem="heat", layer_sizes=(3, 20, 1))
    with pytest.raises(ValueError, match=r"layer_sizes\[-1\] must be 1"):
        AdamPINN(problem="heat", layer_sizes=(2, 20, 2))
    with pytest.raises(ValueError, match="lr must be positive"):
        AdamPINN(problem="heat", lr=0.0)
    with pytest.raises(ValueError, match="line_search_fn must be None or 'strong_wolfe'"):
        LBFGSPINN(problem="heat", line_search_fn="armijo")
    with pytest.raises(ValueError, match="history_size must be an integer >= 1"):
        LBFGSPINN(problem="heat", history_size=0)
    with pytest.raises(ValueError, match=r"radius must lie in \[min_radius, max_radius\]"):
        TrustRegionPINN(problem="heat", radius=20.0)
    with pytest.raises(ValueError, match=r"eta2 must lie in \(eta1, 1\)"):
        TrustRegionPINN(problem="heat", eta1=0.5, eta2=0.4)
    with pytest.raises(ValueError, match="unknown problem 'wave'"):  # (tests/test_user_pde.py registers a Poisson)
        AdamPINN(problem="wave")


LEAST_SQUARES = dict(curvature="gauss_newton", subproblem="exact", damping=0.0)


#: least-squares APTS, both stages (two replicas, to keep the test short)
APTS_LEAST_SQUARES = dict(LEAST_SQUARES, local_curvature="gauss_newton", local_subproblem="exact", num_subdomains=2)


@pytest.mark.slow
@pytest.mark.parametrize("module_cls, settings", [(AdamPINN, {}), (TrustRegionPINN, {}),
                                                  (TrustRegionPINN, LEAST_SQUARES), (APTSPINN, APTS_LEAST_SQUARES)])
def test_resume_from_checkpoint_matches_uninterrupted_run(tmp_path, module_cls, settings):
    """Least squares too: the multipliers the root finds start from (Stage II's or TR's, and each
    replica's) are carried in the checkpoint."""
    straight = module_cls(problem="heat", **settings)
    fit(straight, "heat", 24)
    if settings:
        optimizer = straight.optimizers().optimizer
        multiplier = optimizer.last_step.stage2.multiplier if module_cls is APTSPINN else optimizer.last_step.multiplier
        assert multiplier > 0

    first = module_cls(problem="heat", **settings)
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)
    data = PINNDataModule("heat", seed=0, total_iterations=24)
    stop = 6 if module_cls is APTSPINN else 11  # APTS: before the curriculum's switch, where replicas factorize
    fast_trainer(stop, tmp_path, enable_checkpointing=True, callbacks=[ckpt]).fit(first, data)
    if module_cls is APTSPINN:  # each replica's multiplier goes into the checkpoint
        assert min(first.optimizers().optimizer.local_multipliers) > 0
    resumed = module_cls(problem="heat", **settings)
    data = PINNDataModule("heat", seed=0, total_iterations=24)
    trainer = fast_trainer(24, tmp_path)
    trainer.fit(resumed, data, ckpt_path=str(tmp_path / "last.ckpt"))
    assert trainer.global_step == 24
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    if module_cls is not AdamPINN:
        def record(module):  # the optimizer's state but the seconds its stages took
            optimizer = module.optimizers().optimizer
            state = dict(optimizer.state[optimizer.key])
            state["last"] = {k: v for k, v in state["last"].items() if not k.endswith("_seconds")}
            return state

        assert record(straight) == record(resumed)


def test_logs_figure_and_checkpoint(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    module = AdamPINN(problem="heat", log_every=5)
    logger = TensorBoardLogger(str(tmp_path), name="run")
    callbacks = [ModelCheckpoint(save_last=True, save_top_k=0)]
    trainer = fit(module, "heat", 12, tmp_path, logger=logger, enable_checkpointing=True, callbacks=callbacks)
    run_dir = tmp_path / "run" / "version_0"
    assert (run_dir / "error.png").stat().st_size > 10_000
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0}).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss/total", "loss/interior", "loss/initial", "loss/boundary", "time/iteration"} <= tags
    assert {"error/rel_l2", "error/rmse"} <= tags
    assert [e.step for e in events.Scalars("loss/total")] == list(range(12))
    assert [e.step for e in events.Scalars("error/rel_l2")] == [0, 5, 10, 11]
    assert "error/heatmap" in events.Tags()["images"]
    final = events.Scalars("error/rel_l2")[-1].value
    assert final == pytest.approx(float(module.solution_errors()["error/rel_l2"]), rel=1e-6)
    assert trainer.global_step == 12
    # wall-clock seconds of training, every iteration, rising, ending where the module's clock is
    elapsed = [e.value for e in events.Scalars("time/elapsed")]
    assert len(elapsed) == 12 and all(0 < a < b for a, b in zip(elapsed, elapsed[1:]))
    assert elapsed[-1] <= module.elapsed()
    assert elapsed[0] >= events.Scalars("time/iteration")[0].value


def test_a_run_stopped_early_logs_its_last_iterates_errors(tmp_path):
    """A run stopped before its planned last iteration (a time budget, a graceful stop: a callback sets
    should_stop) logs the solution errors of the iterate it ends on, as the planned last does."""
    from lightning.pytorch.callbacks import Callback
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    class StopAfterFive(Callback):
        def on_train_batch_end(self, trainer, *args, **kwargs):
            trainer.should_stop = trainer.global_step == 5

    module = AdamPINN(problem="heat", log_every=3)
    fit(module, "heat", 12, tmp_path, logger=TensorBoardLogger(str(tmp_path), name="run"), callbacks=[StopAfterFive()])
    events = EventAccumulator(str(tmp_path / "run" / "version_0"), size_guidance={"scalars": 0}).Reload()
    assert [e.step for e in events.Scalars("error/rel_l2")] == [0, 3, 4]
    assert events.Scalars("error/rel_l2")[-1].value == pytest.approx(float(module.solution_errors()["error/rel_l2"]),
                                                                     rel=1e-6)
    assert [e.step for e in events.Scalars("time/elapsed")][-2:] == [4, 4]  # the iteration's, and the stop's


def test_progress_bar_labels_are_not_tensorboard_tags(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    module = APTSPINN(problem="heat", num_subdomains=2, local_steps=1, cg_max_iter=2)
    logger = TensorBoardLogger(str(tmp_path), name="run")
    trainer = fit(module, "heat", 2, tmp_path, logger=logger)
    tags = set(EventAccumulator(str(tmp_path / "run" / "version_0")).Reload().Tags()["scalars"])
    assert {"loss/total", "error/rel_l2", "apts/radius", "apts/stage1_acceptance_rate"} <= tags
    assert not tags & {"loss", "rel_l2", "radius", "acc"}
    assert {"loss", "rel_l2", "radius", "acc"} <= set(trainer.progress_bar_metrics)


def test_every_trust_region_constant_reaches_the_optimizer_cg_rtol_included():
    from pinn_apts.training.cli import cli_main

    tr = TrustRegionPINN(problem="heat", cg_rtol=0.3, eta1=0.2, eta2=0.6).configure_optimizers()
    assert (tr.config.cg_rtol, tr.config.eta1, tr.config.eta2) == (0.3, 0.2, 0.6)
    apts = APTSPINN(problem="heat", cg_rtol=0.3, damping=0.0).configure_optimizers()
    assert (apts.config.trust_region.cg_rtol, apts.config.trust_region.damping) == (0.3, 0.0)
    with pytest.raises(ValueError, match=r"cg_rtol must lie in \(0, 1\), got 2.0"):
        APTSPINN(problem="heat", cg_rtol=2.0)
    cli = cli_main(["--model.init_args.cg_rtol=0.25", "--trainer.logger=false"], run=False)
    assert cli.model.configure_optimizers().config.trust_region.cg_rtol == 0.25
