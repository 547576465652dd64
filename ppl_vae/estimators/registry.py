"""Estimator registry: one name per ELBO gradient estimator.

Each estimator lives in its own module (``ppl_vae/estimators/``) or is one of Pyro's own ELBOs.
``make_elbo`` is the single entry point: ``fit``, ``evaluate``, ``explain`` and the CLI all go
through it, so a name means the same estimator everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pyro.infer

from ppl_vae.estimators.iwae import ImportanceWeightedELBO
from ppl_vae.estimators.jit import TracedELBO, enum_loss, mc_loss, mean_field_loss
from ppl_vae.estimators.score import ScoreFunctionELBO
from ppl_vae.estimators.stl import StickingTheLandingELBO

__all__ = ["make_elbo", "ESTIMATORS", "EstimatorSpec"]


@dataclass(frozen=True)
class EstimatorSpec:
    """How to build one estimator.

    Parameters
    ----------
    build : callable
        ``build(num_particles=..., vectorize_particles=..., jit=..., **options)`` returning a
        :class:`pyro.infer.ELBO`.
    summary : str
        One line shown in ``ppl-vae estimators`` and the README.
    has_jit : bool
        Whether a ``jit=True`` variant exists.
    """

    build: Callable[..., pyro.infer.ELBO]
    summary: str
    has_jit: bool


def _pyro_elbo(eager: type, jitted: type | None) -> Callable[..., pyro.infer.ELBO]:
    def build(*, num_particles: int, vectorize_particles: bool, jit: bool, **options):
        cls = jitted if jit else eager
        return cls(
            num_particles=num_particles, vectorize_particles=vectorize_particles, **options
        )

    return build


def _traced_elbo(eager: type, loss: Callable) -> Callable[..., pyro.infer.ELBO]:
    # jit=True records the loss and its gradient once per input shape (ppl_vae.estimators.compile) instead
    # of Pyro's JitTrace*_ELBO: those use the deprecated torch.jit.trace, and Pyro 1.9.2's
    # JitTraceMeanField_ELBO re-traces every step and leaks memory.
    def build(*, num_particles: int, vectorize_particles: bool, jit: bool, **options):
        elbo = eager(num_particles=num_particles, vectorize_particles=vectorize_particles, **options)
        return TracedELBO(elbo, loss) if jit else elbo

    return build


ESTIMATORS: dict[str, EstimatorSpec] = {
    "mc": EstimatorSpec(
        _traced_elbo(pyro.infer.Trace_ELBO, mc_loss),
        "Monte Carlo estimate of the whole ELBO, log p(x, z) - log q(z | x) at reparameterized "
        "draws (Kingma & Welling 2014, estimator A; Pyro's Trace_ELBO)",
        True,
    ),
    "analytic": EstimatorSpec(
        _traced_elbo(pyro.infer.TraceMeanField_ELBO, mean_field_loss),
        "closed-form KL(q || p) where torch registers one, Monte Carlo reconstruction "
        "(Kingma & Welling 2014, estimator B; Pyro's TraceMeanField_ELBO)",
        True,
    ),
    "enum": EstimatorSpec(
        _traced_elbo(pyro.infer.TraceEnum_ELBO, enum_loss),
        "Monte Carlo ELBO with discrete latent sites summed out exactly by enumeration "
        "(Pyro's TraceEnum_ELBO; mark sites with infer={'enumerate': 'parallel'})",
        True,
    ),
    # No jit=True variant for these three: Pyro has none (JitTraceGraph_ELBO compiles only
    # loss_and_grads, not the differentiable_loss a torch training loop calls), and the traced
    # losses of ppl_vae.estimators.jit cover mc, analytic and enum only.
    "score": EstimatorSpec(
        _pyro_elbo(ScoreFunctionELBO, None),
        "score-function (REINFORCE) gradient for every guide site, Rao-Blackwellised per data "
        "point (Pyro's TraceGraph_ELBO; Ranganath et al. 2014): unbiased, high variance",
        False,
    ),
    "iwae": EstimatorSpec(
        _pyro_elbo(ImportanceWeightedELBO, None),
        "importance-weighted bound with K = num_particles, one log-mean-exp per data point "
        "(Burda et al. 2016); a tighter bound than the ELBO, not the ELBO's gradient",
        False,
    ),
    "stl": EstimatorSpec(
        _pyro_elbo(StickingTheLandingELBO, None),
        "Monte Carlo ELBO with the path-derivative gradient: the score term of log q dropped, "
        "zero variance at the exact posterior (sticking the landing; Roeder et al. 2017)",
        False,
    ),
}


def make_elbo(
    estimator: str,
    *,
    num_particles: int = 1,
    vectorize_particles: bool = False,
    jit: bool = False,
    **options,
) -> pyro.infer.ELBO:
    """Build the Pyro ELBO object for an estimator name.

    Parameters
    ----------
    estimator : str
        One of ``ESTIMATORS`` (``"mc"``, ``"analytic"``, ...).
    num_particles : int
        Number of Monte Carlo particles per step (for ``"iwae"``, the number of importance
        samples K).
    vectorize_particles : bool
        Draw the particles in one vectorized pass (an extra leftmost plate) instead of a
        Python loop.
    jit : bool
        Record the loss and its gradient once per input shape and replay the recorded graph
        (``ppl_vae.estimators.compile.TraceOnce``; needs a static model structure). Available for
        ``"mc"``, ``"analytic"`` and ``"enum"``.
    **options
        Passed to the ELBO constructor (for example ``max_plate_nesting``).

    Returns
    -------
    pyro.infer.ELBO
        Calling it as ``elbo(model, guide)`` gives a ``torch.nn.Module`` whose forward returns
        the differentiable negative ELBO.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(
            f"unknown estimator {estimator!r}; choose one of: {', '.join(sorted(ESTIMATORS))}"
        )
    if int(num_particles) < 1:
        raise ValueError(f"num_particles must be >= 1, got {num_particles}")
    spec = ESTIMATORS[estimator]
    if jit and not spec.has_jit:
        raise ValueError(f"estimator {estimator!r} has no jit=True variant; use jit=False")
    return spec.build(
        num_particles=int(num_particles),
        vectorize_particles=bool(vectorize_particles),
        jit=bool(jit),
        **options,
    )
