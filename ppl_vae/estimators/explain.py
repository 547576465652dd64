"""The plan, before training: which term each estimator uses for each latent site.

``explain`` traces the programs once on a batch and reports, per latent site, its plates, event
shape, device, dtype, whether the guide's distribution is reparameterized, and the term the
chosen estimator uses for it. It exists mostly for one silent behaviour of Pyro's
``TraceMeanField_ELBO`` (the ``"analytic"`` estimator): it uses the closed-form
KL(q || p) only where torch's KL registry has an entry for the (guide, prior) pair of
distributions, and otherwise falls back to the Monte Carlo estimate log q(z) - log p(z) without
saying so (:func:`monte_carlo_kl_sites` lists where).
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import pyro
import torch
from torch.distributions import kl_divergence

from ppl_vae.estimators.registry import ESTIMATORS
from ppl_vae.programs.checks import latent_sites, trace_pair

__all__ = ["explain", "monte_carlo_kl_sites", "PLAN_COLUMNS"]

PLAN_COLUMNS = [
    "site", "plates", "event_shape", "device", "dtype", "reparameterized", "term", "gradient",
]

CLOSED_FORM, MONTE_CARLO, SCORE = "closed-form KL", "Monte Carlo KL", "score function"


def _as_batch(batch) -> tuple:
    if isinstance(batch, torch.Tensor):
        return (batch,)
    if isinstance(batch, (tuple, list)) and batch and all(
        isinstance(t, torch.Tensor) for t in batch
    ):
        return tuple(batch)
    raise ValueError(
        "batch must be a tensor or a tuple of tensors (the programs' arguments), got "
        f"{type(batch).__name__}"
    )


def _traces(model, guide, batch):
    with torch.no_grad(), pyro.validation_enabled(False):
        return trace_pair(model, guide, _as_batch(batch))


def _has_closed_form_kl(guide_site, model_site) -> bool:
    try:
        kl_divergence(guide_site["fn"], model_site["fn"])
    except NotImplementedError:
        return False
    return True


def monte_carlo_kl_sites(model: Callable, guide: Callable, batch) -> list[str]:
    """Latent sites for which ``TraceMeanField_ELBO`` falls back to a Monte Carlo KL.

    These are the sites whose (guide distribution, model distribution) pair has no entry in
    torch's KL registry, with Pyro's additions (``torch.distributions.kl_divergence`` raises ``NotImplementedError``), for
    example a ``LogNormal`` guide on a ``Gamma`` prior, or a ``Normal`` guide on a
    ``StudentT`` prior.

    Parameters
    ----------
    model, guide : callable
        Pyro programs called as ``model(*batch)``.
    batch : tensor or tuple of tensors
        A few rows of data (the programs are run once).

    Returns
    -------
    list of str
        Site names in the model's order; empty when every KL is in closed form.
    """
    model_trace, guide_trace = _traces(model, guide, batch)
    return [
        name for name in latent_sites(model_trace)
        if name in guide_trace.nodes
        and not _has_closed_form_kl(guide_trace.nodes[name], model_trace.nodes[name])
    ]


def _term(estimator: str, reparam: bool, closed_form: bool, enumerated: bool) -> tuple[str, str]:
    """(term, gradient) one estimator uses for one site."""
    if enumerated:
        return "enumerated (exact sum)", "exact"
    if estimator == "score":
        return SCORE, "score function (Rao-Blackwellised)"
    if estimator == "analytic":
        term = CLOSED_FORM if closed_form else MONTE_CARLO
        return term, "reparameterized" if reparam else "not supported: no rsample"
    if estimator == "stl":
        gradient = "path derivative (score term dropped)"
        return MONTE_CARLO, gradient if reparam else "not supported: no rsample"
    if estimator == "iwae":
        gradient = "reparameterized, through log-mean-exp over K"
        return MONTE_CARLO, gradient if reparam else "not supported: no rsample"
    # mc, enum and any other Trace_ELBO-like estimator
    return (MONTE_CARLO, "reparameterized") if reparam else (SCORE, "score function")


def explain(model: Callable, guide: Callable, batch, estimator: str = "analytic") -> pd.DataFrame:
    """One row per latent site: how ``estimator`` will handle it.

    Parameters
    ----------
    model, guide : callable
        Pyro programs called as ``model(*batch)``.
    batch : tensor or tuple of tensors
        A few rows of data; the programs are run once, without gradients.
    estimator : str
        A name from :data:`ppl_vae.ESTIMATORS`.

    Returns
    -------
    pandas.DataFrame
        Columns ``site``, ``plates`` (comma-separated names), ``event_shape`` (tuple),
        ``device``, ``dtype``, ``reparameterized`` (whether the guide's distribution has
        rsample), ``term`` (``"closed-form KL"``, ``"Monte Carlo KL"``, ``"score function"``
        or ``"enumerated (exact sum)"``) and ``gradient`` (how its gradient is formed).
    """
    if estimator not in ESTIMATORS:
        raise ValueError(
            f"unknown estimator {estimator!r}; choose one of: {', '.join(sorted(ESTIMATORS))}"
        )
    model_trace, guide_trace = _traces(model, guide, batch)
    rows = []
    for name in latent_sites(model_trace):
        msite = model_trace.nodes[name]
        enumerated = msite["infer"].get("enumerate") is not None and name not in guide_trace.nodes
        site = guide_trace.nodes[name] if name in guide_trace.nodes else msite
        fn = site["fn"]
        reparam = bool(fn.has_rsample) and not enumerated
        closed = not enumerated and _has_closed_form_kl(site, msite)
        term, gradient = _term(estimator, reparam, closed, enumerated)
        value = site["value"]
        rows.append({
            "site": name,
            "plates": ", ".join(f.name for f in site["cond_indep_stack"]),
            "event_shape": tuple(fn.event_shape),
            "device": str(value.device),
            "dtype": str(value.dtype).replace("torch.", ""),
            "reparameterized": reparam,
            "term": term,
            "gradient": gradient,
        })
    return pd.DataFrame(rows, columns=PLAN_COLUMNS)
