"""Per-data-point log densities at guide draws: the primitive behind ``evaluate``, the ArviZ
export and the importance-sampling diagnostics.

For K draws z_k ~ q(z | x) (vectorized as an extra leftmost plate) it returns, per draw and per
data point i, log p(x_i | z), log p(z_i) and log q(z_i | x_i), plus the same for global sites
(outside the data plate), which belong to the whole data set rather than to one point.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pyro
import torch
from pyro import poutine
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import site_is_subsample

from ppl_vae.evaluation.fastpath import log_prob
from ppl_vae.programs.checks import data_dim
from ppl_vae.programs.handlers import PARTICLE_PLATE, FixSubsample, in_draw_plate
from ppl_vae.programs.plates import own_scale
from ppl_vae.programs.util import max_plate_nesting

__all__ = [
    "Draws", "FixSubsample", "draw", "in_draw_plate", "reduce_to_points",
    "site_log_prob", "trace_pairs",
]


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
    log_lik_sites : dict of str -> tensor, shape (K, N)
        The same per observed site.
    log_prior : tensor, shape (K, N)
        Sum over local latent sites of log p(z_i) (model sites absent from the guide excluded:
        they are drawn from the prior, so their density cancels in the importance ratio).
    log_q : tensor, shape (K, N)
        Sum over local guide sites of log q(z_i | x_i).
    log_prior_global, log_q_global : tensor, shape (K,)
        The same for sites outside the data plate.
    local_sites, global_sites : list of str
    global_traces : list of pyro.poutine.Trace or None
        The guide's global sites (auxiliary ones included), one trace per pass (one pass holds
        all K draws when vectorized, K passes otherwise); replayed by the next chunk of data
        points so that all chunks share the same global draws.
    scales : dict of str -> float
        Sites the program scales itself (``poutine.scale``; not the subsampling factor of a
        plate), with that scale (its mean where it is a tensor). Every log-density above
        carries it, as in Pyro's ELBO; empty for a normalized program.
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
    log_lik_sites: dict
    observed_dims: dict
    rank: int
    global_traces: list | None = None
    scales: dict = field(default_factory=dict)

    @property
    def scaled(self) -> bool:
        """Whether the program scales a site itself: the log-densities are then Pyro's scaled
        terms, not a normalized log p(x, z) (IWAE is no bound on log p(x), k-hats and
        information measures mix units)."""
        return bool(self.scales)

    def take(self, index: torch.Tensor) -> Draws:
        """The same draws on the points ``index`` (positions along N) only."""
        def along(value, dim, event):
            return value if dim is None else value.index_select(value.dim() - event + dim, index)

        latents = {s: along(v, self.data_dims[s], v.dim() - self.rank)
                   for s, v in self.latents.items()}
        observed = {s: along(v, *self.observed_dims[s]) for s, v in self.observed.items()}
        return Draws(latents, observed, self.log_lik[:, index], self.log_prior[:, index],
                     self.log_q[:, index], self.log_prior_global, self.log_q_global,
                     self.local_sites, self.global_sites, self.data_dims,
                     {s: v[:, index] for s, v in self.log_lik_sites.items()},
                     self.observed_dims, self.rank, self.global_traces, self.scales)

    @property
    def log_p(self) -> torch.Tensor:
        """log p(x_i, z_i) per draw and point, shape (K, N) (local sites only)."""
        return self.log_lik + self.log_prior

    @property
    def log_weights(self) -> torch.Tensor:
        """Local importance log-ratios log p(x_i, z_i) - log q(z_i | x_i), shape (K, N)."""
        return self.log_p - self.log_q


def reduce_to_points(log_prob: torch.Tensor, rank: int, data_dim: int | None, n: int) -> torch.Tensor:
    """Sum a site's log-density down to (K, N) (data_dim given) or (K,)."""
    lp = log_prob.reshape((1,) * (rank - log_prob.dim()) + tuple(log_prob.shape))
    if data_dim is None:
        return lp.reshape(lp.shape[0], -1).sum(-1)
    lp = lp.movedim(rank + data_dim, 1)
    lp = lp.reshape(lp.shape[0], lp.shape[1], -1).sum(-1)
    return lp.expand(lp.shape[0], n)


def site_log_prob(site, scales: dict | None = None) -> torch.Tensor:
    """A site's masked log-density; with ``scales`` (a dict), times the program's own scale
    (:func:`~ppl_vae.programs.plates.own_scale`), recorded there by site name when not 1.
    A Bernoulli likelihood on logits takes :func:`~ppl_vae.evaluation.fastpath.log_prob`."""
    lp = log_prob(site["fn"], site["value"])
    mask = site["mask"]
    if isinstance(mask, torch.Tensor):
        lp = torch.where(mask, lp, lp.new_zeros(()))
    elif mask is False:
        lp = torch.zeros_like(lp)
    if scales is not None:
        scale = own_scale(site)
        if isinstance(scale, torch.Tensor) or scale != 1.0:
            scales[site["name"]] = float(torch.as_tensor(scale).double().mean())
            lp = lp * scale
    return lp


