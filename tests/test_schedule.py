import math

import pytest

from train_loop.training.schedule import DECAYS, LRSchedule

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("kind", ["linear", "cosine", "constant"])
def test_peak_is_exactly_the_learning_rate_at_the_end_of_warmup(kind):
    schedule = LRSchedule(kind, peak=1e-4, warmup_steps=500, total_steps=12000)
    assert schedule(500) == 1e-4
    assert schedule(1) == pytest.approx(1e-4 / 500)
    assert all(schedule(s) < 1e-4 for s in range(1, 500))


def test_linear_decays_to_min_and_every_step_still_learns():
    schedule = LRSchedule("linear", peak=1.0, warmup_steps=10, total_steps=110, min_lr=0.0)
    values = [schedule(s) for s in range(10, 111)]
    assert values == sorted(values, reverse=True)
    assert schedule(110) > 0
    assert schedule(60) == pytest.approx(1.0 - 50 / 101)


def test_cosine_halfway_is_half_the_peak():
    schedule = LRSchedule("cosine", peak=2.0, warmup_steps=0, total_steps=99)
    # Without warmup, step 1 uses the peak and the decay runs over steps 2..99 (+1 after).
    assert schedule(50) == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * 49 / 99)))
    assert schedule(1) == 2.0


def test_min_learning_rate_floor():
    schedule = LRSchedule("linear", peak=1e-3, warmup_steps=0, total_steps=10, min_lr=1e-5)
    assert min(schedule(s) for s in range(1, 11)) > 1e-5


def test_every_registered_decay_runs_from_the_peak_to_the_minimum():
    for kind in DECAYS:
        schedule = LRSchedule(kind, peak=1.0, warmup_steps=2, total_steps=20, min_lr=0.1)
        values = [schedule(s) for s in range(2, 21)]
        assert values[0] == 1.0 and values == sorted(values, reverse=True)
        assert all(value >= 0.1 for value in values)
