"""Per-data-point log densities at guide draws: the primitive behind ``evaluate``, the ArviZ
export and the importance-sampling diagnostics.

For K draws z_k ~ q(z | x) (vectorized as an extra leftmost plate) it returns, per draw and per
data point i, log p(x_i | z), log p(z_i) and log q(z_i | x_i), plus the same for global sites
(outside the data plate), which belong to the whole data set rather than to one point.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from ppl_vae.programs.checks import data_dim
from ppl_vae.programs.util import max_plate_nesting

__all__ = [
    "Draws", "draw", "in_draw_plate", "reduce_to_points",
    "site_log_prob",
]

PARTICLE_PLATE = "_ppl_vae_draws"


@dataclass
class Draws:
    """K guide draws on N data points.

    Attributes
    ----------
    latents : dict of str -> tensor
        Sampled latent values as the guide drew them: the draw dimension K leftmost at
        ``-(max_plate_nesting + 1 + event_dim)``, plate dimensions (size 1 where a site is not
        in that plate) and event dimensions as in the program.
    data_dims : dict of str -> int or None
        Each latent's data-plate dimension (negative, counted from the right of its batch
        shape), ``None`` for global sites.
    observed : dict of str -> tensor
        Observed values (without the draw dimension).
    log_lik : tensor, shape (K, N)
        Sum over observed sites of log p(x_i | z).
    log_prior : tensor, shape (K, N)
        Sum over local latent sites of log p(z_i) (model sites absent from the guide excluded:
        they are drawn from the prior, so their density cancels in the importance ratio).
    log_q : tensor, shape (K, N)
        Sum over local guide sites of log q(z_i | x_i).
    log_prior_global, log_q_global : tensor, shape (K,)
        The same for sites outside the data plate.
    local_sites, global_sites : list of str
    """

    latents: dict
    observed: dict
    log_lik: torch.Tensor
    log_prior: torch.Tensor
    log_q: torch.Tensor
    log_prior_global: torch.Tensor
    log_q_global: torch.Tensor
    local_sites: list
    global_sites: list
    data_dims: dict

    @property
    def log_p(self) -> torch.Tensor:
        """log p(x_i, z_i) per draw and point, shape (K, N) (local sites only)."""
        return self.log_lik + self.log_prior

    @property
    def log_weights(self) -> torch.Tensor:
        """Local importance log-ratios log p(x_i, z_i) - log q(z_i | x_i), shape (K, N)."""
        return self.log_p - self.log_q


def in_draw_plate(fn: Callable, num: int, rank: int) -> Callable:
    """``fn`` run inside a plate of ``num`` draws at dimension ``-rank`` (left of every plate the
    program uses), so that one pass draws all of them."""

    def wrapped(*args):
        with pyro.plate(PARTICLE_PLATE, num, dim=-rank):
            return fn(*args)

    return wrapped


def reduce_to_points(log_prob: torch.Tensor, rank: int, data_dim: int | None, n: int) -> torch.Tensor:
    """Sum a site's log-density down to (K, N) (data_dim given) or (K,)."""
    lp = log_prob.reshape((1,) * (rank - log_prob.dim()) + tuple(log_prob.shape))
    if data_dim is None:
        return lp.reshape(lp.shape[0], -1).sum(-1)
    lp = lp.movedim(rank + data_dim, 1)
    lp = lp.reshape(lp.shape[0], lp.shape[1], -1).sum(-1)
    return lp.expand(lp.shape[0], n)


def site_log_prob(site) -> torch.Tensor:
    lp = site["fn"].log_prob(site["value"])
    mask = site["mask"]
    if isinstance(mask, torch.Tensor):
        lp = torch.where(mask, lp, lp.new_zeros(()))
    elif mask is False:
        lp = torch.zeros_like(lp)
    return lp


@torch.no_grad()
def draw(
    model: Callable,
    guide: Callable,
    batch: Sequence[torch.Tensor],
    *,
    num_samples: int,
    data_plate: str = "data",
    nesting: int | None = None,
) -> Draws:
    """Draw ``num_samples`` joint samples from the guide on ``batch`` and score them.

    Parameters
    ----------
    model, guide : callable
        Pyro programs called as ``model(*batch)``.
    batch : sequence of tensors
        N rows.
    num_samples : int
        K, the number of draws (vectorized).
    data_plate : str
        The plate over data points.
    nesting : int, optional
        The programs' max plate nesting (computed when not given).
    """
    n = batch[0].shape[0]
    if nesting is None:
        nesting = max_plate_nesting(model, guide, batch)
    rank = nesting + 1
    with pyro.validation_enabled(False):
        guide_trace = poutine.trace(in_draw_plate(guide, num_samples, rank)).get_trace(*batch)
        model_trace = poutine.trace(
            poutine.replay(in_draw_plate(model, num_samples, rank), trace=guide_trace)
        ).get_trace(*batch)

    ref = next((t for t in batch if t.is_floating_point()), batch[0])
    dtype = ref.dtype if ref.is_floating_point() else torch.get_default_dtype()
    zeros_kn = torch.zeros((num_samples, n), dtype=dtype, device=ref.device)
    log_lik, log_prior, log_q = zeros_kn.clone(), zeros_kn.clone(), zeros_kn.clone()
    log_prior_g, log_q_g = zeros_kn[:, 0].clone(), zeros_kn[:, 0].clone()
    latents, observed, local_sites, global_sites, data_dims = {}, {}, [], [], {}
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue  # plates record themselves as sample sites; they are not latents
        dim = data_dim(site, data_plate)
        lp = reduce_to_points(site_log_prob(site), rank, dim, n)
        if site["is_observed"]:
            observed[name] = site["value"]
            log_lik += lp if dim is not None else lp[:, None] / n
            continue
        if name not in guide_trace.nodes:
            continue  # drawn from the prior: its density cancels in p/q
        gsite = guide_trace.nodes[name]
        lq = reduce_to_points(site_log_prob(gsite), rank, dim, n)
        latents[name] = site["value"]
        data_dims[name] = dim
        if dim is None:
            global_sites.append(name)
            log_prior_g += lp
            log_q_g += lq
        else:
            local_sites.append(name)
            log_prior += lp
            log_q += lq
    for gsite in guide_trace.nodes.values():
        # Auxiliary guide sites (an autoguide's "<site>_unconstrained") belong to q only; the
        # guide's Delta site at the constrained value carries just the Jacobian term.
        if gsite["type"] == "sample" and gsite["infer"].get("is_auxiliary"):
            dim = data_dim(gsite, data_plate)
            lq = reduce_to_points(site_log_prob(gsite), rank, dim, n)
            if dim is None:
                log_q_g += lq
            else:
                log_q += lq
    return Draws(latents, observed, log_lik, log_prior, log_q, log_prior_g, log_q_g,
                 local_sites, global_sites, data_dims)
