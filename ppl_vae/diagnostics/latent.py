"""What the latent code carries: KL per dimension, active units and the mutual information
between x and z (posterior-collapse checks).

- KL per dimension: E_x KL(q(z_d | x) || p(z_d)), from torch's KL registry when the pair has a
  closed form, else by Monte Carlo on the guide's draws.
- Active units (Burda et al. 2016, "Importance weighted autoencoders", ICLR): a dimension is
  active when Cov_x(E_q[z_d | x]) exceeds 0.01, i.e. the encoder's mean moves with the input.
- Mutual information I_q(x; z) = E_x E_q(z|x)[log q(z | x) - log q(z)] under the aggregate
  posterior q(z) = mean_j q(z | x_j) (Hoffman & Johnson 2016, "ELBO surgery"; estimator as in
  He et al. 2019, "Lagging inference networks"), bounded above by log N.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from ppl_vae.data.tensors import as_tensors
from ppl_vae.evaluation.chunks import PointPlan, map_chunks, plan_points
from ppl_vae.evaluation.pointwise import FixSubsample, trace_pairs
from ppl_vae.programs.modes import eval_mode
from ppl_vae.programs.plates import own_scale
from ppl_vae.programs.random import chunk_seed, seeded
from ppl_vae.programs.util import program_dtype, unwrap_distribution

__all__ = ["ACTIVITY_THRESHOLD", "KL_THRESHOLD", "active_units", "kl_summary", "latent_pass",
           "latent_table",
           "mutual_information"]

ACTIVITY_THRESHOLD = 0.01
# A dimension whose KL to the prior is below this (nats, averaged over points) carries no
# information about x, whatever the covariance of its encoder mean says.
KL_THRESHOLD = 0.01


def _local_pairs(model, guide, batch, num, plan: PointPlan, subsample):
    """Guide and model trace pairs with ``num`` draws (one pair in a particle plate, or one
    pair per draw), and the local latents of each: [(name, data dim, guide site, model site)]."""
    rank = plan.nesting + 1
    with torch.no_grad():
        pairs = trace_pairs(model, guide, batch, num, rank, plan.vectorized, subsample,
                            plan.data_plate, None, plan.enumerated)
    out = []
    for gtr, mtr in pairs:
        sites = []
        reversed_ = _drawn_before_its_parents(gtr, mtr)
        for name, site in gtr.nodes.items():
            if site["type"] != "sample" or site_is_subsample(site) or site["is_observed"]:
                continue
            dim = next((f.dim for f in site["cond_indep_stack"] if f.name == plan.data_plate),
                       None)
            if dim is not None and name in mtr.nodes:
                sites.append((name, dim, site, mtr.nodes[name], name in reversed_))
        out.append(sites)
    return out, rank


def _drawn_before_its_parents(guide_trace, model_trace) -> set[str]:
    """Latent sites that the guide draws before a latent the model draws before them
    (scANVI: the model draws z1, y, then z2 | z1, y; the guide draws z2 first, then y, z1
    from it). Their prior may depend on draws that depend on them, so the closed-form
    KL(q(z2 | x) || p(z2 | z1, y)) at those draws is not their share of the ELBO's KL: the
    Monte Carlo log-ratio at the joint draw is."""
    def order(trace):
        return [n for n, s in trace.nodes.items() if s["type"] == "sample"
                and not s["is_observed"] and not site_is_subsample(s)]

    model_order, guide_order = order(model_trace), order(guide_trace)
    out = set()
    for i, name in enumerate(guide_order):
        if name in model_order:
            before = set(model_order[: model_order.index(name)])
            if before & set(guide_order[i + 1:]):
                out.add(name)
    return out


def _to_kn(t: torch.Tensor, rank: int, dim: int, n: int, event_dim: int) -> torch.Tensor:
    """(K, N, D) from a per-element tensor laid out as batch (rank dims) + ``event_dim`` event
    dims of the site. A draw taken one by one has no draw dimension (nor plate dimensions left
    of its own): they are added at the left, counted from the event dims, so that its batch
    dims are not mistaken for draws (ProdLDA with batch norm in the decoder is drawn so)."""
    t = t.reshape((1,) * max(0, rank + event_dim - t.dim()) + tuple(t.shape))
    t = t.movedim(rank + dim, 1)
    t = t.reshape(t.shape[0], t.shape[1], -1)
    return t.expand(t.shape[0], n, t.shape[2]) if t.shape[1] == 1 else t


@torch.no_grad()
def latent_table(model, guide, data, *, num_samples: int = 16, data_plate: str = "data",
                 threshold: float = ACTIVITY_THRESHOLD, seed: int | None = 0,
                 chunk_size: int | None = None, engine=None,
                 progress: bool | None = False) -> pd.DataFrame:
    """KL and activity of every dimension of every local latent site.

    Parameters
    ----------
    model, guide : callable
        Pyro programs called as ``model(*data)``.
    data : tensor, ndarray, DataFrame or tuple
        N data points.
    num_samples : int
        Draws used for Monte Carlo KL (non-closed-form pairs) and for means without a closed form.
    threshold : float
        Activity threshold on Cov_x(E_q[z_d | x]) (Burda et al. 2016 use 0.01).
    chunk_size, engine, progress
        As for :func:`ppl_vae.evaluate`: the points are visited in chunks whose sums, means
        and variances are combined (Chan et al.'s pairwise update), so memory does not grow
        with N; ``engine`` shards the chunks over processes.

    Returns
    -------
    pandas.DataFrame
        One row per (site, dim): ``kl`` (nats, averaged over data points), ``activity``
        (variance over data points of the guide mean), ``active`` (bool: activity above
        ``threshold`` and KL not below ``KL_THRESHOLD``), ``method``
        (``"analytic"``, ``"monte carlo"``, ``"marginal"`` for a correlated Gaussian guide
        against a factorised prior, ``"... (whole site on dim 0)"`` for a multivariate site
        against a prior of the same event shape (its KL on dim 0, NaN on the others),
        ``"unavailable"`` (KL NaN) where none of these applies), ``scale`` (the program's own
        ``poutine.scale`` of the site, 1 when it has none: ``kl`` is in nats, and
        ``(kl * scale).sum()`` is the part of evaluate's scaled ``kl`` these sites make).
    """
    return latent_pass(model, guide, data, num_samples=num_samples, data_plate=data_plate,
                       threshold=threshold, seed=seed, chunk_size=chunk_size, engine=engine,
                       progress=progress)[0]


@torch.no_grad()
def latent_pass(model, guide, data, *, num_samples: int = 16, data_plate: str = "data",
                threshold: float = ACTIVITY_THRESHOLD, seed: int | None = 0,
                chunk_size: int | None = None, engine=None,
                progress: bool | None = False) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """:func:`latent_table` and, from the same pass, the guide mean E_q[z | x_i] of every
    point for the first local site (a DataFrame with ``point`` and ``<site>[j]`` columns, the
    2-D view of the report; None without local latents). The programs' modules run in
    evaluation mode."""
    with eval_mode(model, guide):
        return _latent_pass(model, guide, data, num_samples, data_plate, threshold, seed,
                            chunk_size, engine, progress)


def _latent_pass(model, guide, data, num_samples, data_plate, threshold, seed, chunk_size,
                 engine, progress):
    dtype, device = program_dtype(model, guide)
    batch = as_tensors(data, dtype=dtype, device=device, name="data")
    plan = plan_points(model, guide, batch, num_draws=num_samples, data_plate=data_plate,
                       chunk_size=chunk_size)

    def one(start):
        chunk, subsample = plan.chunk(batch, start)
        with seeded(chunk_seed(seed, "latent", start)):
            per_pair, rank = _local_pairs(model, guide, chunk, num_samples, plan, subsample)
        return _chunk_moments(per_pair, rank, plan.stop(start) - start)

    parts = map_chunks(one, plan.starts(), engine=engine, desc="latent", progress=progress)
    rows, means = [], None
    if parts and parts[0][1]:
        site = parts[0][1][0][0]
        values = torch.cat([p[2][site] for p in parts]).float().cpu().numpy()
        means = pd.DataFrame(values, columns=[f"{site}[{j}]" for j in range(values.shape[1])])
        means.insert(0, "point", np.arange(len(means)))
    for name, method, scale in (parts[0][1] if parts else []):
        kl = sum(p[0][name][0] for p in parts) / plan.num_points
        count, mean, m2, noise = parts[0][0][name][1:]
        for p in parts[1:]:
            count, mean, m2 = _combine((count, mean, m2), p[0][name][1:4])
            noise = noise + p[0][name][4]
        activity = ((m2 / count) - noise / count).clamp(min=0.0) if count > 1 else 0 * mean
        for d in range(activity.numel()):
            value = float(kl[d]) if kl.numel() == activity.numel() else float("nan")
            informative = not value < KL_THRESHOLD  # NaN (KL unavailable) leaves it to activity
            rows.append({"site": name, "dim": d, "kl": value, "activity": float(activity[d]),
                         "active": bool(activity[d] > threshold) and informative,
                         "method": method, "scale": scale})
    if not rows:
        return pd.DataFrame(columns=["site", "dim", "kl", "activity", "active", "method",
                                     "scale"]), None
    return pd.DataFrame(rows), means


def _chunk_moments(per_pair, rank, n):
    """Per local site of one chunk: (sum over points of the KL per dim, count, mean and sum
    of squared deviations of the guide means over points, sum of their Monte Carlo noise);
    [(site, KL method)]; and the guide means per point."""
    stats, methods, point_means = {}, [], {}
    for name, dim, *_ in per_pair[0]:
        kls, means, noises = [], [], []
        for sites in per_pair:  # one pair, or one per draw when drawn one by one
            _, _, g, m, reversed_ = next(s for s in sites if s[0] == name)
            q, _, _ = unwrap_distribution(g["fn"])
            p, _, _ = unwrap_distribution(m["fn"])
            kl, method = (_joint_draw_kl(q, p, g, m) if reversed_
                          else _kl_per_dim(q, p, g["value"]))
            event = len(g["fn"].event_shape)
            kls.append(_to_kn(kl, rank, dim, n, event)[:, :n].double())  # [:n]: drop padding
            mean, noise = _mean_and_noise(q, g["value"], rank, dim, n, event)
            means.append(mean[:n])
            noises.append(noise)
        kl = torch.cat(kls).mean(0).sum(0)  # (D,): K-average, summed over the chunk's points
        mean = torch.stack(means).mean(0)  # (N_chunk, D)
        center = mean.mean(0)
        stats[name] = (kl, n, center, ((mean - center) ** 2).sum(0), sum(noises) / len(noises))
        methods.append((name, method, float(torch.as_tensor(own_scale(g)).double().mean())))
        point_means[name] = mean
    return stats, methods, point_means


def _combine(a, b):
    """Count, mean and sum of squared deviations of two groups combined (Chan et al. 1979)."""
    (na, ma, m2a), (nb, mb, m2b) = a, b
    n = na + nb
    delta = mb - ma
    return n, ma + delta * (nb / n), m2a + m2b + delta**2 * (na * nb / n)


def _kl_per_dim(q, p, z):
    """Elementwise KL(q_d || p_d) (closed form, else Monte Carlo at the draws z), laid out like
    z. A multivariate q (correlated or flow guide) against a factorised prior gets the KL of
    each dimension's Gaussian marginal when q has a mean and variance, else NaN."""
    batch_shape = z.shape[: z.dim() - len(q.event_shape)]
    if not q.event_shape and not p.event_shape:
        try:
            kl = torch.distributions.kl_divergence(q, p)
            return kl.expand(torch.broadcast_shapes(kl.shape, batch_shape)), "analytic"
        except NotImplementedError:
            return q.log_prob(z) - p.log_prob(z), "monte carlo"
    if not p.event_shape:
        try:
            marginal = torch.distributions.Normal(q.mean, q.variance.sqrt())
            kl = torch.distributions.kl_divergence(marginal, p)
            return kl.expand(z.shape), "marginal"
        except (NotImplementedError, RuntimeError):
            pass
    if q.event_shape == p.event_shape:
        return _whole_site_kl(q, p, z)
    return torch.full(z.shape, float("nan"), dtype=z.dtype, device=z.device), "unavailable"


def _joint_draw_kl(q, p, guide_site, model_site):
    """Monte Carlo log q - log p at the joint draw, per dimension where both factorise, else
    the whole site's on dimension 0 (see :func:`_drawn_before_its_parents`)."""
    z = guide_site["value"]
    if not q.event_shape and not p.event_shape:
        return q.log_prob(z) - p.log_prob(z), "monte carlo (prior depends on later draws)"
    total = guide_site["fn"].log_prob(z) - model_site["fn"].log_prob(z)
    out = torch.full(z.shape, float("nan"), dtype=z.dtype, device=z.device)
    flat = out.reshape(*total.shape, -1)
    flat[..., 0] = total
    return out, "monte carlo (prior depends on later draws; whole site on dim 0)"


def _whole_site_kl(q, p, z):
    """KL of a multivariate site that has no per-dimension split (a one-hot label, a correlated
    Gaussian against a correlated prior): the site's whole KL (closed form, else Monte Carlo at
    z) on its first dimension, NaN on the others, so that the table's sum over dimensions is
    the site's KL and no dimension is called uninformative on a share it does not have."""
    try:
        total, method = torch.distributions.kl_divergence(q, p), "analytic (whole site on dim 0)"
    except NotImplementedError:
        total, method = q.log_prob(z) - p.log_prob(z), "monte carlo (whole site on dim 0)"
    out = torch.full(z.shape, float("nan"), dtype=z.dtype, device=z.device)
    flat = out.reshape(*z.shape[: z.dim() - len(q.event_shape)], -1)
    flat[..., 0] = total.expand(flat.shape[:-1])
    return out, method


def _mean_and_noise(q, z, rank, dim, n, event_dim):
    """E_q[z_d | x_i] per point, shape (N, D), and the sum over points of its Monte Carlo
    variance. Without a closed-form mean the K draws' average is used, and its variance
    (Var_q / K) is subtracted from the activity so that noise does not make collapsed units
    look active."""
    try:
        return _to_kn(q.mean.expand(z.shape), rank, dim, n, event_dim).mean(0).double(), 0.0
    except (NotImplementedError, RuntimeError):
        draws = _to_kn(z, rank, dim, n, event_dim)[:, :n].double()  # (K, N, D)
        noise = draws.var(0).sum(0) / draws.shape[0] if draws.shape[0] > 1 else 0.0
        return draws.mean(0), noise


def active_units(table: pd.DataFrame) -> int:
    """Number of active dimensions in a :func:`latent_table`."""
    return int(table["active"].sum())


@torch.no_grad()
def mutual_information(model, guide, data, *, data_plate: str = "data", max_points: int = 1000,
                       seed: int | None = 0) -> float:
    """Estimate I_q(x; z) in nats over the local latents (one draw per point).

    With z_i ~ q(z | x_i): I = mean_i [log q(z_i | x_i) - log mean_j q(z_i | x_j)], z_i all
    local sites of point i together (so I <= log N however many sites). This needs
    q(z_i | x_j) for all pairs, O(N^2) density evaluations, so at most ``max_points`` points are
    used. The programs' modules run in eval mode. Returns NaN when the guide's local sites do not have one batch dimension per data
    point or their density cannot be evaluated pairwise (conditional flows).

    Raises
    ------
    ValueError
        If the guide has no local latent site in ``data_plate``: I(x; z) does not apply.
    """
    dtype, device = program_dtype(model, guide)
    batch = as_tensors(data, dtype=dtype, device=device, name="data")
    plan = plan_points(model, guide, batch, num_draws=1, data_plate=data_plate)
    data_plate = plan.data_plate
    # The first max_points points, or the first chunk where the programs fix its points.
    batch, subsample = plan.first_points(batch, max_points)
    program = guide if subsample is None else FixSubsample(data_plate, subsample)(guide)
    with seeded(seed), pyro.validation_enabled(False), eval_mode(model, guide):
        gtr = poutine.trace(program).get_trace(*batch)
    sites = []
    for site in gtr.nodes.values():
        if site["type"] != "sample" or site_is_subsample(site) or site["is_observed"]:
            continue
        frames = [f for f in site["cond_indep_stack"] if f.vectorized]
        if any(f.name == data_plate for f in frames):
            sites.append((site, frames))
    if not sites:
        raise ValueError(f"mutual information does not apply: the guide has no local latent "
                         f"site inside the plate {data_plate!r} (no per-point code z)")
    terms = _joint_information(sites)
    if terms is None:
        return float("nan")
    if terms.shape[0] < 2:
        raise ValueError("data: the mutual information needs at least 2 data points")
    return float(terms.double().mean())


def _joint_information(sites, block: int = 128) -> torch.Tensor | None:
    """log q(z_i | x_i) - log mean_j q(z_i | x_j) per point i, z_i all local sites of point
    i together, computed in blocks of i (memory block x N, not N x N); None where q cannot be
    evaluated pairwise.

    The pairwise log q(z_i | x_j) is the sum over sites of each site's density at x_j's
    parameters. Summing per-site informations instead would count each site up to log N
    (scANVI's z1, y, z2: up to 3 log N). The own term j = i is one of the N in the mean, so the
    estimate cannot exceed log N. A site whose parameters depend on an earlier site's draw
    (z1 from z2 and y) is scored at x_j's parameters given x_j's own draws of those sites."""
    n = sites[0][0]["value"].shape[0]
    for site, frames in sites:
        if len(frames) != 1 or site["fn"].batch_shape != (n,):
            return None
    terms = []
    for i in range(0, n, block):
        pair = 0.0
        for site, _ in sites:
            try:  # (block, N_j): q(z_i | x_j)
                pair = pair + site["fn"].log_prob(site["value"][i : i + block].unsqueeze(1))
            except (RuntimeError, ValueError):
                return None  # e.g. a conditional flow, whose transform cannot broadcast
        own = torch.diagonal(pair, offset=i)
        terms.append(own - (torch.logsumexp(pair, dim=1) - math.log(n)))
    return torch.cat(terms)


def kl_summary(table: pd.DataFrame) -> dict:
    """Total KL, active units and the number of dimensions of a :func:`latent_table`."""
    return {"kl_total": float(table["kl"].sum(min_count=1)), "active_units": active_units(table),
            "num_dims": int(len(table)), "kl_max_dim": float(table["kl"].max())
            if len(table) else float("nan")}

