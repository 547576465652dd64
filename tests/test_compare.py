"""``ppl_vae.compare`` (diagnostics/compare.py): held-out log p(x) per point, paired."""

import math

import matplotlib
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import ppl_vae
from ppl_vae.diagnostics.compare import paired_difference

matplotlib.use("Agg")


def test_paired_standard_error_is_the_closed_form():
    """d_i = a_i - b_i alternates 1.5 and -0.5 over N = 10 points: mean 0.5, sample sd
    sqrt(N / (N - 1)), standard error 1 / sqrt(N - 1); the unpaired spread of a and b (sd 10)
    does not enter it."""
    n = 10
    b = np.linspace(-20.0, 20.0, n)
    d = np.where(np.arange(n) % 2 == 0, 1.5, -0.5)
    mean, se = paired_difference(b + d, b)
    assert mean == pytest.approx(0.5)
    assert se == pytest.approx(1.0 / math.sqrt(n - 1))
    with pytest.raises(ValueError, match="two 1-D arrays"):
        paired_difference([1.0], [2.0])


class Encoder(nn.Module):
    """q(z | x) = Normal(x / 2, scale): the exact posterior of the model below at scale
    sqrt(1/2)."""

    def __init__(self, scale, shift=0.0):
        super().__init__()
        self.scale, self.shift = scale, shift
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        pyro.module("encoder", self)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x / 2 + self.shift + self.dummy, self.scale))


def model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros_like(x), 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def _result(guide, x):
    return ppl_vae.FitResult(model=model, guide=guide, history=_history(), params={},
                             settings={})


def _history():
    import pandas as pd

    return pd.DataFrame({"epoch": [1, 2], "train_elbo": [-2.0, -1.9], "seconds": [0.5, 0.25]})


def test_exact_posterior_beats_a_wide_guide_and_equals_itself():
    """x ~ Normal(0, 2) marginally: log p(x) = log Normal(x; 0, sqrt 2). With the exact
    posterior as guide every importance weight is p(x), so its log p(x) is exact (k-hat -inf);
    a guide shifted by 1.5 posterior sd x 2 (KL 2.25 nats) estimates less, by more than 4
    paired standard errors."""
    x = torch.randn(400) * math.sqrt(2.0)
    exact, wide = Encoder(math.sqrt(0.5)), Encoder(math.sqrt(0.5), shift=1.5)
    result = ppl_vae.compare({"exact": _result(exact, x), "wide": _result(wide, x),
                              "again": _result(exact, x)}, x, num_samples=50)
    t = result.table
    truth = float(dist.Normal(0.0, math.sqrt(2.0)).log_prob(x).mean())
    assert t.loc["exact", "log_px"] == pytest.approx(truth, abs=1e-4)
    assert t.loc["exact", "elbo"] == pytest.approx(truth, abs=1e-4)
    assert t.loc["wide", "elbo"] == pytest.approx(truth - 2.25, abs=0.2)
    assert t.loc["exact", "khat_bad_share"] == 0.0
    assert t.loc["again", "diff"] == 0.0 and t.loc["again", "diff_se"] == 0.0
    assert t.loc["wide", "diff"] < -4 * t.loc["wide", "diff_se"]
    assert t.loc["wide", "diff_se"] < t.loc["wide", "log_px_se"]  # pairing removes x's spread
    assert t.loc["exact", "train_seconds"] == 0.75 and t.loc["exact", "epochs"] == 2
    assert t.loc["exact", "active_units"] == 1
    assert list(result.pointwise.columns) == ["exact", "wide", "again"]
    fig = result.figure()
    assert len(fig.axes) == 2
    assert "<table" in result._repr_html_()


def test_compare_needs_two_runs_and_data_for_fit_results():
    x = torch.randn(10)
    one = _result(Encoder(1.0), x)
    with pytest.raises(ValueError, match="at least two runs"):
        ppl_vae.compare([one], x)
    with pytest.raises(ValueError, match="pass the held-out data"):
        ppl_vae.compare([one, one])
    with pytest.raises(TypeError, match="not a FitResult or a run folder"):
        ppl_vae.compare([one, 3], x)


def _shared_name_model(x):
    shift = pyro.param("shift", torch.tensor(0.0))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros_like(x), 1.0))
        pyro.sample("x", dist.Normal(z + shift, 1.0), obs=x)


def _shared_name_guide(x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal((x - pyro.param("shift")) / 2, math.sqrt(0.5)))


def test_runs_whose_programs_share_param_names_each_use_their_own():
    """Two fits of programs with the same ``pyro.param`` name: the global store holds only the
    second's value, yet each run is scored with its own, and the store is left as it was."""
    x = torch.randn(300) * math.sqrt(2.0) + 3.0
    results = []
    for value in (3.0, 0.0):
        pyro.clear_param_store()
        pyro.param("shift", torch.tensor(value))
        params = {"pyro_params": {"shift": pyro.param("shift").unconstrained().detach().clone()}}
        results.append(ppl_vae.FitResult(model=_shared_name_model, guide=_shared_name_guide,
                                         history=_history(), params=params, settings={}))
    t = ppl_vae.compare({"right": results[0], "wrong": results[1]}, x, num_samples=20).table
    truth = float(dist.Normal(3.0, math.sqrt(2.0)).log_prob(x).mean())
    assert t.loc["right", "log_px"] == pytest.approx(truth, abs=1e-3)
    assert t.loc["wrong", "diff"] < -4 * t.loc["wrong", "diff_se"]
    assert float(pyro.param("shift").detach()) == 0.0  # the caller's store, as it was
