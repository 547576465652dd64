"""Pyro's own ELBO objects as ``estimator=``: mapped to a registered estimator, or used as given.

A user arrives with ``pyro.infer.TraceMeanField_ELBO(num_particles=4)``. When the table
:data:`PYRO_ELBOS` maps its class (exactly: a subclass may compute something else) to a
registered estimator, the instance becomes that estimator's name with the instance's options
(``num_particles``, ``vectorize_particles``, ``max_plate_nesting``, ...): ``fit``, the plan and the
pre-flight then treat it exactly as the name. An option the estimator does not honour is a
``ValueError`` naming it (checked by building the estimator and reading the option back), never
dropped. An ELBO without a match (a user's subclass, ``TraceGraph_ELBO``'s subclasses with a
``differentiable_loss``) is used as given: its own ``differentiable_loss`` is the training loss,
and its plan and pre-flight are those of the nearest mapped class it derives from (Pyro's
``Trace_ELBO``'s for an ELBO deriving from none). An ELBO without a ``differentiable_loss``
(``RenyiELBO(alpha=0.5)``) or without a loss value (``TraceTailAdaptive_ELBO``, :data:`REFUSED`)
is refused by name before anything runs.

The mapping is data: one :class:`PyroELBOMatch` per Pyro class. Code outside this package asks
:func:`resolve_estimator`, :func:`estimator_spec`, :func:`build_elbo` and
:func:`estimator_preflight`, which take a registered name or an ELBO instance alike.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import pyro.infer

from ppl_vae.estimators.registry import (
    ESTIMATORS,
    EstimatorSpec,
    get_spec,
    make_elbo,
    preflight_warnings,
)

__all__ = ["PYRO_ELBOS", "PyroELBOMatch", "ResolvedEstimator", "resolve_estimator",
           "estimator_spec", "estimator_label", "build_elbo", "estimator_preflight",
           "options_of"]


def _matches_always(elbo: pyro.infer.ELBO) -> str | None:
    return None


def _renyi_alpha_zero(elbo: pyro.infer.ELBO) -> str | None:
    # alpha = 0: log mean exp of the K importance weights, the IWAE bound (Li & Turner 2016).
    return None if elbo.alpha == 0 else f"alpha={elbo.alpha} is not the IWAE bound (alpha=0)"


@dataclass(frozen=True)
class PyroELBOMatch:
    """The registered estimator a Pyro ELBO class stands for.

    Parameters
    ----------
    estimator : str
        The registered name (``"mc"``, ``"analytic"``, ...).
    jit : bool
        The class is Pyro's ``JitTrace*_ELBO``: the step is recorded (``jit=True``).
    requires : callable
        ``requires(elbo) -> str or None``: why this instance does not match (its class does),
        ``None`` when it does (``RenyiELBO`` is the IWAE bound only at ``alpha=0``).
    consumes : tuple of str
        Constructor options the match itself accounts for (``alpha``), not passed on.
    """

    estimator: str
    jit: bool = False
    requires: Callable[[pyro.infer.ELBO], str | None] = _matches_always
    consumes: tuple[str, ...] = ()


#: Pyro's ELBO classes with a registered equivalent. ``JitTraceGraph_ELBO`` is absent on
#: purpose: it maps to ``"tracegraph"``, which has no recorded variant (refused by name).
PYRO_ELBOS: dict[type, PyroELBOMatch] = {
    pyro.infer.Trace_ELBO: PyroELBOMatch("mc"),
    pyro.infer.JitTrace_ELBO: PyroELBOMatch("mc", jit=True),
    pyro.infer.TraceMeanField_ELBO: PyroELBOMatch("analytic"),
    pyro.infer.JitTraceMeanField_ELBO: PyroELBOMatch("analytic", jit=True),
    pyro.infer.TraceEnum_ELBO: PyroELBOMatch("enum"),
    pyro.infer.JitTraceEnum_ELBO: PyroELBOMatch("enum", jit=True),
    pyro.infer.TraceGraph_ELBO: PyroELBOMatch("tracegraph"),
    pyro.infer.JitTraceGraph_ELBO: PyroELBOMatch("tracegraph", jit=True),
    pyro.infer.RenyiELBO: PyroELBOMatch("iwae", requires=_renyi_alpha_zero, consumes=("alpha",)),
}

#: Pyro ELBOs that cannot be used as given, and why: fit monitors the loss's value (history,
#: divergence check, early stopping), and these return none.
REFUSED: dict[type, str] = {
    pyro.infer.TraceTailAdaptive_ELBO: "its differentiable_loss returns inf as its value by "
    "design (gradients only), and fit monitors the loss value (history, divergence check)",
}

# Options that change nothing in fit: ``retain_graph`` only matters to ``loss_and_grads`` (fit
# differentiates each loss once), ``ignore_jit_warnings`` only to torch.jit.trace (the recorded
# step raises no tracer warnings). Accepted and recorded in the settings.
NO_EFFECT = ("retain_graph", "ignore_jit_warnings")
# Taken by fit itself from the instance (its num_particles / vectorize_particles arguments).
FIT_OPTIONS = ("num_particles", "vectorize_particles")


@dataclass(frozen=True)
class ResolvedEstimator:
    """What ``estimator=`` became: a registered name with options, or an ELBO used as given."""

    estimator: str | pyro.infer.ELBO
    num_particles: int
    vectorize_particles: bool
    jit: bool | str
    elbo_options: dict
    pyro_elbo: str | None = None  # the instance as the user wrote it (recorded in the settings)


def _defaults(cls: type) -> dict:
    out = {}
    for klass in reversed(cls.__mro__):
        if "__init__" in vars(klass) and issubclass(klass, pyro.infer.ELBO):
            out.update({n: p.default for n, p in inspect.signature(klass.__init__).parameters.items()
                        if p.default is not inspect.Parameter.empty})
    return out


def options_of(elbo: pyro.infer.ELBO) -> dict:
    """The constructor options of ``elbo`` as it was built (``max_plate_nesting`` without the
    particle dimension Pyro adds to it with vectorized particles)."""
    state = vars(elbo)
    out = {name: state[name] for name in _defaults(type(elbo)) if name in state}
    if "max_plate_nesting" in out and out.get("vectorize_particles") and \
            out.get("num_particles", 1) > 1:
        out["max_plate_nesting"] -= 1
    return out


def _describe(elbo: pyro.infer.ELBO) -> str:
    defaults = _defaults(type(elbo))
    given = {k: v for k, v in options_of(elbo).items()
             if k not in defaults or not _same(v, defaults[k])}
    args = ", ".join(f"{k}={v!r}" for k, v in sorted(given.items()))
    return f"{type(elbo).__module__}.{type(elbo).__qualname__}({args})"


def _same(a, b) -> bool:
    # The type too: max_plate_nesting=1 is not the default float("inf"), True is not 1.
    return a is b or (type(a) is type(b) and a == b)


def _match(elbo: pyro.infer.ELBO) -> PyroELBOMatch | None:
    # Exactly the class: a subclass may compute another objective with the same options.
    match = PYRO_ELBOS.get(type(elbo))
    if match is None or match.estimator not in ESTIMATORS or match.requires(elbo) is not None:
        return None
    return match


def _nearest_match(elbo: pyro.infer.ELBO) -> tuple[type, PyroELBOMatch] | None:
    for klass in type(elbo).__mro__:
        match = PYRO_ELBOS.get(klass)
        if match is not None and match.estimator in ESTIMATORS:
            return klass, match
    return None


def _refuse_fit_options(label: str, given: dict, num_particles, vectorize_particles,
                        options: dict) -> None:
    """fit's num_particles / vectorize_particles / elbo_options beside an ELBO instance: the
    instance carries its own; a different value in fit's argument is refused, not merged."""
    for name, value, default in (("num_particles", num_particles, 1),
                                 ("vectorize_particles", vectorize_particles, False)):
        if value != default and value != given.get(name, default):
            raise ValueError(f"{name}={value!r} given with estimator={label}: set it on the ELBO "
                             f"({name}={value!r} in its constructor), not in fit")
    if options:
        raise ValueError(f"elbo_options {sorted(options)} given with estimator={label}: set them "
                         "on the ELBO's constructor, not in fit")


