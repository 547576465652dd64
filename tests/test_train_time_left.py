"""What the training loop tells the default step's background compile about the time left
(``ppl_vae.train.loop._time_left``): the epochs left at the mean epoch time, patience counted
from the best epoch (not within warm-up), the time budget."""

from types import SimpleNamespace

import pytest

from ppl_vae.train.callbacks import EarlyStopping
from ppl_vae.train.loop import _time_left


def _config(max_epochs, time_budget=None):
    return SimpleNamespace(max_epochs=max_epochs, loop=SimpleNamespace(time_budget=time_budget))


def _records(n, seconds=0.5, start=1):
    return [{"epoch": e, "seconds": seconds} for e in range(start, start + n)]


def test_epochs_left_at_the_mean_epoch_time():
    records = []
    left = _time_left(_config(100), records, None, 0)
    assert left() is None  # no epoch of this run ended yet
    records += _records(10)
    assert left() == pytest.approx(90 * 0.5)


def test_patience_bounds_what_is_surely_left():
    stopper = EarlyStopping(20, warmup=0)
    stopper.best_epoch = 35
    records = _records(40)
    # 5 epochs since the best: at least 15 more before patience may stop the run.
    assert _time_left(_config(500), records, stopper, 0)() == pytest.approx(15 * 0.5)
    stopper.best_epoch = 0
    assert _time_left(_config(500), records, stopper, 0)() == 0.0
    warming = EarlyStopping(20, warmup=50)  # patience counts from epoch 50: not before 70
    assert _time_left(_config(500), records, warming, 0)() == pytest.approx(30 * 0.5)


def test_time_budget_and_resumed_epochs():
    records = _records(10, seconds=1.0) + _records(2, seconds=3.0, start=11)
    # Resumed after epoch 10: the mean is this run's (3 s), the budget counts every epoch.
    assert _time_left(_config(20), records, None, 10)() == pytest.approx(8 * 3.0)
    assert _time_left(_config(20, time_budget=20.0), records, None, 10)() == pytest.approx(4.0)
