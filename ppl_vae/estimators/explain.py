"""The plan, before training: which term each estimator uses for each latent site.

``explain`` traces the programs once on a batch and reports, per latent site, its plates, event
shape, device, dtype, whether the guide's distribution is reparameterized, and the term the
chosen estimator uses for it. It exists mostly for one silent behaviour of Pyro's
``TraceMeanField_ELBO`` (the ``"analytic"`` estimator): it uses the closed-form
KL(q || p) only where torch's KL registry has an entry for the (guide, prior) pair of
distributions, and otherwise falls back to the Monte Carlo estimate log q(z) - log p(z) without
saying so (:func:`~ppl_vae.estimators.kl.monte_carlo_kl_sites` lists where). The term each
estimator uses is its registry entry's ``plan`` (:class:`~ppl_vae.estimators.registry.EstimatorSpec`).
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from ppl_vae.estimators.kl import (
    as_batch,
    has_closed_form_kl,
    monte_carlo_kl_sites,
    program_traces,
)
from ppl_vae.estimators.pyro_elbos import estimator_spec
from ppl_vae.estimators.registry import SiteFacts
from ppl_vae.programs.checks import latent_sites, resolve_data_plate

__all__ = ["explain", "monte_carlo_kl_sites", "PLAN_COLUMNS"]

PLAN_COLUMNS = [
    "site", "plates", "event_shape", "device", "dtype", "reparameterized", "term", "gradient",
]

ENUMERATED = ("enumerated (exact sum)", "exact")


def explain(model: Callable, guide: Callable, batch, estimator: str = "analytic", *,
            data_plate: str | None = None) -> pd.DataFrame:
    """One row per latent site: how ``estimator`` will handle it.

    Parameters
    ----------
    model, guide : callable
        Pyro programs called as ``model(*batch)``.
    batch : tensor or tuple of tensors
        A few rows of data; the programs are run once, without gradients.
    estimator : str or pyro.infer.ELBO
        A name from :data:`ppl_vae.ESTIMATORS`, or a Pyro ELBO instance (the plan of the
        estimator it maps to, :mod:`~ppl_vae.estimators.pyro_elbos`).
    data_plate : str, optional
        The plate over data points, as for :func:`ppl_vae.fit` (None: found as ``fit`` finds
        it, the one plate whose size is the batch's).

    Returns
    -------
    pandas.DataFrame
        Columns ``site``, ``plates`` (comma-separated names), ``event_shape`` (tuple),
        ``device``, ``dtype``, ``reparameterized`` (whether the guide's distribution has
        rsample), ``term`` (``"closed-form KL"``, ``"Monte Carlo KL"``, ``"score function"``
        or ``"enumerated (exact sum)"``) and ``gradient`` (how its gradient is formed).
        ``attrs["data_plate"]`` is the plate ``fit`` scales by N / B on this batch, or None with
        ``attrs["data_plate_error"]`` saying why there is none (``fit`` would raise it).
    """
    spec = estimator_spec(estimator)
    model_trace, guide_trace = program_traces(model, guide, batch)
    rows = []
    for name in latent_sites(model_trace):
        msite = model_trace.nodes[name]
        site = guide_trace.nodes[name] if name in guide_trace.nodes else msite
        # Marked for enumeration in the guide (config_enumerate) or in the model (a site the
        # guide lacks); only an estimator that enumerates sums it out, the others sample it.
        enumerated = spec.enumerates and site["infer"].get("enumerate") in ("parallel",
                                                                             "sequential")
        fn = site["fn"]
        reparam = bool(fn.has_rsample) and not enumerated
        closed = not enumerated and has_closed_form_kl(site, msite)
        term, gradient = ENUMERATED if enumerated else spec.plan(SiteFacts(reparam, closed))
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
    plan = pd.DataFrame(rows, columns=PLAN_COLUMNS)
    try:
        plan.attrs["data_plate"] = resolve_data_plate(model, guide, as_batch(batch), data_plate)
    except ValueError as exc:
        plan.attrs["data_plate"], plan.attrs["data_plate_error"] = None, str(exc)
    return plan
