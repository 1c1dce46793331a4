"""Checkpoints as data, resuming, refused combinations and the graceful stop, from Python."""

import logging
import os
import signal

import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from pinn_apts import APTSPINN, AdamPINN, PINNDataModule, TrustRegionPINN
from pinn_apts.pde.problems import Burgers, Heat
from pinn_apts.training.callbacks import GracefulStop

from .conftest import fast_trainer

SIZES = dict(early_sizes=(200, 60, 20), late_sizes=(200, 30, 30))


def data(problem="burgers", **kwargs):
    return PINNDataModule(problem, seed=1, **{**SIZES, **kwargs})


def checkpointing(tmp_path, steps, every=None, **kwargs):
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0, every_n_train_steps=every)
    return fast_trainer(steps, tmp_path, enable_checkpointing=True, callbacks=[ckpt, *kwargs.pop("callbacks", [])],
                        **kwargs)


def same_parameters(a, b):
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_checkpoint_loads_with_weights_only_and_rebuilds_the_problem(tmp_path):
    module = APTSPINN(problem=Burgers(nu=0.02), seed=1)
    checkpointing(tmp_path, 2).fit(module, data(Burgers(nu=0.02)))
    raw = torch.load(tmp_path / "last.ckpt", weights_only=True)  # no pickled objects
    assert raw["hyper_parameters"]["problem"] == {
        "class_path": "pinn_apts.Burgers", "init_args": {"nu": 0.02, "quadrature_order": 200}}
    assert raw["global_step"] == 2 and raw["PINNDataModule"]["total_iterations"] == 2
    loaded = APTSPINN.load_from_checkpoint(tmp_path / "last.ckpt", weights_only=True)
    assert loaded.problem == Burgers(nu=0.02) and loaded.problem != Burgers()
    assert same_parameters(loaded, module)


def test_last_checkpoint_holds_the_final_iteration_after_periodic_ones(tmp_path):
    # Lightning's ModelCheckpoint writes last.ckpt at the end only if it wrote none before
    checkpointing(tmp_path, 5, every=2).fit(AdamPINN(problem="heat"), data("heat"))
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 5


@pytest.mark.slow
def test_extended_run_keeps_its_schedule_and_equals_that_run_uninterrupted(tmp_path):
    first = APTSPINN(problem="burgers", seed=1)
    checkpointing(tmp_path, 8).fit(first, data())  # planned for 8: late point counts from iteration 3 on
    resumed = APTSPINN(problem="burgers", seed=1)
    trainer = fast_trainer(12)
    trainer.fit(resumed, data(), ckpt_path=str(tmp_path / "last.ckpt"))
    assert trainer.global_step == 12
    # the same switch (ceil(0.25 * 12) = 3) in one uninterrupted run of 12
    straight = APTSPINN(problem="burgers", seed=1)
    fast_trainer(12).fit(straight, data(curriculum_fraction=0.25))
    assert same_parameters(resumed, straight)
    replanned = APTSPINN(problem="burgers", seed=1)
    fast_trainer(12).fit(replanned, data())  # planned for 12: switch at 4, other points
    assert not same_parameters(resumed, replanned)


def test_resume_refuses_an_explicit_other_schedule(tmp_path):
    checkpointing(tmp_path, 3).fit(AdamPINN(problem="heat", seed=1), data("heat", total_iterations=6))
    with pytest.raises(ValueError, match=r"data.total_iterations \(8\) differs from the checkpoint's planned run length \(6\)"):
        fast_trainer(6).fit(AdamPINN(problem="heat", seed=1), data("heat", total_iterations=8),
                            ckpt_path=str(tmp_path / "last.ckpt"))


def test_run_planned_shorter_than_it_runs_is_refused():
    trainer = fast_trainer(10)
    with pytest.raises(ValueError, match=r"data.total_iterations \(5\) must be at least trainer.max_steps \(10\)"):
        trainer.fit(AdamPINN(problem="heat"), data("heat", total_iterations=5))
    assert trainer.global_step == 0


