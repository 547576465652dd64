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

import pandas as pd
import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from ppl_vae.data.tensors import as_tensors
from ppl_vae.evaluation.pointwise import in_draw_plate
from ppl_vae.programs.util import max_plate_nesting, program_dtype

__all__ = ["ACTIVITY_THRESHOLD", "KL_THRESHOLD", "active_units", "kl_summary", "latent_table",
           "mutual_information"]

ACTIVITY_THRESHOLD = 0.01
# A dimension whose KL to the prior is below this (nats, averaged over points) carries no
# information about x, whatever the covariance of its encoder mean says.
KL_THRESHOLD = 0.01


def _unwrap(fn):
    """Strip Independent / expand wrappers down to the distribution that holds the parameters,
    counting the dims that Independent reinterpreted."""
    reinterpreted = 0
    while True:
        if isinstance(fn, torch.distributions.Independent):
            reinterpreted += fn.reinterpreted_batch_ndims
            fn = fn.base_dist
        elif isinstance(fn, pyro.distributions.ExpandedDistribution):
            fn = fn.base_dist
        else:
            return fn, reinterpreted


def _local_pairs(model, guide, batch, num, data_plate):
    """Guide and model traces with ``num`` draws in a particle plate, and the local latents."""
    nesting = max_plate_nesting(model, guide, batch)
    rank = nesting + 1
    with torch.no_grad(), pyro.validation_enabled(False):
        gtr = poutine.trace(in_draw_plate(guide, num, rank)).get_trace(*batch)
        mtr = poutine.trace(
            poutine.replay(in_draw_plate(model, num, rank), trace=gtr)
        ).get_trace(*batch)
    sites = []
    for name, site in gtr.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site) or site["is_observed"]:
            continue
        dim = next((f.dim for f in site["cond_indep_stack"] if f.name == data_plate), None)
        if dim is not None and name in mtr.nodes:
            sites.append((name, dim, site, mtr.nodes[name]))
    return sites, rank


def _to_kn(t: torch.Tensor, rank: int, dim: int, n: int) -> torch.Tensor:
    """(K, N, D) from a per-element tensor laid out as batch (rank dims) + event dims."""
    t = t.reshape((1,) * max(0, rank - t.dim()) + tuple(t.shape))
    t = t.movedim(rank + dim, 1)
    t = t.reshape(t.shape[0], t.shape[1], -1)
    return t.expand(t.shape[0], n, t.shape[2]) if t.shape[1] == 1 else t