def _pass_on(label: str, elbo: pyro.infer.ELBO, match: PyroELBOMatch) -> dict:
    """The instance's non-default options the registered estimator must take."""
    defaults = _defaults(type(elbo))
    out = {}
    for name, value in options_of(elbo).items():
        if name in FIT_OPTIONS or name in NO_EFFECT or name in match.consumes:
            continue
        if name in defaults and _same(value, defaults[name]):
            continue
        if name == "jit_options":
            raise ValueError(f"estimator={label}: jit_options={value!r} cannot be honoured; "
                             "ppl-vae records the step itself (jit=True) and takes no torch.jit "
                             "options")
        out[name] = value
    return out


def _check_honoured(label: str, name: str, options: dict, num_particles: int,
                    vectorize: bool) -> None:
    """Build the estimator with the options and read each one back: a constructor that refuses
    or ignores one is an error naming it."""
    try:
        built = make_elbo(name, num_particles=num_particles, vectorize_particles=vectorize,
                          jit=False, **options)
    except TypeError as exc:
        raise ValueError(f"estimator={label}: the matching estimator {name!r} cannot honour "
                         f"option(s) {sorted(options)} ({exc})") from exc
    got = options_of(built)
    for option, value in options.items():
        if option not in got or not _same(got[option], value):
            raise ValueError(f"estimator={label}: the matching estimator {name!r} cannot honour "
                             f"{option}={value!r}")


