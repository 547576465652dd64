"""fit(epochs="auto"): train until the ELBO stops improving, keep the best epoch, schedules."""

import pyro
import pytest
import torch

from ppl_vae import fit
from ppl_vae.guides import MLPEncoder
from ppl_vae.models import VAE


def _programs(seed=0):
    pyro.set_rng_seed(seed)
    return VAE(64, 4, hidden=32), MLPEncoder(64, 4, hidden=32)


def _data(digits):
    return (torch.as_tensor(digits.train[:256], dtype=torch.float32),
            torch.as_tensor(digits.test[:128], dtype=torch.float32))


def test_auto_stops_on_a_plateau_and_keeps_the_best_epoch(digits):
    x, v = _data(digits)
    m, g = _programs()
    # A tolerance no epoch can beat after the first: patience runs out at epoch 1 + 3.
    r = fit(m, g, x, validation_data=v, epochs="auto", patience=3, max_epochs=50,
            tolerance=100.0, batch_size=64, progress=False)
    assert len(r.history) == 4 and r.settings["stopped_by"] == "patience"
    assert r.settings["epochs_mode"] == "auto" and r.settings["max_epochs"] == 50
    assert r.stopped_early and r.settings["kept_epoch"] == 1  # the report shows it


def test_auto_is_bounded_by_max_epochs_and_restores_the_best(digits):
    x, v = _data(digits)
    m, g = _programs()
    snapshots = []

    def keep(record, state):
        snapshots.append([p.detach().clone() for p in state.params])

    # No later epoch beats the first by 100 nats, so the first stays the best: the budget ends
    # the run and the first epoch's parameters come back.
    r = fit(m, g, x, validation_data=v, epochs="auto", patience=50, max_epochs=4,
            tolerance=100.0, batch_size=64, lr=3e-3, progress=False, callbacks=[keep])
    assert len(r.history) == 4 and r.settings["stopped_by"] == "max_epochs"
    assert not r.stopped_early and r.settings["kept_epoch"] == 1
    now = [p.detach() for p in r.state.params]
    assert all(torch.equal(a, b) for a, b in zip(now, snapshots[0], strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(now, snapshots[-1], strict=True))


def test_auto_without_validation_watches_the_smoothed_training_elbo(digits):
    x, _ = _data(digits)
    m, g = _programs()
    r = fit(m, g, x, epochs="auto", patience=2, max_epochs=5, tolerance=100.0, batch_size=64,
            progress=False)
    assert "smoothed_train_elbo" in r.history and r.settings["stopped_by"] == "patience"
    h = r.history
    assert h["smoothed_train_elbo"].iloc[1] == pytest.approx(
        0.3 * h["train_elbo"].iloc[1] + 0.7 * h["train_elbo"].iloc[0])


def test_plateau_schedule_halves_the_rate_and_is_recorded(digits):
    x, v = _data(digits)
    m, g = _programs()
    r = fit(m, g, x, validation_data=v, epochs=6, patience=8, tolerance=100.0, batch_size=64,
            lr=1e-3, lr_schedule="plateau", progress=False)
    # No epoch improves by 100 nats: after max(2, 8 // 4) = 2 bad epochs the rate halves.
    lr = r.history["lr"].tolist()
    assert lr[0] == 1e-3 and lr[-1] < 1e-3 and all(b <= a for a, b in zip(lr[:-1], lr[1:], strict=True))


def test_time_budget_stops_training(digits):
    x, _ = _data(digits)
    m, g = _programs()
    r = fit(m, g, x, epochs=1000, time_budget=1e-9, batch_size=64, progress=False)
    assert len(r.history) == 1 and r.settings["stopped_by"] == "time_budget"


@pytest.mark.parametrize("kwargs, error, match", [
    ({"epochs": "forever"}, TypeError, "epochs must be an integer or 'auto'"),
    ({"epochs": "auto", "patience": 0}, ValueError, "patience"),
    ({"lr_schedule": "cosine"}, ValueError, "lr_schedule"),
    ({"time_budget": -1.0}, ValueError, "time_budget"),
])
def test_bad_convergence_arguments(digits, kwargs, error, match):
    x, _ = _data(digits)
    m, g = _programs()
    with pytest.raises(error, match=match):
        fit(m, g, x, progress=False, **kwargs)
