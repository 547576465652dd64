"""Global latents with many dimensions: each dimension's shift from its prior (closed form), the
few that matter chosen, the rest summarized; the report draws only those (issue 20: a
66,040-dimension global, like sparse_gamma_def's weights)."""

import json
import re

import arviz_base
import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import pytest
import torch

from ppl_vae.diagnostics.globals import global_overview, global_table, select_globals
from ppl_vae.diagnostics.summary import Diagnostics
from ppl_vae.reporting.posterior import MAX_PANELS, posterior_section

D, DRAWS, PRIOR_SD, POST_SD = 66_040, 100, 2.0, 0.5
PLANTED = {65_000: -6.0, 7: 5.0, 300: 4.0}  # posterior means; every other dimension is at 0


def model(x):
    pyro.sample("w", dist.Normal(x.new_zeros(D), PRIOR_SD).to_event(1))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(x.new_zeros(()), 1.0), obs=x[:, 0])


@pytest.fixture(scope="module")
def tree():
    rng = np.random.default_rng(0)
    mu = np.zeros(D)
    for d, m in PLANTED.items():
        mu[d] = m
    draws = (mu + POST_SD * rng.standard_normal((1, DRAWS, D))).astype(np.float32)
    t = arviz_base.from_dict({"posterior": {"w": draws}}, dims={"w": ["w_dim_0"]})
    t.attrs.update(global_sites=json.dumps(["w"]), local_sites="[]", data_plate="data")
    return t


def test_shift_and_contraction_per_dimension_match_the_closed_form(tree, dtype):
    x = torch.zeros(4, 1, dtype=dtype)
    table = global_table(tree, model, (x,))
    assert len(table) == D and table["index"].iloc[7] == "w[7]"
    assert np.allclose(table["prior_sd"], PRIOR_SD) and np.allclose(table["prior_mean"], 0)
    se = POST_SD / np.sqrt(DRAWS) / PRIOR_SD  # standard error of a shift
    for d, m in PLANTED.items():
        assert abs(table["shift"].iloc[d] - m / PRIOR_SD) < 4 * se
    # Contraction 1 - 0.25 / 4; the sd of 100 draws has a relative error of about 7%.
    assert abs(table["contraction"].median() - (1 - POST_SD**2 / PRIOR_SD**2)) < 0.01
    chosen, why = select_globals(table, 3)
    assert chosen["index"].tolist() == ["w[65000]", "w[7]", "w[300]"] and "prior" in why
    overview = global_overview(table).set_index("statistic")
    assert (overview["dimensions"] == D).all()
    assert abs(overview.loc["shift", "median"]) < 4 * se


def test_without_prior_moments_the_largest_posterior_z_is_chosen(tree):
    table = global_table(tree)  # no model: the prior columns are NaN
    assert table["prior_sd"].isna().all()
    chosen, why = select_globals(table, 3)
    assert set(chosen["index"]) == {"w[65000]", "w[7]", "w[300]"} and "zero" in why


def test_the_report_draws_the_dimensions_that_matter_and_summarizes_the_rest(tree):
    diag = Diagnostics(tree=tree, pointwise=pd.DataFrame(), latent=pd.DataFrame(),
                       mutual_information=float("nan"), posterior=pd.DataFrame(),
                       global_latents=global_table(tree, model, (torch.zeros(4, 1),)))
    parts = "\n".join(posterior_section(diag, []))
    assert len(re.findall(r"<img ", parts)) == 1  # one figure, not 66,040 panels
    caption = re.search(r"<figcaption>([^<]*)</figcaption>", parts).group(1)
    assert f"{MAX_PANELS} of the 66,040 global latent dimensions" in caption
    for d in PLANTED:
        assert f"w[{d}]" in caption
    assert "summarized per site" in parts and "<td>66040</td>" in parts
    assert "<b>shift</b>" in parts  # the columns are explained