def _resolve_jit(label: str, match: PyroELBOMatch | None, jit):
    if match is None:  # used as given: Pyro's own loss, never recorded
        if jit in (True, "compile"):
            raise ValueError(f"jit={jit!r} with estimator={label}: an ELBO used as given is not "
                             "recorded; pass jit=False or 'auto'")
        return False
    if not match.jit:
        return jit
    if jit is False:
        raise ValueError(f"estimator={label} asks for a recorded step, jit=False refuses it; pass "
                         f"the eager class or leave jit at 'auto'")
    if not get_spec(match.estimator).has_jit:
        raise ValueError(f"estimator={label}: the matching estimator {match.estimator!r} has no "
                         "recorded variant; pass the eager class (without Jit) instead")
    return True if jit == "auto" else jit


def resolve_estimator(estimator, *, num_particles: int = 1, vectorize_particles: bool = False,
                      jit: bool | str = "auto", elbo_options: Mapping | None = None
                      ) -> ResolvedEstimator:
    """``fit``'s ``estimator=`` with its companions, resolved before anything runs.

    A name passes through. A Pyro ELBO instance with a match in :data:`PYRO_ELBOS` becomes the
    registered name with the instance's options; one without is kept as given. Raises
    ``TypeError`` for an ELBO class (pass an instance) or another object, ``ValueError`` for an
    option that cannot be honoured or that fit's arguments contradict.
    """
    options = dict(elbo_options or {})
    if not isinstance(estimator, pyro.infer.ELBO):
        if isinstance(estimator, type) and issubclass(estimator, pyro.infer.ELBO):
            raise TypeError(f"estimator must be an ELBO instance, got the class "
                            f"{estimator.__name__}: pass {estimator.__name__}()")
        if not isinstance(estimator, str) or not estimator:
            raise TypeError(f"estimator must be a non-empty string (a registered name) or a "
                            f"pyro.infer.ELBO instance, got {estimator!r} "
                            f"({type(estimator).__name__})")
        return ResolvedEstimator(estimator, num_particles, vectorize_particles, jit, options)
    label = _describe(estimator)
    given = options_of(estimator)
    _refuse_fit_options(label, given, num_particles, vectorize_particles, options)
    particles = int(given.get("num_particles", 1))
    vectorize = bool(given.get("vectorize_particles", False))
    match = _match(estimator)
    jit = _resolve_jit(label, match, jit)
    if match is None:
        if type(estimator) in REFUSED:
            raise ValueError(f"estimator={label} cannot be used: {REFUSED[type(estimator)]}; "
                             "use a registered estimator (ppl_vae.ESTIMATORS)")
        if not any("differentiable_loss" in vars(k) for k in type(estimator).__mro__):
            unmatched = PYRO_ELBOS.get(type(estimator))
            why = "" if unmatched is None else f"{unmatched.requires(estimator)}, and "
            raise ValueError(f"estimator={label}: {why}used as given it has no "
                             "differentiable_loss, the loss fit trains on; pass an ELBO that has "
                             "one or a registered name")
        return ResolvedEstimator(estimator, particles, vectorize, jit, {}, label)
    passed = _pass_on(label, estimator, match)
    _check_honoured(label, match.estimator, passed, particles, vectorize)
    return ResolvedEstimator(match.estimator, particles, vectorize, jit, passed, label)


