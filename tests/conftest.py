import pytest
import torch

from pinn_apts.core.distributed import Communicator


def pytest_collection_modifyitems(items):
    """``repro`` and ``ddp`` tests are slow too: the quick command (``-m "not slow"``) leaves them out."""
    for item in items:
        if item.get_closest_marker("repro") or item.get_closest_marker("ddp"):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _single_thread_float64():
    """Small PINN tensors run fastest on one thread; tests build float64 tensors by default."""
    threads, dtype = torch.get_num_threads(), torch.get_default_dtype()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.set_default_dtype(dtype)


def fast_trainer(max_steps: int, tmp_path=None, **kwargs):
    """A quiet float64 Trainer for tests."""
    import lightning as L

    defaults = dict(
        max_steps=max_steps,
        precision="64-true",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        default_root_dir=str(tmp_path) if tmp_path is not None else None,
    )
    defaults.update(kwargs)
    return L.Trainer(**defaults)


class FakeRank(Communicator):
    """Rank ``rank`` of ``world_size`` processes whose sums are identities: one process's view of a
    data-parallel run, without a process group."""

    def __init__(self, rank: int = 0, world_size: int = 2) -> None:
        self.rank, self.world_size = rank, world_size
