"""Posterior collapse judged by information, not by units alone.

- A dimension whose KL(q(z_d | x) || p(z_d)) is near zero carries no information about x,
  whatever the covariance of its encoder mean says (``KL_THRESHOLD``); active units (Burda et
  al. 2016) must pass both tests.
- The mutual information I_q(x; z) is bounded by log N (the code cannot tell apart more points
  than there are); it is reported as a fraction of that ceiling and, when a reference (a trained
  model of the same kind) is given, as a fraction of what that reference reaches.
- Reconstructions no better than the data mean: the reconstruction term E_q[log p(x | z)] is
  compared with log p(x | z = E_p[z]), the decoder fed the prior mean (which a collapsed or
  untrained model matches, since its decoder ignores z). A model that gains nothing from z is
  failing whatever else holds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import pyro
import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from ppl_vae.data.tensors import as_tensors
from ppl_vae.evaluation.chunks import plan_points
from ppl_vae.evaluation.pointwise import draw, reduce_to_points, site_log_prob
from ppl_vae.programs.checks import data_dim
from ppl_vae.programs.handlers import FixSubsample, in_draw_plate
from ppl_vae.programs.util import program_dtype

__all__ = ["Reconstruction", "reconstruction_gain", "reference_value"]




class _AtPriorMean(Messenger):
    """Fix the named latent sites at the mean of their (model) prior."""

    def __init__(self, names):
        super().__init__()
        self.names = set(names)

    def _pyro_sample(self, msg):
        if msg["name"] in self.names and not msg["is_observed"]:
            fn = msg["fn"]
            msg["value"] = fn.mean.expand(fn.shape())
            msg["is_observed"] = True  # so that replay leaves it alone
            msg["infer"] = {**msg["infer"], "_ppl_vae_at_prior_mean": True}


@dataclass(frozen=True)
class Reconstruction:
    """Reconstruction term against the decoder fed the prior mean (nats per data point).

    Attributes
    ----------
    recon : float
        E_x E_q(z|x)[log p(x | z)] (global latents from the guide).
    recon_prior_mean : float
        E_x log p(x | z = E_p[z]) (same global draws).
    gain : float
        recon - recon_prior_mean: what the code z adds to the reconstruction.
    """

    recon: float
    recon_prior_mean: float
    gain: float


@torch.no_grad()
def reconstruction_gain(model, guide, data, *, num_samples: int = 16, max_points: int = 2000,
                        data_plate: str | None = "data", seed: int | None = 0) -> Reconstruction:
    """E_q[log p(x | z)] against log p(x | z at the prior mean), on at most ``max_points`` rows.

    The points and the way they are drawn are the programs' analysis' (the first chunk of a
    plan, see :func:`~ppl_vae.evaluation.chunks.plan_points`): a subsampling plate's own
    indices, all N with a parameter per data point, draws one by one where they do not
    vectorize.

    Raises
    ------
    ValueError
        If the model has no local latent sites in ``data_plate``, or their prior has no mean.
    """
    dtype, device = program_dtype(model, guide)
    tensors = as_tensors(data, dtype=dtype, device=device, name="data")
    plan = plan_points(model, guide, tensors, num_draws=num_samples, data_plate=data_plate)
    batch, subsample = plan.first_points(tensors, max_points)
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        d = draw(model, guide, batch, num_samples=num_samples, subsample=subsample,
                 **plan.draw_options())
        if not d.local_sites:
            raise ValueError(f"model: no local latent sites in the plate {plan.data_plate!r}, "
                             "so there is no code z whose reconstruction could be judged")
        mtr = _at_prior_mean(model, guide, batch, subsample, plan, d.local_sites)
    n = d.log_lik.shape[1]
    rank = plan.nesting + 1
    base = torch.zeros(n, dtype=torch.float64, device=tensors[0].device)
    for site in mtr.nodes.values():
        if (site["type"] != "sample" or site_is_subsample(site) or not site["is_observed"]
                or site["infer"].get("_ppl_vae_at_prior_mean")):
            continue
        dim = data_dim(site, plan.data_plate)
        lp = site_log_prob(site)
        if lp.dim() > rank:  # a prior mean per value of an enumerated site: no single z
            raise ValueError(f"site {site['name']!r}: the local latents' prior depends on an "
                             "enumerated site, so there is no single prior mean to decode")
        lp = reduce_to_points(lp, rank, dim, n)[0].double()
        base += lp if dim is not None else lp / n
    recon = float(d.log_lik.double().mean(0).mean())
    at_mean = float(base.mean())
    return Reconstruction(recon, at_mean, recon - at_mean)


def _at_prior_mean(model, guide, batch, subsample, plan, local_sites):
    """The model's trace with its local latents at their prior mean (one draw of the rest, in a
    plate of one draw where draws vectorize, as the program itself shapes them where not)."""
    rank = plan.nesting + 1
    if subsample is not None:
        model = FixSubsample(plan.data_plate, subsample)(model)
        guide = FixSubsample(plan.data_plate, subsample)(guide)
    if plan.vectorized:
        model, guide = in_draw_plate(model, 1, rank), in_draw_plate(guide, 1, rank)
    with pyro.validation_enabled(False):
        gtr = poutine.trace(guide).get_trace(*batch)
        fixed = poutine.replay(_AtPriorMean(local_sites)(model), trace=gtr)
        if plan.enumerated:
            fixed = poutine.enum(fixed, first_available_dim=-rank - 1)
        try:
            return poutine.trace(fixed).get_trace(*batch)
        except NotImplementedError as exc:
            raise ValueError(f"model: a local latent's prior has no mean ({exc})") from exc


def reference_value(reference, key: str) -> float | None:
    """``key`` from a reference: a :class:`~ppl_vae.diagnostics.Diagnostics` (its summary), a
    mapping, or None."""
    if reference is None:
        return None
    values = reference if isinstance(reference, Mapping) else reference.summary()
    value = values.get(key)
    return None if value is None or not math.isfinite(float(value)) else float(value)
