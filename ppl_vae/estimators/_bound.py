"""Log importance weights on Pyro's traces, shared by the multi-sample bounds (``iwae``,
``vimco``, ``dreg``).

For every data point x_i and K particles z_ik ~ q(z | x_i), log w_ik = log p(x_i, z_ik) -
log q(z_ik | x_i). The sites' log-densities are summed over every plate that not all sites share
(``pyro.infer.util.get_dependent_plate_dims``), so the plates every site shares (the data plate,
and the vectorized particle plate) stay as dimensions: one bound per data point. When every site
carries the same scale (the data plate's N / B), the weights are built from *unscaled* densities
and the scale multiplies the bound outside the log-mean-exp; when scales differ (global latents
beside local ones) the scaled densities enter and the bound is the joint one over the batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from pyro.distributions.util import is_identically_zero, scale_and_mask
from pyro.infer.util import get_dependent_plate_dims

__all__ = [
    "ParticleTerms", "particle_terms", "stack_particles", "log_mean_exp", "leave_one_out_bound",
    "zero_like",
]


@dataclass
class ParticleTerms:
    """Per-particle sums over sites, each shaped like the shared plates (program layout).

    Attributes
    ----------
    log_p : tensor
        sum of the model's log-densities (latent and observed sites, ``pyro.factor`` included).
    log_q : tensor
        sum of the guide's log-densities (latent sites and the guide's ``pyro.factor`` sites).
    guide_factors : tensor
        the part of ``log_q`` from the guide's observed sites (``pyro.factor``).
    score : tensor
        sum of the score-function parts of the guide's non-reparameterized latent sites
        (``score_parts.score_function``; zero when every site has ``rsample``).
    has_score : bool
        Whether some guide site has a score-function part.
    scale : float
        The factor outside the log-mean-exp (the common scale; 1.0 when scales differ).

    All are tensors on the sites' device and dtype, or all the number 0 when the programs have
    no sample site.
    """

    log_p: torch.Tensor | float
    log_q: torch.Tensor | float
    guide_factors: torch.Tensor | float
    score: torch.Tensor | float
    has_score: bool
    scale: float

    @property
    def log_w(self):
        return self.log_p - self.log_q

    @property
    def empty(self) -> bool:
        return not isinstance(self.log_w, torch.Tensor)


def _sites(trace, latent_only=False):
    for site in trace.nodes.values():
        if site["type"] == "sample" and not (latent_only and site["is_observed"]):
            yield site


def _common_scale(sites) -> float | None:
    """The scale every site shares, or ``None`` when they differ (e.g. global + local sites)."""
    scales = set()
    for site in sites:
        scale = site["scale"]
        if isinstance(scale, torch.Tensor):
            if scale.numel() != 1:
                return None
            scale = float(scale)
        scales.add(float(scale))
    return scales.pop() if len(scales) == 1 else None


def _summed(lp, sum_dims):
    if not isinstance(lp, torch.Tensor):
        return lp
    dims = [d for d in sum_dims if -d <= lp.dim()]
    return lp.sum(dims, keepdim=True) if dims else lp


def particle_terms(model_trace, guide_trace, fixed_trace=None) -> ParticleTerms:
    """log p, log q and the score parts of one particle's traces (see :class:`ParticleTerms`).

    ``fixed_trace`` (optional): a replay of the guide; when given, ``log_q`` is read from it
    instead (its sites' names must match the guide's latent sites).
    """
    sites = list(_sites(model_trace)) + list(_sites(guide_trace))
    sum_dims = get_dependent_plate_dims(sites)
    scale = _common_scale(sites)

    def density(site):
        if scale is None:
            return site["log_prob"]  # mixed scales: the joint bound of the batch, scales inside
        return scale_and_mask(site["unscaled_log_prob"], 1.0, site["mask"])

    log_p = sum((_summed(density(s), sum_dims) for s in _sites(model_trace)), 0.0)
    guide = fixed_trace if fixed_trace is not None else guide_trace
    log_q, factors = 0.0, 0.0
    for site in _sites(guide):
        lp = _summed(density(site), sum_dims)
        log_q = log_q + lp
        if site["is_observed"]:
            factors = factors + lp
    score, has_score = 0.0, False
    for site in _sites(guide_trace, latent_only=True):
        # Pyro leaves score_function unscaled (ScoreParts.scale_and_mask): the scale belongs to
        # the cost it multiplies, here the bound, which is scaled outside the log-mean-exp.
        part = site["score_parts"].score_function
        if is_identically_zero(part):
            continue
        score, has_score = score + _summed(part, sum_dims), True
    like = next((t for t in (log_p, log_q) if isinstance(t, torch.Tensor)), None)
    if like is not None:  # numbers as 0-dim tensors on the sites' device and dtype
        log_p, log_q, factors, score = (
            t if isinstance(t, torch.Tensor) else like.new_zeros(()) + t
            for t in (log_p, log_q, factors, score)
        )
    return ParticleTerms(log_p, log_q, factors, score, has_score,
                         1.0 if scale is None else scale)


def stack_particles(tensors, particle_dim: int | None, shape=()) -> torch.Tensor:
    """Particles along dimension 0: the vectorized particle plate's dimension moved there, or
    the looped particles' tensors stacked (``particle_dim=None``), each broadcast to ``shape``
    (the log-weights' shape, so that a term that is 0 for every particle lines up)."""
    if particle_dim is None:
        shape = torch.broadcast_shapes(shape, *(t.shape for t in tensors))
        return torch.stack([t.expand(shape) for t in tensors])
    (t,) = tensors
    if t.dim() < -particle_dim:
        t = t.reshape((1,) * (-particle_dim - t.dim()) + t.shape)
    return t.movedim(particle_dim, 0)


def log_mean_exp(log_w: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """log (1/K) sum_k exp(log_w[k]) along ``dim`` (stable): the importance-weighted average,
    shared by the estimators, the evaluation and the diagnostics."""
    return torch.logsumexp(log_w, dim=dim) - math.log(log_w.shape[dim])


def leave_one_out_bound(log_w: torch.Tensor) -> torch.Tensor:
    """VIMCO's baselines (Mnih & Rezende 2016, eq. 9), shape (K, ...) like ``log_w``.

    Entry k is the bound with particle k's log-weight replaced by the mean of the other K - 1
    log-weights (their geometric mean as a stand-in for w_k): a function of the other particles
    only, so subtracting it from particle k's learning signal keeps the gradient unbiased.
    Costs K^2 per data point (one K x K matrix, no cancellation-prone subtraction of weights).
    """
    k = log_w.shape[0]
    if k < 2:
        raise ValueError("a leave-one-out baseline needs K >= 2 particles")
    others = (log_w.sum(0, keepdim=True) - log_w) / (k - 1)
    diagonal = torch.eye(k, dtype=torch.bool, device=log_w.device)
    diagonal = diagonal.reshape((k, k) + (1,) * (log_w.dim() - 1))
    replaced = torch.where(diagonal, others.unsqueeze(1), log_w.unsqueeze(0))
    return torch.logsumexp(replaced, dim=1) - math.log(k)


def zero_like(args) -> torch.Tensor:
    """A 0-dim zero on the device (and floating dtype) of the programs' first tensor argument:
    the loss of programs without a sample site."""
    like = next((a for a in args if isinstance(a, torch.Tensor)), None)
    if like is None:
        return torch.zeros(())
    if not like.is_floating_point():
        return torch.zeros((), device=like.device)
    return like.new_zeros(())
