"""Amortized guide refined by inverse autoregressive flows (Kingma, Salimans, Jozefowicz, Chen,
Sutskever & Welling 2016; normalizing flows for VI: Rezende & Mohamed 2015)."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.transforms import ConditionalAffineAutoregressive
from pyro.nn import ConditionalAutoRegressiveNN, PyroModule
from torch import nn

from ppl_vae.programs.nn import check_width, hidden_sizes, keeps_arguments, mlp, unique_name


class FlowEncoder(PyroModule):
    """Flow encoder: a diagonal Normal q(z | x) refined by conditional IAF steps (Kingma 2016).

    z_0 ~ N(mu(x), diag sigma(x)^2), then ``num_flows`` inverse autoregressive
    steps z_t = m_t(z_<t, h) + s_t(z_<t, h) * z_{t-1}, each conditioned on a context h(x) from the
    encoder (IAF with context, Kingma et al. 2016, section 4), alternating the variable order.

    The density stays exact (log q = log N(z_0) - sum log |s_t|), so every ELBO estimator and
    the importance-weighted bound apply. Site ``"z"`` ``(batch, latent_dim)`` in plate
    ``"data"``.

    Parameters
    ----------
    obs_dim, latent_dim : int
    hidden : int or sequence of int
        Encoder hidden widths.
    num_flows : int
        Number of autoregressive steps.
    flow_hidden : int
        Hidden width of each step's autoregressive network.
    context_dim : int
        Dimension of the context h(x).
    min_scale : float
        Floor added to sigma(x).
    """

    @keeps_arguments
    def __init__(self, obs_dim: int, latent_dim: int = 20, hidden=400, num_flows: int = 2,
                 flow_hidden: int = 64, context_dim: int = 16, min_scale: float = 1e-4):
        if int(num_flows) < 1:
            raise ValueError(f"num_flows must be >= 1, got {num_flows}")
        if int(latent_dim) < 2:
            raise ValueError("FlowEncoder needs latent_dim >= 2 (an autoregressive flow on one "
                             f"dimension is a plain affine map); got {latent_dim}")
        super().__init__(name=unique_name("flow_encoder"))
        self.obs_dim, self.latent_dim, self.min_scale = int(obs_dim), int(latent_dim), min_scale
        self.context_dim = int(context_dim)
        out = 2 * self.latent_dim + self.context_dim
        self.net = mlp((self.obs_dim, *hidden_sizes(hidden), out))
        flows = []
        for i in range(int(num_flows)):
            # Alternate the variable order (a fixed one, not Pyro's random default) so that each
            # dimension can depend on every other one after two steps.
            order = torch.arange(self.latent_dim)
            arn = ConditionalAutoRegressiveNN(
                self.latent_dim, self.context_dim, [int(flow_hidden)] * 2,
                permutation=order.flip(0) if i % 2 else order)
            flows.append(ConditionalAffineAutoregressive(arn))
        self.flows = nn.ModuleList(flows)

    @classmethod
    def from_dataset(cls, dataset, **options):
        return cls(dataset.obs_dim, **options)

    def posterior(self, x: torch.Tensor) -> dist.TransformedDistribution:
        """q(z | x) as a distribution, batch shape ``(batch,)``, event shape ``(latent_dim,)``."""
        d = self.latent_dim
        loc, log_scale, context = self.net(x).split([d, d, self.context_dim], dim=-1)
        base = dist.Normal(loc, log_scale.exp() + self.min_scale).to_event(1)
        return dist.TransformedDistribution(base, [f.condition(context) for f in self.flows])

    def forward(self, x: torch.Tensor):
        check_width(x, self.obs_dim, "FlowEncoder")
        q = self.posterior(x)
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("z", q)


__all__ = ["FlowEncoder"]
