"""Estimator registry: one name per ELBO gradient estimator, and what each one can do.

Each estimator lives in its own module (``ppl_vae/estimators/``) or is one of Pyro's own ELBOs.
Its :class:`EstimatorSpec` holds its capabilities as data: how to build it, the objective it
estimates, the term it uses for each latent site (what :func:`ppl_vae.explain` shows), its
pre-flight checks, and whether a ``jit=True`` variant exists. Code outside this package asks the
spec; it never compares an estimator's name. ``make_elbo`` is the single entry point: ``fit``,
``evaluate``, ``explain`` and the CLI all go through it, so a name means the same estimator
everywhere; :func:`register_estimator` adds one.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import pyro
import pyro.infer
import torch
from pyro import poutine
from pyro.poutine.util import prune_subsample_sites

from ppl_vae.estimators._traces import refuse_guide_factors, refuse_non_reparameterized
from ppl_vae.estimators.dreg import DoublyReparameterizedELBO
from ppl_vae.estimators.iwae import ImportanceWeightedELBO
from ppl_vae.estimators.kl import as_batch, monte_carlo_kl_sites
from ppl_vae.estimators.mean_field import MeanFieldELBO
from ppl_vae.estimators.score import ScoreFunctionELBO
from ppl_vae.estimators.stl import StickingTheLandingELBO
from ppl_vae.estimators.tracegraph import TraceGraphELBO
from ppl_vae.estimators.vimco import VIMCO

__all__ = [
    "ESTIMATORS", "EstimatorSpec", "SiteFacts", "get_spec", "make_elbo",
    "preflight_warnings",
    "register_estimator", "unregister_estimator", "check_jit", "JIT_CHOICES", "set_recorder",
]

#: What ``make_elbo``/``fit`` accept as ``jit``.
JIT_CHOICES = (False, True, "auto", "compile")


def check_jit(jit) -> bool | str:
    """``jit`` as one of :data:`JIT_CHOICES` (the CLI's ``"true"``/``"false"`` as booleans);
    ``TypeError`` for another kind of value, ``ValueError`` for another string."""
    if isinstance(jit, bool):
        return jit
    message = f"jit must be one of False, True, 'auto', 'compile'; got {jit!r}"
    if not isinstance(jit, str):
        raise TypeError(message)
    if jit.lower() not in ("auto", "compile", "true", "false"):
        raise ValueError(message)
    return {"true": True, "false": False}.get(jit.lower(), jit.lower())


# The recording wing (ppl_vae.recording) wraps an eager ELBO into a recorded one; it registers
# itself here when training imports it, so that this registry never imports it.
_RECORDER: list[Callable[..., pyro.infer.ELBO]] = []


def set_recorder(record: Callable[..., pyro.infer.ELBO]) -> None:
    """Install ``record(elbo, loss_name, jit) -> ELBO``, which :func:`make_elbo` calls for
    ``jit != False`` on estimators whose spec names a ``recorded_loss``."""
    _RECORDER[:] = [record]


CLOSED_FORM, MONTE_CARLO, SCORE = "closed-form KL", "Monte Carlo KL", "score function"
NO_RSAMPLE = "not supported: no rsample"


@dataclass(frozen=True)
class SiteFacts:
    """What an estimator's plan needs to know about one latent site.

    Attributes
    ----------
    reparameterized : bool
        The guide's distribution has ``rsample``.
    closed_form_kl : bool
        torch's KL registry has KL(guide || prior) for the site's pair of distributions.
    """

    reparameterized: bool
    closed_form_kl: bool


def elbo_objective(num_particles: int) -> str:
    """The objective of an ELBO estimator, whatever the number of particles."""
    return "ELBO"


def monte_carlo_plan(site: SiteFacts) -> tuple[str, str]:
    """Trace_ELBO's plan: reparameterized draws where possible, the score function elsewhere."""
    return (MONTE_CARLO, "reparameterized") if site.reparameterized else (SCORE, "score function")


def no_preflight(model, guide, batch) -> list[str]:
    return []


@dataclass(frozen=True)
class EstimatorSpec:
    """One estimator and its capabilities.

    Parameters
    ----------
    build : callable
        ``build(num_particles=..., vectorize_particles=..., jit=..., **options)`` returning a
        :class:`pyro.infer.ELBO`.
    summary : str
        One line shown in ``ppl-vae estimators``, the report and the README.
    has_jit : bool
        Whether a ``jit=True`` variant exists.
    recorded_loss : str, optional
        The traceable loss of the recording wing (``"mc"``, ``"mean_field"``, ``"enum"``,
        :data:`ppl_vae.recording.jit.LOSSES`) that records this estimator's step for
        ``jit != False``; ``None``: ``build`` handles ``jit`` itself.
    objective : callable
        ``objective(num_particles) -> str``: what the estimator's loss estimates (``"ELBO"``,
        ``"IWAE (K=5)"``). Estimators with the same objective are compared with each other by
        :func:`ppl_vae.gradient_variance`.
    plan : callable
        ``plan(SiteFacts) -> (term, gradient)``: the term used for one latent site and how its
        gradient is formed (the ``term`` / ``gradient`` columns of :func:`ppl_vae.explain`).
        Enumerated sites are summed out exactly whatever the plan says.
    preflight : callable
        ``preflight(model, guide, batch) -> list of str``: warnings to show before training
        (raise ``ValueError`` for programs the estimator cannot handle).
    variance_reference : bool
        The estimator others with its objective are compared with (the lowest-variance standard).
    enumerates : bool
        Sites marked ``infer={"enumerate": "parallel"}`` (in the guide, or in the model for a
        site the guide lacks) are summed out exactly (``TraceEnum_ELBO``); other estimators
        sample them.
    needs_rsample : bool
        Every latent guide site must be reparameterizable. :func:`preflight_warnings` then
        refuses a guide site without ``rsample`` before training, with a ``ValueError`` naming
        the site and the registered estimators that accept it.
    guide_factors : {"refused", "reparameterized", "any"}
        What the estimator does with a ``pyro.factor`` in the guide (scANVI's classifier term).
        ``"any"``: counted as Pyro's ``Trace_ELBO`` counts it, a log q term (its value in the
        loss; its gradient pathwise with ``has_rsample=True``, by the score function with
        ``has_rsample=False``). ``"reparameterized"``: only ``has_rsample=True`` factors, as
        ``TraceMeanField_ELBO`` subtracts their entropy term (it would silently drop the others,
        which have none). ``"refused"``: the estimator's math has no place for them;
        :func:`preflight_warnings` refuses such a guide before training.
    """

    build: Callable[..., pyro.infer.ELBO]
    summary: str
    has_jit: bool = False
    objective: Callable[[int], str] = elbo_objective
    plan: Callable[[SiteFacts], tuple[str, str]] = monte_carlo_plan
    preflight: Callable[..., list[str]] = no_preflight
    variance_reference: bool = False
    needs_rsample: bool = False
    enumerates: bool = False
    guide_factors: str = "refused"
    recorded_loss: str | None = None


def _pyro_elbo(eager: type, jitted: type | None) -> Callable[..., pyro.infer.ELBO]:
    def build(*, num_particles: int, vectorize_particles: bool, jit, **options):
        cls = jitted if jit not in (False, "auto") else eager
        return cls(
            num_particles=num_particles, vectorize_particles=vectorize_particles, **options
        )

    return build


def _traced_elbo(eager: type) -> Callable[..., pyro.infer.ELBO]:
    # jit != False: the recording wing wraps this eager ELBO (its spec's recorded_loss) instead
    # of Pyro's JitTrace*_ELBO: those use the deprecated torch.jit.trace, and Pyro 1.9.2's
    # JitTraceMeanField_ELBO re-traces every step and leaks memory.
    def build(*, num_particles: int, vectorize_particles: bool, jit, **options):
        return eager(num_particles=num_particles, vectorize_particles=vectorize_particles, **options)

    return build


def _analytic_plan(site: SiteFacts) -> tuple[str, str]:
    term = CLOSED_FORM if site.closed_form_kl else MONTE_CARLO
    return term, "reparameterized" if site.reparameterized else NO_RSAMPLE


def _analytic_preflight(model, guide, batch) -> list[str]:
    fallback = monte_carlo_kl_sites(model, guide, batch)
    if not fallback:
        return []
    return [f"estimator 'analytic' (TraceMeanField_ELBO) has no closed-form KL for latent "
            f"site(s) {fallback} and falls back to a Monte Carlo KL there; see "
            "ppl_vae.explain(model, guide, batch)"]


def _score_plan(site: SiteFacts) -> tuple[str, str]:
    return SCORE, "score function (Rao-Blackwellised)"


def _tracegraph_plan(site: SiteFacts) -> tuple[str, str]:
    if site.reparameterized:
        return MONTE_CARLO, "reparameterized"
    return SCORE, "score function (Rao-Blackwellised)"


def _stl_plan(site: SiteFacts) -> tuple[str, str]:
    if site.reparameterized:
        return MONTE_CARLO, "path derivative (score term dropped)"
    return SCORE, ("score function (Rao-Blackwellised; leave-one-out baseline with "
                   "vectorized K >= 2)")


_VIMCO_GRADIENT = "score function, VIMCO leave-one-out baseline over K"


def _iwae_plan(site: SiteFacts) -> tuple[str, str]:
    if site.reparameterized:
        return MONTE_CARLO, "reparameterized, through log-mean-exp over K"
    return SCORE, f"{_VIMCO_GRADIENT} (none with K = 1)"


def _vimco_plan(site: SiteFacts) -> tuple[str, str]:
    return SCORE, f"{_VIMCO_GRADIENT} (none with K = 1)"


def _dreg_plan(site: SiteFacts) -> tuple[str, str]:
    gradient = "doubly reparameterized: squared normalized weights on the path derivative"
    return MONTE_CARLO, gradient if site.reparameterized else NO_RSAMPLE


def _iwae_objective(num_particles: int) -> str:
    # With K = 1 the IWAE bound is the ELBO itself.
    return f"IWAE (K={num_particles})" if num_particles > 1 else "ELBO"


def _accepting_any_guide() -> list[str]:
    """The registered estimators that accept guide sites without ``rsample``."""
    return sorted(n for n, spec in _REGISTRY.items() if not spec.needs_rsample)


_REGISTRY: dict[str, EstimatorSpec] = {
    "mc": EstimatorSpec(
        _traced_elbo(pyro.infer.Trace_ELBO),
        "Monte Carlo estimate of the whole ELBO, log p(x, z) - log q(z | x) at reparameterized "
        "draws (Kingma & Welling 2014, estimator A; Pyro's Trace_ELBO)",
        has_jit=True, guide_factors="any", recorded_loss="mc",
    ),
    "analytic": EstimatorSpec(
        _traced_elbo(partial(MeanFieldELBO, accepting=_accepting_any_guide)),
        "closed-form KL(q || p) where torch registers one, Monte Carlo reconstruction "
        "(Kingma & Welling 2014, estimator B; Pyro's TraceMeanField_ELBO)",
        has_jit=True, plan=_analytic_plan, preflight=_analytic_preflight,
        variance_reference=True, needs_rsample=True, guide_factors="reparameterized",
        recorded_loss="mean_field",
    ),
    "enum": EstimatorSpec(
        _traced_elbo(pyro.infer.TraceEnum_ELBO),
        "Monte Carlo ELBO with discrete latent sites summed out exactly by enumeration "
        "(Pyro's TraceEnum_ELBO; mark sites with infer={'enumerate': 'parallel'})",
        has_jit=True, enumerates=True, recorded_loss="enum",
    ),
    # No jit=True variant for these: Pyro has none (JitTraceGraph_ELBO compiles only
    # loss_and_grads, not the differentiable_loss a torch training loop calls), and the traced
    # losses of ppl_vae.recording.jit cover mc, analytic and enum only.
    "score": EstimatorSpec(
        _pyro_elbo(ScoreFunctionELBO, None),
        "score-function (REINFORCE) gradient at every guide site, reparameterizable or not, "
        "Rao-Blackwellised per data point (Ranganath et al. 2014): unbiased, high variance; "
        "leave-one-out baseline with vectorized particles",
        plan=_score_plan,
    ),
    "tracegraph": EstimatorSpec(
        _pyro_elbo(TraceGraphELBO, None),
        "Pyro's TraceGraph_ELBO with a differentiable_loss: reparameterized where a guide site "
        "has rsample, Rao-Blackwellised score function only where it does not (Schulman et al. "
        "2015)",
        plan=_tracegraph_plan,
    ),
    "iwae": EstimatorSpec(
        _pyro_elbo(ImportanceWeightedELBO, None),
        "importance-weighted bound with K = num_particles, one log-mean-exp per data point "
        "(Burda et al. 2016); pathwise gradient where a guide site has rsample, VIMCO score "
        "terms where it does not; a tighter bound than the ELBO, not the ELBO's gradient",
        objective=_iwae_objective, plan=_iwae_plan,
    ),
    "vimco": EstimatorSpec(
        _pyro_elbo(VIMCO, None),
        "the IWAE bound with the score function at every guide site and a leave-one-out "
        "multi-sample baseline (Mnih & Rezende 2016); K = num_particles >= 2 (a warning "
        "without a baseline at K = 1)",
        objective=_iwae_objective, plan=_vimco_plan,
    ),
    "dreg": EstimatorSpec(
        _pyro_elbo(partial(DoublyReparameterizedELBO, accepting=_accepting_any_guide), None),
        "the IWAE bound's doubly reparameterized gradient (Tucker et al. 2019): squared "
        "normalized weights on the encoder's path derivative, the IWAE gradient for the "
        "decoder; the encoder's SNR does not fall with K",
        objective=_iwae_objective, plan=_dreg_plan, needs_rsample=True,
    ),
    "stl": EstimatorSpec(
        _pyro_elbo(StickingTheLandingELBO, None),
        "Monte Carlo ELBO with the path-derivative gradient: the score term of log q dropped, "
        "zero variance at the exact posterior (sticking the landing; Roeder et al. 2017); "
        "Rao-Blackwellised score function at sites without rsample",
        plan=_stl_plan,
    ),
}

#: Every registered estimator by name (read-only: add one with :func:`register_estimator`).
ESTIMATORS = types.MappingProxyType(_REGISTRY)


def register_estimator(name: str, spec: EstimatorSpec, *, replace: bool = False) -> None:
    """Add an estimator under ``name``: ``fit``, ``make_elbo``, ``explain``,
    ``gradient_variance`` and the CLI's ``--estimator`` accept it from then on.

    Raises
    ------
    ValueError
        If ``name`` is taken (unless ``replace``) or not a non-empty string.
    TypeError
        If ``spec`` is not an :class:`EstimatorSpec`.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"an estimator name must be a non-empty string, got {name!r}")
    if not isinstance(spec, EstimatorSpec):
        raise TypeError(f"spec must be an EstimatorSpec, got {type(spec).__name__}")
    if name in _REGISTRY and not replace:
        raise ValueError(f"estimator {name!r} is already registered; pass replace=True to "
                         "replace it")
    _REGISTRY[name] = spec


def unregister_estimator(name: str) -> EstimatorSpec:
    """Remove an estimator added by :func:`register_estimator`; returns its spec."""
    get_spec(name)
    return _REGISTRY.pop(name)


def get_spec(estimator: str) -> EstimatorSpec:
    """The spec of a registered estimator (``ValueError`` naming the choices otherwise)."""
    if estimator not in _REGISTRY:
        raise ValueError(
            f"unknown estimator {estimator!r}; choose one of: {', '.join(sorted(_REGISTRY))}"
        )
    return _REGISTRY[estimator]


def _guide_trace(guide, batch):
    # The guide alone: the checks must not run the model (fit counts on one pre-flight pass).
    with torch.no_grad(), pyro.validation_enabled(False):
        return prune_subsample_sites(poutine.trace(guide).get_trace(*as_batch(batch)))


def _accepting_factors(has_rsample: bool) -> list[str]:
    allowed = ("any", "reparameterized") if has_rsample else ("any",)
    return sorted(n for n, spec in _REGISTRY.items() if spec.guide_factors in allowed)


def preflight_warnings(estimator: str, model, guide, batch, *,
                       spec: EstimatorSpec | None = None) -> list[str]:
    """The estimator's pre-flight warnings for these programs on ``batch`` (a few rows).

    ``spec``: check against this spec, ``estimator`` naming it in the messages (a Pyro ELBO
    used as given, :mod:`~ppl_vae.estimators.pyro_elbos`); default: the registered one.

    Raises
    ------
    ValueError
        If the estimator cannot handle the programs, for example a guide site without
        ``rsample`` for an estimator whose spec says ``needs_rsample``, or a ``pyro.factor``
        in the guide its spec's ``guide_factors`` does not take.
    """
    spec = get_spec(estimator) if spec is None else spec
    if spec.needs_rsample or spec.guide_factors != "any":
        guide_trace = _guide_trace(guide, batch)
        refuse_guide_factors(estimator, spec.guide_factors, guide_trace,
                             _accepting_factors)
        if spec.needs_rsample:
            refuse_non_reparameterized(estimator, guide_trace, _accepting_any_guide)
    return list(spec.preflight(model, guide, batch))


def make_elbo(
    estimator: str,
    *,
    num_particles: int = 1,
    vectorize_particles: bool = False,
    jit: bool | str = False,
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
    jit : bool or {"auto", "compile"}
        ``True``: record the loss and its gradient once per input shape and replay the recorded
        graph (``ppl_vae.recording.compile.TraceOnce``; needs a static model structure, raises
        ``ValueError`` otherwise). ``"auto"``: the same where it is safe, and eager with one
        ``JitFallbackWarning`` naming why where it is not (programs that read tensor values,
        a recording that disagrees with eager); eager for estimators without a recorded variant.
        ``"compile"``: the recorded graph compiled by ``torch.compile`` (Inductor). ``False``:
        Pyro's eager ELBO. Recorded variants exist where the spec says ``has_jit``.
    **options
        Passed to the ELBO constructor (for example ``max_plate_nesting``).

    Returns
    -------
    pyro.infer.ELBO
        Calling it as ``elbo(model, guide)`` gives a ``torch.nn.Module`` whose forward returns
        the differentiable negative ELBO.
    """
    spec = get_spec(estimator)
    if int(num_particles) < 1:
        raise ValueError(f"num_particles must be >= 1, got {num_particles}")
    jit = check_jit(jit)
    if jit in (True, "compile") and not spec.has_jit:
        raise ValueError(f"estimator {estimator!r} has no jit={jit!r} variant; use jit=False "
                         "or jit='auto'")
    elbo = spec.build(
        num_particles=int(num_particles),
        vectorize_particles=bool(vectorize_particles),
        jit=jit,
        **options,
    )
    if jit is False or spec.recorded_loss is None:
        return elbo
    if not _RECORDER:
        raise RuntimeError("jit != False needs the recording wing: import ppl_vae.recording "
                           "(importing ppl_vae does)")
    return _RECORDER[0](elbo, spec.recorded_loss, jit)