def _programs(model, guide, num, rank, vectorized, subsample, data_plate):
    if vectorized:
        model, guide = in_draw_plate(model, num, rank), in_draw_plate(guide, num, rank)
    if subsample is not None:
        model = FixSubsample(data_plate, subsample)(model)
        guide = FixSubsample(data_plate, subsample)(guide)
    return model, guide


def trace_pairs(model, guide, batch, num, rank, vectorized, subsample, data_plate, globals_,
                enumerate_model: bool = False):
    """[(guide trace, model trace)]: one pair holding all ``num`` draws in a particle plate, or
    ``num`` pairs of one draw each (``vectorized=False``, as ``Predictive(parallel=False)``).
    ``globals_`` (one trace per pair) fixes the guide's global sites by replay.
    ``enumerate_model``: the model's sites marked for enumeration that the guide does not draw
    take every value at once, in dimensions left of the draws (summed out by :func:`_score`,
    as ``TraceEnum_ELBO`` does)."""
    m, g = _programs(model, guide, num, rank, vectorized, subsample, data_plate)
    pairs = []
    with pyro.validation_enabled(False):
        for k in range(1 if vectorized else num):
            gk = g if globals_ is None else poutine.replay(g, trace=globals_[k])
            gtr = poutine.trace(gk).get_trace(*batch)
            mk = poutine.replay(m, trace=gtr)
            if enumerate_model:  # outside the replay, so that the guide's draws stay drawn
                mk = poutine.enum(mk, first_available_dim=-rank - 1)
            mtr = poutine.trace(mk).get_trace(*batch)
            pairs.append((gtr, mtr))
    return pairs


def _lift(value: torch.Tensor, event_dim: int, rank: int) -> torch.Tensor:
    """A value of one unvectorized draw in the layout of vectorized ones (draw dimension of
    size 1 leftmost, at ``-(rank + event_dim)``)."""
    return value.reshape((1,) * (rank + event_dim - value.dim()) + tuple(value.shape))


def _global_trace(guide_trace, data_plate) -> Trace:
    """The guide's sites outside the data plate (auxiliary ones included), for replay."""
    out = Trace()
    for name, site in guide_trace.nodes.items():
        if (site["type"] == "sample" and not site_is_subsample(site) and not site["is_observed"]
                and data_dim(site, data_plate) is None):
            out.add_node(name, **site)
    return out

@torch.no_grad()
def draw(
    model: Callable,
    guide: Callable,
    batch: Sequence[torch.Tensor],
    *,
    num_samples: int,
    data_plate: str = "data",
    nesting: int | None = None,
    vectorized: bool = True,
    subsample: torch.Tensor | None = None,
    globals_: list | None = None,
    num_points: int | None = None,
    enumerate_model: bool = False,
) -> Draws:
    """Draw ``num_samples`` joint samples from the guide on ``batch`` and score them.

    Parameters
    ----------
    model, guide : callable
        Pyro programs called as ``model(*batch)``.
    batch : sequence of tensors
        N rows (all rows of a model that subsamples its own plate: see ``subsample``).
    num_samples : int
        K, the number of draws.
    data_plate : str
        The plate over data points.
    nesting : int, optional
        The programs' max plate nesting (computed when not given).
    vectorized : bool
        Draw all K in one pass inside a particle plate; ``False`` draws them one by one, for
        programs that cannot broadcast over an extra batch dimension (``x @ w`` on a sampled
        ``w``), as ``pyro.infer.Predictive(parallel=False)`` does.
    subsample : tensor of int, optional
        For a model that subsamples ``data_plate`` itself: the indices of the points to score
        (N is then their number).
    globals_ : list of Trace, optional
        ``Draws.global_traces`` of an earlier call: its global draws are reused.
    num_points : int, optional
        Size of the whole data set when ``batch`` is one chunk of it (an observed site outside
        the data plate is shared by all points: each gets its 1 / num_points share).
    enumerate_model : bool
        Sum the model's enumerated sites out (``ProgramAnalysis.enumerated``): each point's
        log-likelihood is then log sum_a p(a) p(x_i | a, z), as ``TraceEnum_ELBO`` scores it.
    """
    n = int(subsample.shape[0]) if subsample is not None else batch[0].shape[0]
    if nesting is None:
        nesting = max_plate_nesting(model, guide, batch)
    rank = nesting + 1
    pairs = trace_pairs(model, guide, batch, num_samples, rank, vectorized, subsample,
                         data_plate, globals_, enumerate_model)
    ref = next((t for t in batch if t.is_floating_point()), batch[0])
    like = torch.zeros((), dtype=ref.dtype if ref.is_floating_point()
                       else torch.get_default_dtype(), device=ref.device)
    parts = [_score(gtr, mtr, rank, n, num_points or n, data_plate, like) for gtr, mtr in pairs]
    out = parts[0] if len(parts) == 1 else _concat(parts)
    if out.global_sites or any(_global_trace(g, data_plate).nodes for g, _ in pairs[:1]):
        out.global_traces = [_global_trace(g, data_plate) for g, _ in pairs]
    return out


