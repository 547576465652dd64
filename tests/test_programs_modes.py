"""User modules in evaluation mode for evaluate, the validation ELBO and the diagnostics."""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from programs import prodlda
from pyro.infer import Trace_ELBO
from torch import nn

import ppl_vae
from ppl_vae.programs.modes import eval_mode, program_modules


def test_evaluate_equals_pyros_eval_mode_elbo_on_dropout_and_batch_norm():
    """ProdLDA (dropout in the encoder, batch norm in the decoder): evaluate's ELBO is Pyro's
    Trace_ELBO with the modules in eval mode, to Monte Carlo error; every module is back in
    training mode afterwards."""
    pyro.set_rng_seed(0)
    lda = prodlda.ProdLDA()
    data = prodlda.data()
    ppl_vae.fit(lda.model, lda.guide, data, epochs=3, batch_size=10, progress=False)
    num = 200
    evaluation = ppl_vae.evaluate(lda.model, lda.guide, data, num_samples=num)
    assert all(m.training for m in lda.modules())
    n = data[0].shape[0]

    def pyro_draws():
        with pyro.validation_enabled(False):
            return np.array([-Trace_ELBO().loss(lda.model, lda.guide, *data) / n
                             for _ in range(num)])

    pyro.set_rng_seed(5)
    lda.eval()
    eval_draws = pyro_draws()
    lda.train()
    train_draws = pyro_draws()
    se = eval_draws.std(ddof=1) * math.sqrt(2 / num)
    assert abs(evaluation["elbo"] - eval_draws.mean()) < 4 * se
    # It can fail: the train-mode ELBO is another number.
    se_train = train_draws.std(ddof=1) / math.sqrt(num)
    assert abs(train_draws.mean() - eval_draws.mean()) > 4 * (se + se_train)


class _Recorder(nn.Module):
    """A layer that records the mode it ran in."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 2)
        self.modes = []

    def forward(self, x):
        self.modes.append(self.training)
        return self.linear(x)


def test_training_runs_train_mode_and_validation_eval_mode():
    net = _Recorder()

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

    def guide(x):
        pyro.module("net", net)  # reachable only through pyro.module's registration
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(net(x), 1.0).to_event(1))

    x = torch.randn(8, 2)
    ppl_vae.fit(model, guide, x, epochs=1, batch_size=8, jit=False, progress=False)
    assert net.modes and all(net.modes)  # the checks and every step: training mode
    net.modes.clear()
    ppl_vae.fit(model, guide, x, validation_data=x, epochs=1, batch_size=8, jit=False,
                progress=False)
    assert True in net.modes and False in net.modes  # steps train, the validation ELBO not
    assert net.modes[-1] is False and net.training


def test_modes_are_restored_when_evaluation_raises():
    encoder = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    encoder[1].eval()  # a user's own choice, kept

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", encoder)
        with pyro.plate("data", x.shape[0]):
            loc = encoder(x)
            if not encoder.training:
                raise RuntimeError("evaluation failed")
            pyro.sample("z", dist.Normal(loc, 1.0).to_event(1))

    with pytest.raises(ValueError, match="the guide failed .*evaluation failed"):
        ppl_vae.evaluate(model, guide, torch.randn(5, 2))
    assert encoder.training and encoder[0].training and not encoder[1].training


def test_program_modules_are_found_where_users_keep_them():
    lda = prodlda.ProdLDA()
    found = program_modules(lda.model, lda.guide)
    assert {id(m) for m in lda.modules()} <= {id(m) for m in found}  # bound methods
    closure_net = nn.BatchNorm1d(3)

    def program(x):
        return closure_net(x)

    assert closure_net in program_modules(program)
    with eval_mode(program) as switched:
        assert switched == 1 and not closure_net.training
    assert closure_net.training
