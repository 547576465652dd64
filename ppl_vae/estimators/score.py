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
forcing the score function on reparameterizable sites, ``differentiable_loss``, and a
leave-one-out baseline across vectorized particles (below).
"""

from __future__ import annotations

from typing import final

import torch
from pyro.distributions import TorchDistribution
from pyro.infer import ELBO, TraceGraph_ELBO
from pyro.infer.util import MultiFrameTensor
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

    With ``vectorize_particles=True`` and S >= 2 particles, each particle's score term is centred
    by a leave-one-out baseline: the mean cost of the *other* S - 1 particles at the same data
    point (Mnih & Rezende 2016; Kool, van Hoof & Welling 2019). The other particles are
    independent of this one's draw, so the gradient stays unbiased, while the cost's common part
    (most of log p(x | z)) no longer multiplies the score. One particle has no baseline.

    Parameters
    ----------
    num_particles, max_plate_nesting, vectorize_particles, **options
        As for :class:`pyro.infer.ELBO`; ``options`` go to the inner ``TraceGraph_ELBO``
        (for example ``retain_graph``).
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
        if baseline not in ("leave_one_out", "none"):
            raise ValueError(f"baseline must be 'leave_one_out' or 'none', got {baseline!r}")
        super().__init__(
            num_particles=num_particles, max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
        )
        self._graph = TraceGraph_ELBO(
            num_particles=num_particles, max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles, **options,
        )
        self.leave_one_out = (
            baseline == "leave_one_out" and vectorize_particles and num_particles > 1
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
        if self.leave_one_out:
            # The baselines must sit in the guide sites' infer dicts before Pyro builds the
            # surrogate, so the (single, vectorized) particle's traces are made here.
            graph = self._graph
            (model_trace, guide_trace), = graph._get_traces(
                model, score_function_only(guide), args, kwargs
            )
            _set_leave_one_out_baselines(model_trace, guide_trace, self.num_particles)
            elbo, surrogate = graph._loss_and_surrogate_loss_particle(model_trace, guide_trace)
            # one vectorized trace holds all the particles: average them, as Pyro does
            elbo, surrogate = elbo / self.num_particles, surrogate / self.num_particles
        else:
            elbo, surrogate = self._graph._loss_and_surrogate_loss(
                model, score_function_only(guide), args, kwargs
            )
        value = -torch.as_tensor(elbo).detach()
        if not isinstance(surrogate, torch.Tensor) or not surrogate.requires_grad:
            return value
        return value + (surrogate - surrogate.detach())


_PARTICLE_PLATE = "num_particles_vectorized"  # the name Pyro's ELBO gives its particle plate


def _set_leave_one_out_baselines(model_trace, guide_trace, num_particles: int) -> None:
    """Give every guide sample site ``baseline_value`` = the mean, over the other particles, of
    the total cost log p(x, z) - log q(z) summed to the site's plates.

    The cost used here contains every term, not only the site's downstream ones; a baseline may
    be any function of the other particles, so the estimator stays unbiased either way.
    """
    costs = MultiFrameTensor()
    for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
        for site in trace.nodes.values():
            if site["type"] == "sample" and "log_prob" in site:
                costs.add((site["cond_indep_stack"], sign * site["log_prob"].detach()))
    for site in guide_trace.nodes.values():
        if site["type"] != "sample" or site["is_observed"] or "log_prob" not in site:
            continue
        frame = next((f for f in site["cond_indep_stack"] if f.name == _PARTICLE_PLATE), None)
        if frame is None:
            continue
        cost = costs.sum_to(site["cond_indep_stack"])
        if not isinstance(cost, torch.Tensor) or cost.dim() < -frame.dim:
            continue
        total = cost.sum(frame.dim, keepdim=True)
        baseline = (total - cost) / (num_particles - 1)
        site["infer"] = {**site["infer"], "baseline": {"baseline_value": baseline}}
