"""The inference gap of an amortized guide and its split (Cremer, Li & Duvenaud 2018,
"Inference suboptimality in variational autoencoders", ICML).

log p(x) - ELBO(q_amortized) = [log p(x) - ELBO(q*)] + [ELBO(q*) - ELBO(q_amortized)]
                             =  approximation gap   +  amortization gap

where q* is the best member of the guide's family for that data point. q* is found by
optimising free per-point copies of the guide's distribution parameters, starting from the
encoder's output; log p(x) is estimated by the importance-weighted bound (Burda et al. 2016)
with many draws from the better of the two guides.
"""

from __future__ import annotations

import math

import pandas as pd
import pyro
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch.distributions import biject_to

from ppl_vae.data.tensors import as_tensors, check_finite
from ppl_vae.evaluation.pointwise import draw
from ppl_vae.programs.util import max_plate_nesting, program_dtype

__all__ = ["inference_gaps", "log_evidence", "RefinedGuide"]


def _logmeanexp(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    return torch.logsumexp(x, dim=dim) - math.log(x.shape[dim])


def log_evidence(model, guide, data, *, num_samples: int = 1000, data_plate: str = "data",
                 seed: int | None = 0) -> pd.DataFrame:
    """Per data point: importance-weighted log p(x_i), the ELBO and the ELBO gap.

    Returns
    -------
    pandas.DataFrame
        One row per data point: ``log_px`` = log mean_k p(x_i, z_k) / q(z_k | x_i) with K =
        ``num_samples`` (a lower bound that tightens with K), ``elbo`` = mean_k log ratio and
        ``elbo_gap`` = log_px - elbo (nats).
    """
    dtype, device = program_dtype(model, guide)
    batch = as_tensors(data, dtype=dtype, device=device, name="data")
    check_finite(batch)
    with _seeded(seed):
        d = draw(model, guide, batch, num_samples=num_samples, data_plate=data_plate)
    lw = d.log_weights.double()
    iw, elbo = _logmeanexp(lw, 0), lw.mean(0)
    return pd.DataFrame({"log_px": iw.cpu().numpy(), "elbo": elbo.cpu().numpy(),
                         "elbo_gap": (iw - elbo).cpu().numpy()})


class _Seeded:
    def __init__(self, seed):
        self.seed = seed

    def __enter__(self):
        self.state = torch.get_rng_state()
        if self.seed is not None:
            torch.manual_seed(self.seed)

    def __exit__(self, *exc):
        if self.seed is not None:
            torch.set_rng_state(self.state)


def _seeded(seed):
    return _Seeded(seed)


class RefinedGuide(Messenger):
    """Replace the distribution of every local guide site by one with free parameters.

    The parameters start at the values the guide produced on the batch and are held as
    unconstrained tensors (``self.free``), one copy per data point, so optimising them fits
    q separately for each point. Global sites are left to the guide.
    """

    def __init__(self, init_trace, data_plate: str):
        super().__init__()
        self.specs, self.free = {}, {}
        for name, site in init_trace.nodes.items():
            if site["type"] != "sample" or site_is_subsample(site) or site["is_observed"]:
                continue
            if not any(f.name == data_plate for f in site["cond_indep_stack"]):
                continue
            fn, reinterpreted = site["fn"], 0
            while isinstance(fn, (torch.distributions.Independent,
                                  pyro.distributions.ExpandedDistribution)):
                if isinstance(fn, torch.distributions.Independent):
                    reinterpreted += fn.reinterpreted_batch_ndims
                fn = fn.base_dist
            if not fn.has_rsample:
                raise ValueError(f"site {name!r}: its guide distribution {type(fn).__name__} has "
                                 "no reparameterised sampler, so it cannot be refined by gradient")
            params = {}
            full = site["fn"].batch_shape + site["fn"].event_shape
            for key, constraint in fn.arg_constraints.items():
                if key not in fn.__dict__ or not isinstance(fn.__dict__[key], torch.Tensor):
                    continue  # lazily derived parametrisations (probs vs logits) are skipped
                value = fn.__dict__[key].detach()
                if value.dim() > 0 and value.shape != full and len(fn.event_shape) == 0:
                    value = value.expand(full)
                transform = biject_to(constraint)
                free = transform.inv(value).clone().requires_grad_(True)
                params[key] = (free, transform)
                self.free[f"{name}.{key}"] = free
            self.specs[name] = (type(fn), params, reinterpreted)

    def _pyro_sample(self, msg):
        spec = self.specs.get(msg["name"])
        if spec is None or msg["is_observed"]:
            return
        cls, params, reinterpreted = spec
        fn = cls(**{k: t(free) for k, (free, t) in params.items()}, validate_args=False)
        if reinterpreted:
            fn = fn.to_event(reinterpreted)
        shape = msg["fn"].batch_shape
        msg["fn"] = fn.expand(torch.broadcast_shapes(shape, fn.batch_shape))

    def parameters(self):
        return list(self.free.values())


def inference_gaps(model, guide, data, *, num_points: int = 32, steps: int = 300,
                   lr: float = 0.02, num_particles: int = 16, num_samples: int = 1000,
                   data_plate: str = "data", seed: int | None = 0) -> pd.DataFrame:
    """Split each point's inference gap into amortization and approximation parts.

    Parameters
    ----------
    model, guide : callable
        Trained programs. The guide's local sites must have reparameterised distributions.
    data : tensor, ndarray, DataFrame or tuple
        Data; the first ``num_points`` rows are used (refinement costs ``steps`` gradient steps).
    steps, lr, num_particles : int, float, int
        Adam steps, initial learning rate (decayed exponentially to lr / 100) and vectorized
        ELBO particles of the per-point refinement.
    num_samples : int
        Draws for the final ELBO and importance-weighted estimates.

    Returns
    -------
    pandas.DataFrame
        One row per point: ``elbo_amortized``, ``elbo_refined``, ``log_px`` (the IWAE estimate
        with the refined q, the one closest to the posterior, hence the least noisy),
        ``amortization_gap`` = elbo_refined - elbo_amortized, ``approximation_gap`` = log_px -
        elbo_refined, ``inference_gap`` = their sum (nats). Where the refined ELBO came out
        below the amortized one (a noisy optimiser), the amortized q is kept as q*.
    """
    dtype, device = program_dtype(model, guide)
    batch = as_tensors(data, dtype=dtype, device=device, name="data")
    check_finite(batch)
    batch = tuple(t[:num_points] for t in batch)
    with _seeded(seed):
        nesting = max_plate_nesting(model, guide, batch)
        with torch.no_grad(), pyro.validation_enabled(False):
            init = poutine.trace(guide).get_trace(*batch)
        refine = RefinedGuide(init, data_plate)
        if not refine.specs:
            raise ValueError(f"guide: no local latent sites inside the plate {data_plate!r}")
        refined_guide = refine(guide)
        loss = Trace_ELBO(num_particles=num_particles, vectorize_particles=True,
                          max_plate_nesting=nesting)
        optim = torch.optim.Adam(refine.parameters(), lr=lr)
        # Adam's steps do not shrink with the gradient, so near the optimum a fixed rate keeps
        # jittering around it; decaying to lr / 100 lets the noisy ELBO gradients settle.
        decay = torch.optim.lr_scheduler.ExponentialLR(optim, gamma=0.01 ** (1 / max(1, steps)))
        params = refine.parameters()
        for _ in range(steps):
            value = loss.differentiable_loss(model, refined_guide, *batch)
            # Gradients only for the per-point copies: the trained programs stay untouched.
            for p, g in zip(params, torch.autograd.grad(value, params), strict=True):
                p.grad = g
            optim.step()
            decay.step()
        amortized = draw(model, guide, batch, num_samples=num_samples, data_plate=data_plate,
                         nesting=nesting).log_weights.double()
        refined = draw(model, refined_guide, batch, num_samples=num_samples,
                       data_plate=data_plate, nesting=nesting).log_weights.double()
    elbo_a, elbo_r = amortized.mean(0), refined.mean(0)
    iw_a, iw_r = _logmeanexp(amortized, 0), _logmeanexp(refined, 0)
    # Where refinement did not help (a noisy optimiser), the amortized q stays the best one.
    better = elbo_r >= elbo_a
    elbo_r = torch.where(better, elbo_r, elbo_a)
    log_px = torch.where(better, iw_r, iw_a)
    table = pd.DataFrame({
        "elbo_amortized": elbo_a.numpy(), "elbo_refined": elbo_r.numpy(), "log_px": log_px.numpy(),
    })
    table["amortization_gap"] = table["elbo_refined"] - table["elbo_amortized"]
    table["approximation_gap"] = table["log_px"] - table["elbo_refined"]
    table["inference_gap"] = table["log_px"] - table["elbo_amortized"]
    return table
