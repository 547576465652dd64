"""``ppl_vae.latents`` (evaluation/latents.py): per-point guide means and draws of any guide."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from _user_programs import N_POINTS, subsampled_data, subsampled_model
from pyro.infer.autoguide import AutoNormal
from torch import nn

import ppl_vae


class Encoder(nn.Module):
    """q(z | x) = Normal(x W^T + b, 0.5) with fixed weights (closed-form means), dropout on."""

    def __init__(self, dtype):
        super().__init__()
        self.net = nn.Linear(3, 2).to(dtype)
        self.drop = nn.Dropout(0.5)
        with torch.no_grad():
            self.net.weight.copy_(torch.tensor([[1.0, 0.0, 2.0], [0.0, -1.0, 0.5]]))
            self.net.bias.copy_(torch.tensor([0.1, -0.2]))

    def forward(self, x):
        pyro.module("encoder", self)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(self.net(self.drop(x)), 0.5).to_event(1))


def model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True), 1.0).to_event(1), obs=x)


def test_means_are_the_encoder_output_in_eval_mode(dtype):
    x = torch.randn(300, 3, dtype=dtype)
    guide = Encoder(dtype)
    out = ppl_vae.latents(model, guide, x, batch_size=64)
    assert set(out) == {"z"} and out["z"].shape == (300, 2) and out["z"].dtype == dtype
    expected = x @ guide.net.weight.T + guide.net.bias
    assert torch.allclose(out["z"], expected.detach())  # dropout off: eval mode
    assert guide.training  # and the training flag restored


def test_draws_have_the_guide_mean_and_scale(dtype):
    x = torch.randn(50, 3, dtype=dtype)
    guide = Encoder(dtype)
    k = 400
    out = ppl_vae.latents(model, guide, x, num_draws=k)
    assert out["z"].shape == (k, 50, 2)
    expected = (x @ guide.net.weight.T + guide.net.bias).detach()
    # Mean of K draws of Normal(mu, 0.5): standard error 0.5 / sqrt(K) per coordinate.
    assert (out["z"].mean(0) - expected).abs().max() < 5 * 0.5 / math.sqrt(k)
    assert abs(float(out["z"].std(0).mean()) - 0.5) < 0.02
    wrong = expected + 0.2  # a must-fail counterpart: an offset of 0.2 is seen
    assert (out["z"].mean(0) - wrong).abs().max() > 5 * 0.5 / math.sqrt(k)


def _local_model(x):
    loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(loc, 1.0))
        pyro.sample("x", dist.Normal(z, 0.1), obs=x)


def test_autonormal_of_a_self_subsampling_model_gives_every_point_its_loc():
    """Pyro's SVI tutorial model picks its own mini-batch of 8 of 30 points: every point gets
    its own ``locs.z`` entry, in order."""
    x = subsampled_data()
    guide = AutoNormal(subsampled_model)
    guide(x)
    with torch.no_grad():
        guide.locs.z.copy_(torch.arange(float(N_POINTS)))
    out = ppl_vae.latents(subsampled_model, guide, (x,))
    assert torch.equal(out["z"], torch.arange(float(N_POINTS)))


def test_means_that_depend_on_a_global_draw_average_draws_and_say_so():
    """q(loc) = Normal(2, 1), q(z_i | loc) = Normal(loc + i, 0.1): E[z_i] = 2 + i. The 100
    draws share their global draws across points: standard error about 1 / sqrt(100)."""
    x = torch.randn(20)
    shift = torch.arange(20.0)

    def guide(x):
        loc = pyro.sample("loc", dist.Normal(torch.tensor(2.0), 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc + shift, 0.1))

    with pytest.warns(UserWarning, match="depends on another draw"):
        out = ppl_vae.latents(_local_model, guide, x, sites=["z"])
    assert out["z"].shape == (20,)
    assert (out["z"] - (2.0 + shift)).abs().max() < 5 * 0.1 + 0.05
    assert (out["z"] - shift).abs().min() > 5 * 0.1 + 0.05  # must-fail: the plug-in at loc=0


def test_unknown_sites_are_refused_naming_the_local_ones():
    x = torch.randn(10, 3)
    with pytest.raises(ValueError, match=r"\['loc'\] are not local latent sites.*\['z'\]"):
        ppl_vae.latents(model, Encoder(torch.float32), x, sites=["loc"])
    with pytest.raises(ValueError, match="num_draws"):
        ppl_vae.latents(model, Encoder(torch.float32), x, num_draws=-1)
