"""What the report shows of the prior is computed by ``diagnose``: E[x | z] from the prior
against its closed form, the global latents' prior moments, and a report that renders them
without calling the model once."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from _diagnostics_cases import GlobalGuide, global_data, global_model

from ppl_vae.diagnostics import diagnose
from ppl_vae.diagnostics.prior import prior_means, prior_views
from ppl_vae.reporting.page import report

A, B = 2.0, 0.7  # x | z ~ N(A z + B, 0.5), z ~ N(0, 1)


def _linear(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(x.new_zeros(()), x.new_ones(())))
        loc = (A * z + B).unsqueeze(-1).expand(x.shape)
        pyro.sample("x", dist.Normal(loc, 0.5).to_event(1), obs=x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_prior_means_match_the_closed_form(dtype):
    n = 4000
    pyro.set_rng_seed(0)
    means = prior_means(_linear, (torch.zeros(n, 3, dtype=dtype),), count=n)
    assert means.shape == (n, 3) and list(means.columns) == ["x0", "x1", "x2"]
    column = means["x0"].to_numpy()
    # E[x | z] = A z + B: mean B (standard error A / sqrt(n)), sd A (standard error A / sqrt(2n)).
    assert abs(column.mean() - B) < 4 * A / math.sqrt(n)
    assert abs(column.std() - A) < 4 * A / math.sqrt(2 * n)
    assert (means["x1"] == means["x0"]).all()  # one z per row, broadcast over the event


def test_prior_means_of_a_model_that_observes_nothing_are_none():
    def silent(x):
        pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0))

    assert prior_means(silent, (torch.zeros(5, 2),)) is None


def test_diagnose_computes_the_prior_views_and_the_report_only_renders_them(tmp_path):
    x = global_data(40)
    guide = GlobalGuide(loc=1.5).double()
    diag = diagnose(global_model, guide, x, num_draws=30, gaps=False, calibrate=False,
                    progress=False)
    assert diag.prior_means.shape == (10, 4)
    table = diag.global_latents
    # mu ~ N(0, 3): the prior moments come from the model's trace, in diagnose.
    assert table["prior_mean"].tolist() == [0.0] and table["prior_sd"].tolist() == [3.0]
    views = prior_views(global_model, guide, x, diag.tree)
    assert views[0]["prior_sd"].tolist() == [3.0]

    def exploding(*args, **kwargs):
        raise AssertionError("the report ran the model")

    exploding.__name__ = "global_model"
    page = report(exploding, guide, x, out=tmp_path / "r.html", diagnostics=diag,
                  evaluation={"elbo": -1.0}, image_shape=(2, 2)).read_text()
    assert "prior samples" in page and "ArviZ view of the posterior" in page
