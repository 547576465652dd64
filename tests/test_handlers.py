import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

from ppl_vae.programs.handlers import DataPlateScale


def program(x, subsample_of=None):
    mu = pyro.sample("mu", dist.Normal(x.new_tensor(0.0), 1.0))
    if subsample_of is None:
        plate = pyro.plate("data", x.shape[0])
    else:
        plate = pyro.plate("data", subsample_of, subsample=torch.arange(x.shape[0]))
    with plate:
        pyro.sample("x", dist.Normal(mu, 1.0), obs=x)


@pytest.mark.parametrize("batch", [1, 7, 20])
def test_local_sites_scaled_global_sites_not(batch):
    x = torch.randn(batch)
    with DataPlateScale(20, "data"):
        trace = poutine.trace(program).get_trace(x)
    assert trace.nodes["mu"]["scale"] == 1.0
    assert trace.nodes["x"]["scale"] == pytest.approx(20 / batch)


def test_user_subsampled_plate_is_not_scaled_twice():
    x = torch.randn(5)
    with DataPlateScale(20, "data"):
        trace = poutine.trace(program).get_trace(x, subsample_of=20)
    # Pyro itself scales a subsampled plate by 20 / 5; the handler must add nothing.
    assert trace.nodes["x"]["scale"] == pytest.approx(4.0)


def test_minibatch_loss_is_unbiased_for_the_full_data_loss():
    # With the global draw held fixed, the average of the scaled mini-batch log-likelihoods over
    # a partition of the data equals the full-data log-likelihood exactly.
    x = torch.randn(12)
    mu = torch.tensor(0.3)
    conditioned = poutine.condition(program, data={"mu": mu})

    def log_joint(batch, n):
        with DataPlateScale(n, "data"):
            trace = poutine.trace(conditioned).get_trace(batch)
        return trace.log_prob_sum(lambda name, site: name == "x")

    full = log_joint(x, 12)
    parts = torch.stack([log_joint(x[i : i + 4], 12) for i in range(0, 12, 4)])
    assert torch.allclose(parts.mean(), full, rtol=1e-6)


def sizeless_program(x):
    mu = pyro.sample("mu", dist.Normal(x.new_tensor(0.0), 1.0))
    with pyro.plate("data"):  # the size is left to the tensors, as Pyro's SS-VAE example does
        z = pyro.sample("z", dist.Normal(mu.expand(x.shape), 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


@pytest.mark.parametrize("batch", [1, 4, 20])
def test_sizeless_plate_is_scaled_by_its_size_in_the_trace(batch):
    # Pyro records size -1 for a size-less plate: the scale must not become -N.
    x = torch.randn(batch)
    with DataPlateScale(20, "data"):
        trace = poutine.trace(sizeless_program).get_trace(x)
    assert trace.nodes["mu"]["scale"] == 1.0
    assert trace.nodes["z"]["scale"] == pytest.approx(20 / batch)
    assert trace.nodes["x"]["scale"] == pytest.approx(20 / batch)


def test_plate_that_subsamples_the_batch_gets_n_over_batch_on_top_of_pyros_scale():
    def model(x):
        with pyro.plate("data", x.shape[0], subsample_size=2) as idx:
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=x[idx])

    with DataPlateScale(20, "data"):
        trace = poutine.trace(model).get_trace(torch.randn(5))
    # Pyro: 5 / 2 for the batch from its 2 rows; ppl-vae: 20 / 5 for the data set from the batch.
    assert trace.nodes["x"]["scale"] == pytest.approx(20 / 2)
