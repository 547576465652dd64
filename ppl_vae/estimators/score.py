"""Score-function (REINFORCE) ELBO gradients with Rao-Blackwellisation.

Every guide sample site is treated as non-reparameterizable, so the gradient with respect to
the guide's parameters comes only from the score-function identity

    grad_phi E_q[f(z)] = E_q[f(z) grad_phi log q_phi(z)]

(Williams 1992; Ranganath, Gerrish & Blei 2014, "Black box variational inference"), with the
cost ``f`` of each site cut down to the terms downstream of it in the dependency graph, and to
its own data point inside a plate (Schulman et al. 2015, "Gradient estimation using stochastic
computation graphs"). The estimator is unbiased for any guide, reparameterizable or not, and is
the baseline the reparameterization trick improves on.

The graph bookkeeping is Pyro's ``TraceGraph_ELBO``; this module adds the two things it lacks:
forcing the score function on reparameterizable sites, and ``differentiable_loss``.
"""

from __future__ import annotations

from typing import final

import torch
from pyro.distributions import TorchDistribution
from pyro.infer import ELBO, TraceGraph_ELBO
from pyro.poutine.messenger import Messenger
from pyro.poutine.subsample_messenger import _Subsample
from torch.distributions import constraints

__all__ = ["ScoreFunctionELBO", "NonReparameterized", "score_function_only"]


@final
class NonReparameterized(TorchDistribution):
    """A distribution that hides its base's ``rsample``: draws carry no gradient.

    Pyro decides between the pathwise and the score-function gradient from the class attribute
    ``has_rsample``. ``dist.has_rsample_(False)`` sets it on the instance, which an
    ``Independent`` loses when a plate expands it (Pyro 1.9.2); a wrapper whose class says
    ``has_rsample = False`` survives every ``expand``.

    Parameters
    ----------
    base_dist : TorchDistribution
        Any distribution; batch and event shapes are its own.
    """

    has_rsample = False
    arg_constraints: dict = {}

    def __init__(self, base_dist: TorchDistribution):
        self.base_dist = base_dist
        super().__init__(base_dist.batch_shape, base_dist.event_shape, validate_args=False)

    @constraints.dependent_property
    def support(self):
        return self.base_dist.support

    @property
    def has_enumerate_support(self) -> bool:
        return False

    @property
    def mean(self):
        return self.base_dist.mean

    @property
    def variance(self):
        return self.base_dist.variance

    def expand(self, batch_shape, _instance=None):
        return NonReparameterized(self.base_dist.expand(batch_shape))

    def sample(self, sample_shape=()):
        with torch.no_grad():
            return self.base_dist.sample(sample_shape)

    def log_prob(self, value):
        return self.base_dist.log_prob(value)

    def entropy(self):
        return self.base_dist.entropy()


@final
class _ScoreFunctionOnly(Messenger):
    """Wrap every latent sample site's distribution in ``NonReparameterized`` (plates' own
    subsample sites excepted)."""

    def _pyro_sample(self, msg):
        if msg["is_observed"] or isinstance(msg["fn"], (NonReparameterized, _Subsample)):
            return
        msg["fn"] = NonReparameterized(msg["fn"])


def score_function_only(program):
    """``program`` with every latent sample site drawn without a gradient path (a callable)."""
    return _ScoreFunctionOnly()(program)


@final
class ScoreFunctionELBO(ELBO):
    """Negative ELBO whose gradient is the Rao-Blackwellised score-function estimator.

    Behaves like any Pyro ELBO: ``loss``, ``loss_and_grads``, ``differentiable_loss``, and
    ``elbo(model, guide)`` gives a ``torch.nn.Module``. With ``num_particles`` = S the
    estimate averages S independent draws (a Python loop, or one vectorized pass with
    ``vectorize_particles=True``).

    ``differentiable_loss`` returns ``loss + (surrogate - surrogate.detach())``: its value is the
    Monte Carlo estimate of -ELBO and its gradient is the gradient of Pyro's surrogate loss,
    i.e. exactly what ``TraceGraph_ELBO.loss_and_grads`` would accumulate.

    Parameters
    ----------
    num_particles, max_plate_nesting, vectorize_particles, **options
        As for :class:`pyro.infer.ELBO`; ``options`` go to the inner ``TraceGraph_ELBO``
        (for example ``retain_graph``).
    """

    def __init__(
        self,
        num_particles: int = 1,
        max_plate_nesting: float = float("inf"),
        vectorize_particles: bool = False,
        **options,
    ):
        super().__init__(
            num_particles=num_particles, max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
        )
        self._graph = TraceGraph_ELBO(
            num_particles=num_particles, max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles, **options,
        )

    def _get_trace(self, model, guide, args, kwargs):
        return self._graph._get_trace(model, score_function_only(guide), args, kwargs)

    def loss(self, model, guide, *args, **kwargs) -> float:
        """Monte Carlo estimate of -ELBO (a float)."""
        return self._graph.loss(model, score_function_only(guide), *args, **kwargs)

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """-ELBO estimate; accumulates the score-function gradient into ``.grad``."""
        return self._graph.loss_and_grads(model, score_function_only(guide), *args, **kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """0-dim tensor: value = -ELBO estimate, gradient = score-function estimate."""
        elbo, surrogate = self._graph._loss_and_surrogate_loss(
            model, score_function_only(guide), args, kwargs
        )
        value = -torch.as_tensor(elbo).detach()
        if not isinstance(surrogate, torch.Tensor) or not surrogate.requires_grad:
            return value
        return value + (surrogate - surrogate.detach())