@pytest.mark.parametrize(
    "make_module, make_data, message",
    [
        (lambda: AdamPINN(problem="burgers", seed=1), lambda: data("burgers"),
         r"model.problem: checkpoint \{'class_path': 'pinn_apts.Heat'.*this run \{'class_path': 'pinn_apts.Burgers'"),
        (lambda: APTSPINN(problem="heat", seed=1), lambda: data("heat"),
         "the checkpoint was made by AdamPINN and this run's model is APTSPINN"),
        (lambda: AdamPINN(problem="heat", seed=1, lr=1e-3), lambda: data("heat"),
         r"model.lr: checkpoint 0.009, this run 0.001"),
        (lambda: AdamPINN(problem="heat", seed=1), lambda: data("heat", resample_every=5),
         r"data.resample_every: checkpoint 10, this run 5"),
    ],
)
def test_resume_with_other_method_problem_or_settings_is_refused(tmp_path, make_module, make_data, message):
    checkpointing(tmp_path, 2).fit(AdamPINN(problem="heat", seed=1), data("heat"))
    trainer = fast_trainer(4)
    with pytest.raises(ValueError, match=message):
        trainer.fit(make_module(), make_data(), ckpt_path=str(tmp_path / "last.ckpt"))
    assert trainer.global_step == 0  # refused before any training


def test_a_checkpoint_of_an_older_version_is_refused_naming_that_version(tmp_path):
    checkpointing(tmp_path, 2).fit(AdamPINN(problem="heat", seed=1), data("heat"))
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)
    saved["pinn_apts"]["module"] = "pinn_apts.modules.AdamPINN"  # the path before the subpackages
    torch.save(saved, tmp_path / "old.ckpt")
    with pytest.raises(ValueError, match="names pinn_apts.modules.AdamPINN, .* written by an older pinn-apts"):
        fast_trainer(4).fit(AdamPINN(problem="heat", seed=1), data("heat"), ckpt_path=str(tmp_path / "old.ckpt"))


def test_resume_may_change_what_is_logged(tmp_path):
    checkpointing(tmp_path, 2).fit(AdamPINN(problem="heat", seed=1), data("heat"))
    trainer = fast_trainer(3)
    trainer.fit(AdamPINN(problem="heat", seed=1, log_every=5), data("heat"), ckpt_path=str(tmp_path / "last.ckpt"))
    assert trainer.global_step == 3


def test_model_and_data_on_different_problems_are_refused():
    trainer = fast_trainer(2)
    with pytest.raises(ValueError, match=r"the model's problem Burgers\(nu=.*\) and the data's problem Heat\(kappa=0.4\) differ"):
        trainer.fit(APTSPINN(problem="burgers"), data("heat"))
    assert trainer.global_step == 0
    with pytest.raises(ValueError, match=r"Heat\(kappa=0.2\) and the data's problem Heat\(kappa=0.4\)"):
        fast_trainer(2).fit(AdamPINN(problem=Heat(kappa=0.2)), data("heat"))


@pytest.mark.parametrize("precision", ["bf16-true", "16-true", "bf16-mixed"])
def test_half_and_mixed_precision_are_refused(precision):
    trainer = fast_trainer(2, precision=precision)
    with pytest.raises(ValueError, match=f"trainer.precision must be '64-true' .* got '{precision}'"):
        trainer.fit(TrustRegionPINN(problem="heat"), data("heat"))
    assert trainer.global_step == 0


def test_negative_seed_is_refused():
    with pytest.raises(ValueError, match="seed must be an integer >= 0, got -1"):
        PINNDataModule("heat", seed=-1)
    with pytest.raises(ValueError, match="seed must be an integer >= 0, got -2"):
        AdamPINN(problem="heat", seed=-2)


class SignalAt(Callback):
    """Send ``signum`` to this process when outer iteration ``iteration`` starts."""

    def __init__(self, iteration, signum):
        self.iteration, self.signum = iteration, signum

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.iteration:
            os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_after_the_iteration_and_resume_is_exact(tmp_path, signum):
    before = signal.getsignal(signum)
    straight = TrustRegionPINN(problem="heat", seed=1)
    fast_trainer(9).fit(straight, data("heat"))

    stopped = TrustRegionPINN(problem="heat", seed=1)
    trainer = checkpointing(tmp_path, 9, callbacks=[SignalAt(4, signum)])
    trainer.fit(stopped, data("heat"))
    stop = next(cb for cb in trainer.callbacks if isinstance(cb, GracefulStop))
    assert stop.stopped and stop.signal == signum and trainer.global_step == 5  # iteration 4 finished
    assert signal.getsignal(signum) is before  # the handler is gone after fit
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 5

    resumed = TrustRegionPINN(problem="heat", seed=1)
    fast_trainer(9).fit(resumed, data("heat"), ckpt_path=str(tmp_path / "last.ckpt"))
    assert same_parameters(resumed, straight)
    assert resumed.optimizers().optimizer.state["trust_region"] == straight.optimizers().optimizer.state["trust_region"]


