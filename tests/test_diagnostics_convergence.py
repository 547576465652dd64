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
