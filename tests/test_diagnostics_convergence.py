"""Convergence: the ELBO's slope at the end of training against its noise."""

import numpy as np
import pandas as pd

from ppl_vae.diagnostics.convergence import convergence
from ppl_vae.diagnostics.verdicts import convergence_row


def _history(values, column="val_elbo"):
    return pd.DataFrame({"epoch": np.arange(1, len(values) + 1), "train_elbo": values,
                         column: values})


def test_a_curve_still_rising_gets_the_warning_naming_its_gain():
    # Like the 30-epoch digits run: +0.03 nats per epoch under epoch noise of 0.05.
    rng = np.random.default_rng(0)
    e = np.arange(1, 31)
    values = -30 + 4 * (1 - np.exp(-e / 60)) + 0.05 * rng.standard_normal(30)
    conv = convergence(_history(values))
    assert conv.still_improving and conv.window == 10
    # Gain over the last 10% (3 epochs) = 3 * slope; the true slope there is ~0.04.
    assert 0.05 < conv.gain_last_10pct < 0.2
    row = convergence_row(conv)
    assert row["status"] == "warning" and "still improving" in row["why"]
    assert f"{conv.gain_last_10pct:.3f}" in row["why"] and "epochs='auto'" in row["advice"]


def test_a_converged_curve_does_not():
    # Risen and flat for the last 200 of 300 epochs, same noise; over 20 seeds none is flagged
    # at the 5% one-sided level plus the 0.02-nat gain floor (the noise alone gains ~0).
    e = np.arange(1, 301)
    flagged = 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        values = -30 + 5 * (1 - np.exp(-e / 20)) + 0.05 * rng.standard_normal(300)
        flagged += convergence(_history(values)).still_improving
    assert flagged == 0
    assert convergence_row(convergence(_history(values)))["status"] == "ok"


def test_the_training_elbo_is_used_without_validation_and_short_histories_are_not_judged():
    values = np.linspace(-30, -25, 40)
    h = _history(values).drop(columns="val_elbo")
    assert convergence(h).column == "train_elbo" and convergence(h).still_improving
    assert convergence(_history(values[:6])) is None
    assert convergence_row(None) is None


def _scheduled(seed=0):
    """Like the MNIST run of issue 23: the ELBO rises by 3 nats over 88 epochs at lr 3e-3 and
    while the plateau schedule halves the rate 11 times (down to 1.5e-6 at epoch 88), then is
    flat (noise 0.05) at that rate for the last 12 epochs; the patience rule stopped it."""
    rng = np.random.default_rng(seed)
    e = np.arange(1, 101)
    values = -30 + 3 * np.minimum(e, 88) / 88 + 0.05 * rng.standard_normal(100)
    lr = 3e-3 * 0.5 ** np.clip(e - 77, 0, 11)
    h = _history(values)
    h["lr"] = lr
    return h


def test_a_run_flat_at_its_decayed_learning_rate_is_not_told_to_train_longer():
    h = _scheduled()
    # Over the last third (34 epochs) the rise at the higher rates still shows...
    assert convergence(h.drop(columns="lr")).still_improving
    # ... but at the final rate (within a factor 2 of it) the ELBO is flat: converged.
    flagged = sum(convergence(_scheduled(seed), stopped_by="patience").still_improving
                  for seed in range(20))
    assert flagged <= 3  # a one-sided 5% test on flat noise: about 1 in 20
    conv = convergence(h, stopped_by="patience")
    assert conv.lr_end < 1e-5 and conv.window < 34
    row = convergence_row(conv)
    assert row["status"] == "ok" and row["advice"] == ""
    assert "final learning rate" in row["why"] and f"{conv.lr_end:.2g}" in row["why"]


def test_the_advice_follows_what_stopped_a_rising_run():
    rising = _history(np.linspace(-30, -25, 40))
    advice = {stop: convergence_row(convergence(rising, stopped_by=stop))["advice"]
              for stop in ("epochs", "max_epochs", "time_budget", "patience")}
    assert "epochs='auto'" in advice["epochs"]
    assert "--max-epochs" in advice["max_epochs"] and "--time-budget" in advice["time_budget"]
    assert "--patience" in advice["patience"] and "--tolerance" in advice["patience"]
    # Rising at a constant learning rate is still rising, whatever the lr column says.
    rising["lr"] = 1e-3
    assert convergence(rising).still_improving and convergence(rising).lr_note == ""