class DieAt(Callback):
    """Raise (as a killed process would stop, with no checkpoint at the end) when ``iteration`` starts."""

    def __init__(self, iteration):
        self.iteration = iteration

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.iteration:
            raise SystemExit("killed")


def test_a_run_stopped_before_its_first_periodic_checkpoint_keeps_resuming_from_its_newest(tmp_path):
    # stopped by a signal before the first periodic save: the last.ckpt written then must not turn the
    # resumed run's saves into last-v1.ckpt (resuming again from last.ckpt would then repeat work)
    checkpointing(tmp_path, 9, every=3, callbacks=[SignalAt(1, signal.SIGTERM)]).fit(
        AdamPINN(problem="heat", seed=1), data("heat"))
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 2
    with pytest.raises(SystemExit, match="killed"):
        checkpointing(tmp_path, 9, every=3, callbacks=[DieAt(7)]).fit(
            AdamPINN(problem="heat", seed=1), data("heat"), ckpt_path=str(tmp_path / "last.ckpt"))
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == ["last.ckpt"]
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 6


class Poisoned(Heat):
    """Heat whose residual turns NaN after ``allowed`` more evaluations, once armed."""

    allowed = None

    def residual(self, jet):
        r = super().residual(jet)
        if self.allowed is not None:
            if self.allowed <= 0:
                return r * float("nan")
            self.allowed -= 1
        return r


class ArmAt(Callback):
    def __init__(self, problem, iteration):
        self.problem, self.iteration = problem, iteration

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.iteration:
            # the loss at theta_k (the closure's, then the flat functions'), then only non-finite trial losses
            self.problem.allowed = 2


def test_non_finite_trial_losses_are_counted_and_named(caplog):
    problem = Poisoned()
    module = TrustRegionPINN(problem=problem, seed=1)
    logged = []
    module.log_metrics = lambda metrics, step: logged.append((step, metrics))
    trainer = fast_trainer(6, callbacks=[ArmAt(problem, 2)])
    with caplog.at_level(logging.WARNING, logger="pinn_apts"):
        with pytest.raises(FloatingPointError, match=(
            r"non-finite loss at outer iteration 3: the interior term is nan.*"
            r"trial losses were last non-finite at outer iteration 2")):
            trainer.fit(module, data(problem))
    step, metrics = logged[-1]
    assert step == 2 and metrics["tr/accepted"] == 0.0
    assert metrics["tr/non_finite_trials"] == metrics["tr/tries"] > 30  # every try, down to min_radius
    assert any("outer iteration 2:" in r.message and "no step was accepted down to min_radius" in r.message
               for r in caplog.records)
    assert all(torch.isfinite(p).all() for p in module.parameters())


@pytest.mark.slow
def test_residual_sampling_resumes_mid_block_on_the_points_it_chose(tmp_path):
    """Residual sampling chooses each block's points by the residuals at the block's first iteration; the
    checkpoint keeps them, so a run resumed inside a block (iteration 6 of the block 4-7) chooses the
    points the uninterrupted run did and ends on the same parameters. The choice is not the uniform one."""
    def residual_data():
        return data(resample_every=4, interior_sampling="residual", residual_pool=1000)

    straight = APTSPINN(problem="burgers", seed=1, num_subdomains=2)
    fast_trainer(10).fit(straight, residual_data())
    first = APTSPINN(problem="burgers", seed=1, num_subdomains=2)
    checkpointing(tmp_path, 6).fit(first, data(resample_every=4, interior_sampling="residual", residual_pool=1000,
                                               total_iterations=10))
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)["PINNDataModule"]
    assert saved["residuals"]["block"] == 1 and saved["residuals"]["values"].shape == (1000,)
    resumed = APTSPINN(problem="burgers", seed=1, num_subdomains=2)
    fast_trainer(10).fit(resumed, residual_data(), ckpt_path=str(tmp_path / "last.ckpt"))
    assert same_parameters(resumed, straight)
    uniform = APTSPINN(problem="burgers", seed=1, num_subdomains=2)
    fast_trainer(10).fit(uniform, data(resample_every=4))
    assert not same_parameters(uniform, straight)
    # a checkpoint of uniform sampling is not resumed with residual sampling
    checkpointing(tmp_path / "u", 2).fit(APTSPINN(problem="burgers", seed=1, num_subdomains=2), data(total_iterations=4))
    with pytest.raises(ValueError, match="data settings"):
        fast_trainer(4).fit(APTSPINN(problem="burgers", seed=1, num_subdomains=2),
                            data(interior_sampling="residual", residual_pool=1000),
                            ckpt_path=str(tmp_path / "u" / "last.ckpt"))
