"""scANVI-style program (``tests/programs/scanvi.py``): a program scaled by poutine.scale with
a classifier factor in the guide and dropout in the encoder, through fit, evaluate,
to_arviz, diagnose and report, against plain Pyro."""

import json
import math

import numpy as np
import pyro
import pytest
import torch
from programs import scanvi
from pyro.infer import Trace_ELBO

import ppl_vae
from ppl_vae.diagnostics.latent import mutual_information
from ppl_vae.evaluation.metrics import ScaledProgramWarning


def _pyro_elbos(net, data, num, train):
    net.train(train)
    try:
        with pyro.validation_enabled(False):
            return np.array([-Trace_ELBO().loss(net.model, net.guide, *data)
                             for _ in range(num)])
    finally:
        net.train()


@pytest.fixture(scope="module")
def trained():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    net = scanvi.SCANVI()
    data = scanvi.data()
    result = ppl_vae.fit(net.model, net.guide, data, estimator="mc", epochs=20, batch_size=10,
                         lr=1e-2, progress=False)
    return net, data, result


def test_evaluate_is_pyros_elbo_of_the_scaled_program(trained):
    net, data, _ = trained
    n, num = data[0].shape[0], 200
    with pytest.warns(ScaledProgramWarning, match="'z1' x 0.00208"):
        evaluation = ppl_vae.evaluate(net.model, net.guide, data, num_samples=num)
    assert evaluation.scaled and set(evaluation.scales) >= {"z1", "y", "z2", "x",
                                                           "classification_loss"}
    pyro.set_rng_seed(1)
    draws = _pyro_elbos(net, data, num, train=False) / n
    se = draws.std(ddof=1) * math.sqrt(2 / num)
    assert abs(evaluation["elbo"] - draws.mean()) < 4 * se
    assert all(m.training for m in net.modules())


def test_history_is_in_the_programs_units():
    """Full batch and a negligible learning rate: each epoch's train_elbo is one draw of
    Pyro's (train-mode) ELBO of the scaled program, per data point."""
    pyro.set_rng_seed(2)
    net = scanvi.SCANVI().double()
    data = scanvi.data(torch.float64)
    n = data[0].shape[0]
    result = ppl_vae.fit(net.model, net.guide, data, estimator="mc", epochs=60, batch_size=n,
                         lr=1e-12, progress=False)
    history = result.history["train_elbo"].to_numpy()
    draws = _pyro_elbos(net, data, 200, train=True) / n
    se = math.sqrt(history.var(ddof=1) / len(history) + draws.var(ddof=1) / len(draws))
    assert abs(history.mean() - draws.mean()) < 4 * se


def test_mutual_information_stays_below_log_n(trained):
    """Three local sites (z2, y, z1): their per-site informations summed to 105% of log N
    on this program; the joint estimate cannot pass it."""
    net, data, _ = trained
    mi = mutual_information(net.model, net.guide, data, data_plate="cells")
    assert 0 < mi <= math.log(data[0].shape[0]) * (1 + 1e-6)


@pytest.mark.filterwarnings("ignore::ppl_vae.evaluation.metrics.ScaledProgramWarning")
def test_diagnose_and_report_say_the_program_is_scaled(trained, tmp_path):
    _, data, result = trained
    diagnostics = ppl_vae.diagnose(result=result, data=data, num_draws=30, gap_points=3, gap_steps=3,
                                   sbc_draws=9)
    assert set(json.loads(diagnostics.tree.attrs["scaled_sites"])) >= {"x", "z1"}
    assert diagnostics.scales
    row = diagnostics.checks[diagnostics.checks["check"] == "Program's own scale"]
    assert list(row["status"]) == ["warning"]
    assert diagnostics.tree.attrs["modules_switched_to_eval"] >= 1
    page = ppl_vae.report(result=result, data=data, diagnostics=diagnostics,
                          out=tmp_path / "report.html").read_text()
    assert "program&#x27;s own scale" in page or "program's own scale" in page
    assert "eval mode (dropout off" in page


def test_a_scale_that_depends_on_the_chunk_is_named(trained):
    """1 / (batch x genes) on chunks of 10 and 40 rows: evaluate says that the scale moved
    with the chunk and how to get the whole data set's ELBO."""
    net, data, _ = trained
    with pytest.warns(ScaledProgramWarning, match="differs between chunks.*batch_size=N"):
        chunked = ppl_vae.evaluate(net.model, net.guide, data, num_samples=20, batch_size=15)
    assert isinstance(chunked.scales["x"], tuple)
