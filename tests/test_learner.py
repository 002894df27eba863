"""The learner's learning-rate schedule (warm-up, then constant or a cosine decay) and the run's progress it tells
the agent."""

import math

import pytest
import torch
from accelerate import Accelerator
from hypothesis import given
from hypothesis import strategies as st

from amago_like.learner import Learner, lr_multiplier


def test_warm_up_then_constant_without_decay():
    assert [lr_multiplier(s, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lr_multiplier(10**6, 4, total=100) == 1.0  # a planned length alone does not decay


def test_cosine_decay_is_halfway_at_the_middle_and_ends_at_its_fraction():
    assert lr_multiplier(10, 10, total=110, decay_to=0.0) == pytest.approx(1.0)
    assert lr_multiplier(60, 10, total=110, decay_to=0.0) == pytest.approx(0.5)
    assert lr_multiplier(110, 10, total=110, decay_to=0.2) == pytest.approx(0.2)
    assert lr_multiplier(500, 10, total=110, decay_to=0.2) == pytest.approx(0.2)  # held after the planned end


@given(
    warmup=st.integers(0, 50),
    total=st.integers(0, 300),
    decay_to=st.floats(0.0, 1.0),
)
def test_after_warm_up_the_factor_never_rises_and_stays_between_its_ends(warmup, total, decay_to):
    factors = [lr_multiplier(s, warmup, total, decay_to) for s in range(max(warmup, 1) - 1, total + 20)]
    assert all(b <= a + 1e-12 for a, b in zip(factors, factors[1:]))
    assert all(decay_to - 1e-12 <= f <= 1.0 + 1e-12 for f in factors)
    assert not any(math.isnan(f) for f in factors)


class _Recorder(torch.nn.Module):
    """A one-parameter model whose loss records the run's progress the learner told it."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))
        self.register_buffer("training_progress", torch.zeros(()), persistent=False)
        self.seen: list[float] = []

    def soft_sync_targets(self) -> None:
        pass


def test_the_learner_tells_the_agent_the_fraction_of_planned_updates_done_before_each_update():
    model = _Recorder()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    learner = Learner(Accelerator(cpu=True), model, optimizer, 0.1, 0.0, 0, 1.0, total_updates=4, verbose=False)

    def compute_loss(_batch):
        model.seen.append(model.training_progress.item())
        return (model.w**2).sum(), {}

    for _ in range(6):
        learner.train_step(None, compute_loss)
    assert model.seen == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]  # held at 1 past the planned end