def _score(guide_trace, model_trace, rank, n, num_points, data_plate, like) -> Draws:
    """Per-point and global log densities of one (guide, model) trace pair; ``like`` gives
    the dtype and device of the results."""
    vectorized = PARTICLE_PLATE in model_trace.nodes
    num = model_trace.nodes[PARTICLE_PLATE]["fn"].size if vectorized else 1
    zeros_kn = like.new_zeros((num, n))
    log_lik, log_prior, log_q = zeros_kn.clone(), zeros_kn.clone(), zeros_kn.clone()
    log_prior_g, log_q_g = zeros_kn[:, 0].clone(), zeros_kn[:, 0].clone()
    latents, observed, local_sites, global_sites, data_dims, lik_sites = {}, {}, [], [], {}, {}
    obs_dims, scales = {}, {}
    # Each site's log-density once (a 784-pixel likelihood over K x N draws is the pass's
    # largest elementwise cost): the enumeration check and the sums below share it.
    site_lps = {name: site_log_prob(site, scales) for name, site in model_trace.nodes.items()
                if site["type"] == "sample" and not site_is_subsample(site)
                and name != PARTICLE_PLATE}
    summed = _summed_out(model_trace, rank, site_lps)
    for name, site in model_trace.nodes.items():
        if name not in site_lps:
            continue  # plates record themselves as sample sites; they are not latents
        dim = data_dim(site, data_plate)
        if name in summed:
            if summed[name] is None:
                continue  # an enumerated site: its log p(a) is inside the marginal
            lp = reduce_to_points(summed[name], rank, dim, n)
        else:
            lp = reduce_to_points(site_lps[name], rank, dim, n)
        if site["is_observed"]:
            observed[name] = site["value"]
            obs_dims[name] = (dim, len(site["fn"].event_shape))
            lik_sites[name] = lp if dim is not None else lp[:, None].expand(num, n) / num_points
            log_lik += lik_sites[name]
            continue
        if name not in guide_trace.nodes:
            continue  # drawn from the prior: its density cancels in p/q
        lq = reduce_to_points(site_log_prob(guide_trace.nodes[name], scales), rank, dim, n)
        value = site["value"]
        latents[name] = value if vectorized else _lift(value, len(site["fn"].event_shape), rank)
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
            lq = reduce_to_points(site_log_prob(gsite, scales), rank, dim, n)
            if dim is None:
                log_q_g += lq
            else:
                log_q += lq
    return Draws(latents, observed, log_lik, log_prior, log_q, log_prior_g, log_q_g,
                 local_sites, global_sites, data_dims, lik_sites, obs_dims, rank, scales=scales)


def _summed_out(model_trace, rank, site_lps: dict) -> dict:
    """Log-densities of the sites that depend on an enumerated dimension (left of the draws at
    ``-rank``), with those dimensions summed out: {first site that depends on them and is not
    enumerated itself: log sum_a p(a) p(. | a, ...)} (an observation's likelihood, or a latent's
    prior such as a mixture prior's component summed out of log p(z)), zeros for the later
    ones, None for the enumerated sites (their terms are inside). Exact for enumerated sites
    that are independent given the draws (a mixture's assignment); Pyro's contraction order for
    ``pyro.markov`` chains is not reproduced."""
    parts = {name: lp for name, lp in site_lps.items() if lp.dim() > rank}
    if not parts:
        return {}
    total = sum(parts.values())
    marginal = total.reshape(-1, *total.shape[total.dim() - rank:]).logsumexp(0)
    out, first = {}, True
    for name in parts:
        if model_trace.nodes[name]["infer"].get("_enumerate_dim") is not None:
            out[name] = None
        else:
            out[name] = marginal if first else torch.zeros_like(marginal)
            first = False
    return out


def _concat(parts: list[Draws]) -> Draws:
    """One Draws from single-draw ones (the draw dimension leftmost everywhere)."""
    first = parts[0]

    def cat(get):
        return torch.cat([get(p) for p in parts], 0)

    return Draws(
        latents={s: cat(lambda p, s=s: p.latents[s]) for s in first.latents},
        observed=first.observed,
        log_lik=cat(lambda p: p.log_lik), log_prior=cat(lambda p: p.log_prior),
        log_q=cat(lambda p: p.log_q), log_prior_global=cat(lambda p: p.log_prior_global),
        log_q_global=cat(lambda p: p.log_q_global), local_sites=first.local_sites,
        global_sites=first.global_sites, data_dims=first.data_dims,
        log_lik_sites={s: cat(lambda p, s=s: p.log_lik_sites[s]) for s in first.log_lik_sites},
        observed_dims=first.observed_dims, rank=first.rank, scales=first.scales,
    )