@torch.no_grad()
def latent_table(model, guide, data, *, num_samples: int = 16, data_plate: str = "data",
                 threshold: float = ACTIVITY_THRESHOLD, seed: int | None = 0) -> pd.DataFrame:
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

    Returns
    -------
    pandas.DataFrame
        One row per (site, dim): ``kl`` (nats, averaged over data points), ``activity``
        (variance over data points of the guide mean), ``active`` (bool: activity above
        ``threshold`` and KL not below ``KL_THRESHOLD``), ``method``
        (``"analytic"``, ``"monte carlo"``, ``"marginal"`` for a correlated Gaussian guide
        against a factorised prior, ``"unavailable"`` (KL NaN) where none of these applies).
    """
    dtype, device = program_dtype(model, guide)
    batch = as_tensors(data, dtype=dtype, device=device, name="data")
    n = batch[0].shape[0]
    gen_state = torch.get_rng_state()
    if seed is not None:
        torch.manual_seed(seed)
    try:
        sites, rank = _local_pairs(model, guide, batch, num_samples, data_plate)
    finally:
        if seed is not None:
            torch.set_rng_state(gen_state)
    rows = []
    for name, dim, gsite, msite in sites:
        q, _ = _unwrap(gsite["fn"])
        p, _ = _unwrap(msite["fn"])
        z = gsite["value"]
        kl, method = _kl_per_dim(q, p, z)
        kl = _to_kn(kl, rank, dim, n).mean(0).mean(0)
        activity = _activity(q, z, rank, dim, n)
        for d in range(activity.numel()):
            value = float(kl[d]) if kl.numel() == activity.numel() else float("nan")
            informative = not value < KL_THRESHOLD  # NaN (KL unavailable) leaves it to activity
            rows.append({"site": name, "dim": d, "kl": value, "activity": float(activity[d]),
                         "active": bool(activity[d] > threshold) and informative,
                         "method": method})
    if not rows:
        return pd.DataFrame(columns=["site", "dim", "kl", "activity", "active", "method"])
    return pd.DataFrame(rows)


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
    return torch.full(z.shape, float("nan"), dtype=z.dtype, device=z.device), "unavailable"


def _activity(q, z, rank, dim, n) -> torch.Tensor:
    """Cov_x(E_q[z_d | x]) per dimension, shape (D,). Without a closed-form mean the K draws'
    average is used, minus its own Monte Carlo variance (mean_x Var_q / K) so that noise does not
    make collapsed units look active."""
    try:
        mean = _to_kn(q.mean.expand(z.shape), rank, dim, n).mean(0).double()
        noise = 0.0
    except (NotImplementedError, RuntimeError):
        draws = _to_kn(z, rank, dim, n).double()  # (K, N, D)
        mean = draws.mean(0)
        noise = draws.var(0).mean(0) / draws.shape[0] if draws.shape[0] > 1 else 0.0
    if n < 2:
        return torch.zeros(mean.shape[1], dtype=torch.float64)
    return (mean.var(0, unbiased=False) - noise).clamp(min=0.0)


def active_units(table: pd.DataFrame) -> int:
    """Number of active dimensions in a :func:`latent_table`."""
    return int(table["active"].sum())


@torch.no_grad()
def mutual_information(model, guide, data, *, data_plate: str = "data", max_points: int = 1000,
                       seed: int | None = 0) -> float:
    """Estimate I_q(x; z) in nats over the local latents (one draw per point).

    With z_i ~ q(z | x_i): I = mean_i [log q(z_i | x_i) - log mean_j q(z_i | x_j)]. This needs
    q(z_i | x_j) for all pairs, O(N^2) density evaluations, so at most ``max_points`` points are
    used. Returns NaN when the guide's local sites do not have one batch dimension per data
    point or their density cannot be evaluated pairwise (conditional flows).

    Raises
    ------
    ValueError
        If the guide has no local latent site in ``data_plate``: I(x; z) does not apply.
    """
    dtype, device = program_dtype(model, guide)
    batch = as_tensors(data, dtype=dtype, device=device, name="data")
    batch = tuple(t[:max_points] for t in batch)
    n = batch[0].shape[0]
    if n < 2:
        raise ValueError("data: the mutual information needs at least 2 data points")
    gen_state = torch.get_rng_state()
    if seed is not None:
        torch.manual_seed(seed)
    try:
        with pyro.validation_enabled(False):
            gtr = poutine.trace(guide).get_trace(*batch)
    finally:
        if seed is not None:
            torch.set_rng_state(gen_state)
    total = None
    for site in gtr.nodes.values():
        if site["type"] != "sample" or site_is_subsample(site) or site["is_observed"]:
            continue
        frames = [f for f in site["cond_indep_stack"] if f.vectorized]
        if not any(f.name == data_plate for f in frames):
            continue
        fn = site["fn"]
        if len(frames) != 1 or fn.batch_shape != (n,):
            return float("nan")
        z = site["value"]  # (N, *event)
        try:
            pair = fn.log_prob(z.unsqueeze(1))  # (N_i, N_j): q(z_i | x_j)
        except (RuntimeError, ValueError):
            return float("nan")  # e.g. a conditional flow, whose transform cannot broadcast
        own = torch.diagonal(pair)
        agg = torch.logsumexp(pair, dim=1) - math.log(n)
        term = own - agg
        total = term if total is None else total + term
    if total is None:
        raise ValueError(f"mutual information does not apply: the guide has no local latent "
                         f"site inside the plate {data_plate!r} (no per-point code z)")
    # Cross-site terms would need the joint aggregate; one site (the usual case) is exact.
    return float(total.double().mean())


def kl_summary(table: pd.DataFrame) -> dict:
    """Total KL, active units and the number of dimensions of a :func:`latent_table`."""
    return {"kl_total": float(table["kl"].sum(min_count=1)), "active_units": active_units(table),
            "num_dims": int(len(table)), "kl_max_dim": float(table["kl"].max())
            if len(table) else float("nan")}

