"""Score-function (REINFORCE) ELBO gradients with Rao-Blackwellisation.

Every guide sample site is treated as non-reparameterizable, so the gradient with respect to
the guide's parameters comes only from the score-function identity

    grad_phi E_q[f(z)] = E_q[f(z) grad_phi log q_phi(z)]

(Williams 1992; Ranganath, Gerrish & Blei 2014, "Black box variational inference"), with the
cost ``f`` of each site cut down to the terms downstream of it in the dependency graph, and to
its own data point inside a plate (Schulman et al. 2015, "Gradient estimation using stochastic
computation graphs"). The estimator is unbiased for any guide, reparameterizable or not, and is
the baseline the reparameterization trick improves on.

The graph bookkeeping is Pyro's ``TraceGraph_ELBO`` (:mod:`ppl_vae.estimators.tracegraph`, which
applies the score function only where a site has no ``rsample``); this module forces the score
function on every site, and adds a leave-one-out baseline across vectorized particles (below).
"""

from __future__ import annotations

from typing import final

import torch
from pyro.distributions import TorchDistribution
from pyro.poutine.messenger import Messenger
from torch.distributions import constraints

from ppl_vae.compat import Subsample
from ppl_vae.estimators._traces import DifferentiableELBO
from ppl_vae.estimators.tracegraph import check_baseline, graph_loss, graph_trace

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
        if msg["is_observed"] or isinstance(msg["fn"], (NonReparameterized, Subsample)):
            return
        msg["fn"] = NonReparameterized(msg["fn"])


def score_function_only(program):
    """``program`` with every latent sample site drawn without a gradient path (a callable)."""
    return _ScoreFunctionOnly()(program)


@final
class ScoreFunctionELBO(DifferentiableELBO):
    """Negative ELBO whose gradient is the Rao-Blackwellised score-function estimator.

    Behaves like any Pyro ELBO: ``loss``, ``loss_and_grads``, ``differentiable_loss``, and
    ``elbo(model, guide)`` gives a ``torch.nn.Module``. With ``num_particles`` = S the
    estimate averages S independent draws (a Python loop, or one vectorized pass with
    ``vectorize_particles=True``).

    ``differentiable_loss`` returns ``loss + (surrogate - surrogate.detach())``: its value is the
    Monte Carlo estimate of -ELBO and its gradient is the gradient of Pyro's ``TraceGraph_ELBO``
    surrogate on the guide whose sites all lost their ``rsample``. ``loss_and_grads``
    backpropagates the same tensor, so both give the same estimator.

    With ``vectorize_particles=True`` and S >= 2 particles, each particle's score term is centred
    by a leave-one-out baseline: the mean cost of the *other* S - 1 particles at the same data
    point (Mnih & Rezende 2016; Kool, van Hoof & Welling 2019). The other particles are
    independent of this one's draw, so the gradient stays unbiased, while the cost's common part
    (most of log p(x | z)) no longer multiplies the score. One particle has no baseline.

    Parameters
    ----------
    num_particles, max_plate_nesting, vectorize_particles, **options
        As for :class:`pyro.infer.ELBO` (for example ``retain_graph``).
    baseline : {"leave_one_out", "none"}
        The baseline used with vectorized particles.
    """

    def __init__(
        self,
        num_particles: int = 1,
        max_plate_nesting: float = float("inf"),
        vectorize_particles: bool = False,
        baseline: str = "leave_one_out",
        **options,
    ):
        super().__init__(
            num_particles=num_particles, max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles, **options,
        )
        self.leave_one_out = check_baseline(baseline, vectorize_particles, num_particles)

    def _get_trace(self, model, guide, args, kwargs):
        return graph_trace(self.max_plate_nesting, model, score_function_only(guide), args, kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """0-dim tensor: value = -ELBO estimate, gradient = score-function estimate."""
        return graph_loss(self, model, guide, args, kwargs, self.leave_one_out)

