"""``fit(..., loggers=[...])`` (train/loggers.py) with Lightning's loggers. TensorBoard's writer
comes with the ``loggers`` extra (``pip install 'ppl-vae[loggers]'``); its test is skipped
without it."""

import math

import pandas as pd
import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import ppl_vae
from ppl_vae.train.loggers import batch_kl, fabric_loggers

loggers = fabric_loggers() or pytest.skip("needs Lightning Fabric (the loggers extra)",
                                          allow_module_level=True)


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Linear(3, 4)

    def forward(self, x):
        pyro.module("encoder", self)
        loc, raw = self.net(x).split(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1))


def model(x):
    w = pyro.param("w", torch.ones(2, 3, dtype=x.dtype, device=x.device))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z @ w, 1.0).to_event(1), obs=x)


def _fit(logger, dtype=torch.float32, epochs=3):
    x = torch.randn(40, 3, dtype=dtype)
    return ppl_vae.fit(model, Encoder(), x, validation_data=x[:10], epochs=epochs, batch_size=20,
                       lr_schedule="plateau", kl_warmup_epochs=2, progress=False,
                       loggers=[logger])


def test_csv_logger_gets_every_epoch_and_the_settings(tmp_path, dtype):
    pl_loggers = pytest.importorskip("lightning.pytorch.loggers")
    logger = pl_loggers.CSVLogger(tmp_path, name="runs")
    _fit(logger, dtype)
    metrics = pd.read_csv(logger.experiment.metrics_file_path)
    assert metrics["step"].tolist() == [1, 2, 3]
    for column in ("train_elbo", "val_elbo", "kl", "lr", "kl_weight", "seconds"):
        assert metrics[column].notna().all(), column
    assert metrics["kl_weight"].tolist()[-1] == 1.0 and metrics["kl_weight"].tolist()[0] < 1.0
    assert (metrics["kl"] > 0).all() and (metrics["lr"] == 1e-3).all()
    hparams = (tmp_path / "runs" / "version_0" / "hparams.yaml").read_text()
    assert "estimator: analytic" in hparams and "fingerprint" not in hparams


def test_fabric_csv_logger_logs_metrics_and_warns_about_the_settings(tmp_path):
    logger = loggers.CSVLogger(tmp_path, name="runs")
    with pytest.warns(UserWarning, match="does not log hyperparameters"):
        _fit(logger, epochs=2)
    assert pd.read_csv(logger.experiment.metrics_file_path)["step"].tolist() == [1, 2]


def test_tensorboard_logger(tmp_path):
    pytest.importorskip("tensorboard", reason="TensorBoard: pip install 'ppl-vae[loggers]'")
    logger = loggers.TensorBoardLogger(tmp_path)
    _fit(logger, epochs=2)
    assert list((tmp_path / "lightning_logs" / "version_0").glob("events.out.tfevents.*"))


def test_a_logger_that_is_not_a_lightning_logger_is_refused():
    with pytest.raises(TypeError, match=r"loggers\[0\] is a str"):
        ppl_vae.fit(model, Encoder(), torch.randn(8, 3), epochs=1, loggers=["csv"])


def test_batch_kl_estimates_the_closed_form_kl():
    """q(z | x) = Normal(mu, 1), p(z) = Normal(0, 1): KL = mu^2 / 2 per row; one draw per row
    gives mu^2 / 2 + mu * eps, standard error |mu| / sqrt(n)."""
    n, mu = 4000, 1.5

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.full_like(x[:, 0], mu), 1.0))

    def prior_model(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.zeros_like(x[:, 0]), 1.0))

    estimate = batch_kl(prior_model, guide, (torch.zeros(n, 1),))
    assert abs(estimate - mu**2 / 2) < 4 * mu / math.sqrt(n)
    wrong = batch_kl(prior_model, guide, (torch.zeros(n, 1),)) * 2  # a must-fail counterpart
    assert abs(wrong - mu**2 / 2) > 4 * mu / math.sqrt(n)