def estimator_label(estimator) -> str:
    """A registered name, or ``ClassName`` of an ELBO used as given (the settings' entry)."""
    return estimator if isinstance(estimator, str) else type(estimator).__qualname__


def estimator_spec(estimator) -> EstimatorSpec:
    """The spec of a registered name, of a mapped ELBO instance, or of one used as given."""
    if isinstance(estimator, str):
        return get_spec(estimator)
    match = _match(estimator)
    if match is not None:
        return get_spec(match.estimator)
    return _as_given_spec(estimator)


def _as_given_spec(elbo: pyro.infer.ELBO) -> EstimatorSpec:
    name = type(elbo).__qualname__
    summary = f"{type(elbo).__module__}.{name} used as given (its own differentiable_loss)"

    def build(**_):
        return elbo

    def objective(num_particles: int) -> str:
        return name

    nearest = _nearest_match(elbo)
    if nearest is None:
        return EstimatorSpec(build, summary, objective=objective, guide_factors="any")
    klass, match = nearest
    return dataclasses.replace(
        get_spec(match.estimator), build=build, objective=objective, has_jit=False,
        variance_reference=False,
        summary=f"{summary}; plan and checks of {klass.__name__} ({match.estimator!r})")


def build_elbo(estimator, *, num_particles: int = 1, vectorize_particles: bool = False,
               jit: bool | str = False, **options) -> pyro.infer.ELBO:
    """:func:`~ppl_vae.estimators.registry.make_elbo` for a name; an ELBO used as given is
    returned itself (its options are its own)."""
    if isinstance(estimator, str):
        return make_elbo(estimator, num_particles=num_particles,
                         vectorize_particles=vectorize_particles, jit=jit, **options)
    resolved = resolve_estimator(estimator, jit=jit)
    if isinstance(resolved.estimator, str):
        return build_elbo(**_as_arguments(resolved))
    return resolved.estimator


def _as_arguments(resolved: ResolvedEstimator) -> dict:
    return {"estimator": resolved.estimator, "num_particles": resolved.num_particles,
            "vectorize_particles": resolved.vectorize_particles, "jit": resolved.jit,
            **resolved.elbo_options}


def estimator_preflight(estimator, model, guide, batch) -> list[str]:
    """:func:`~ppl_vae.estimators.registry.preflight_warnings` for a name or an ELBO instance."""
    if isinstance(estimator, str):
        return preflight_warnings(estimator, model, guide, batch)
    return preflight_warnings(_describe(estimator), model, guide, batch,
                              spec=estimator_spec(estimator))
