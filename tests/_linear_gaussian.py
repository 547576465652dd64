"""A linear-Gaussian model and guide whose ELBO gradient is known in closed form (test helper).

Model: z_i ~ N(0, I_D), x_i | z_i ~ N(W z_i + b, sigma^2 I_P), i = 1..N, plate "data".
Guide: q(z_i | x_i) = N(A x_i + c, diag(exp(log_s))^2).

ELBO = sum_i E_q[log p(x_i | z_i)] - KL(q(z_i | x_i) || p(z_i)), with
E_q[log p(x_i | z)] = -(|x_i - W m_i - b|^2 + sum_jd W_jd^2 s_d^2) / (2 sigma^2) - P/2 log(2 pi sigma^2)
KL = 1/2 sum_d (s_d^2 + m_id^2 - 1 - 2 log s_d),
so autograd of this expression gives the exact gradient every estimator must match in mean.

:class:`LinearGaussian` is the same family with random W: z ~ N(0, I_L), x | z ~ N(W z + b, s^2 I_D),
with its exact posterior and evidence (the evaluation tests use it).
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import ELBO

from ppl_vae.estimators.registry import make_elbo
from ppl_vae.estimators.score import score_function_only

SIGMA = 0.7
PARAMS = ("W", "b", "A", "c", "log_s")
GUIDE_PARAMS = ("A", "c", "log_s")


def setup(dtype=torch.float64, n=4, exact_posterior=False):
    """Data and initial parameter values. W has orthogonal columns, so the exact posterior is
    diagonal and the guide family contains it (``exact_posterior=True`` starts there)."""
    gen = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(3, 2, generator=gen, dtype=torch.float64))
    W = (q * torch.tensor([1.5, 0.6], dtype=torch.float64)).to(dtype)
    b = torch.tensor([0.3, -0.2, 0.1], dtype=dtype)
    x = torch.randn(n, 3, generator=gen, dtype=torch.float64).to(dtype) * 1.5
    if exact_posterior:
        lam = (W * W).sum(0)
        cov = 1.0 / (1.0 + lam / SIGMA**2)
        A = cov[:, None] * W.T / SIGMA**2
        init = {"W": W, "b": b, "A": A, "c": -A @ b, "log_s": 0.5 * cov.log()}
    else:
        init = {"W": W, "b": b, "A": 0.2 * torch.ones(2, 3, dtype=dtype),
                "c": torch.tensor([0.1, -0.3], dtype=dtype),
                "log_s": torch.tensor([-0.4, 0.2], dtype=dtype)}
    return x, init


def make_programs(init):
    def model(x):
        W, b = pyro.param("W", init["W"].clone()), pyro.param("b", init["b"].clone())
        with pyro.plate("data", x.shape[0]):
            prior = dist.Normal(x.new_zeros(2), x.new_ones(2)).to_event(1)
            z = pyro.sample("z", prior)
            pyro.sample("x", dist.Normal(z @ W.T + b, SIGMA).to_event(1), obs=x)

    def guide(x):
        A, c = pyro.param("A", init["A"].clone()), pyro.param("c", init["c"].clone())
        log_s = pyro.param("log_s", init["log_s"].clone())
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x @ A.T + c, log_s.exp()).to_event(1))

    return model, guide


def exact_gradient(x, init) -> torch.Tensor:
    """Gradient of -ELBO with respect to PARAMS at ``init``, flattened (float64)."""
    return exact_loss_and_gradient(x, init)[1]


def log_evidence(x, init) -> float:
    """log p(x) = sum_i log N(x_i; b, W W^T + sigma^2 I) (float64)."""
    W, b = init["W"].double(), init["b"].double()
    cov = W @ W.T + SIGMA**2 * torch.eye(3, dtype=torch.float64)
    return float(torch.distributions.MultivariateNormal(b, cov).log_prob(x.double()).sum())


def exact_loss_and_gradient(x, init):
    """(-ELBO as a float, its gradient with respect to PARAMS flattened), float64."""
    p = {k: init[k].double().clone().requires_grad_(True) for k in PARAMS}
    xd = x.double()
    m = xd @ p["A"].T + p["c"]
    s2 = (2 * p["log_s"]).exp()
    resid = xd - m @ p["W"].T - p["b"]
    recon = (-(resid**2).sum(1) - (p["W"] ** 2 @ s2).sum()) / (2 * SIGMA**2) \
        - 1.5 * math.log(2 * math.pi * SIGMA**2)
    kl = 0.5 * (s2 + m**2 - 1 - 2 * p["log_s"]).sum(1)
    loss = -(recon - kl).sum()
    grads = torch.autograd.grad(loss, [p[k] for k in PARAMS])
    return float(loss.detach()), torch.cat([g.reshape(-1) for g in grads])


def param_slices(init) -> dict:
    out, start = {}, 0
    for k in PARAMS:
        out[k] = slice(start, start + init[k].numel())
        start += init[k].numel()
    return out


def gradient_draws(estimator, x, init, *, calls, particles, loss_fn=None):
    """``calls`` independent gradient estimates, each averaging ``particles`` vectorized draws.

    Returns a (calls, num_params) float64 tensor of gradients of -ELBO in PARAMS order.
    """
    pyro.clear_param_store()
    model, guide = make_programs(init)
    if loss_fn is None:
        elbo = make_elbo(estimator, num_particles=particles, vectorize_particles=True,
                         max_plate_nesting=1)
        loss_fn = elbo(model, guide)
    loss_fn(x)  # creates the params
    params = [pyro.param(k).unconstrained() for k in PARAMS]
    rows = []
    for _ in range(calls):
        loss = loss_fn(x)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        rows.append(torch.cat([
            (g if g is not None else torch.zeros_like(p)).reshape(-1).double()
            for g, p in zip(grads, params, strict=True)
        ]))
    return torch.stack(rows)


class NaiveELBO(ELBO):
    """The wrong gradient: log p(x, z) - log q(z) at a draw whose path to phi is cut.

    Backpropagating through a detached sample drops the term integral f(z) grad q_phi(z) dz, so
    the guide's gradient is biased (only the -log q_phi(z) part at fixed z is left).
    """

    def _get_trace(self, model, guide, args, kwargs):
        raise NotImplementedError

    def differentiable_loss(self, model, guide, *args, **kwargs):
        loss = 0.0
        for _ in range(self.num_particles):
            guide_trace = poutine.trace(score_function_only(guide)).get_trace(*args, **kwargs)
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
                *args, **kwargs
            )
            loss = loss - (model_trace.log_prob_sum() - guide_trace.log_prob_sum())
        return loss / self.num_particles

    def loss(self, model, guide, *args, **kwargs):
        with torch.no_grad():
            return float(self.differentiable_loss(model, guide, *args, **kwargs))


class LinearGaussian:
    """z ~ N(0, I_L), x | z ~ N(W z + b, noise^2 I_D) with random W, b; exact posterior and
    evidence."""

    def __init__(self, obs_dim=4, latent_dim=2, noise=0.5, seed=0, dtype=torch.float64):
        g = torch.Generator().manual_seed(seed)
        self.W = torch.randn(obs_dim, latent_dim, generator=g, dtype=dtype)
        self.b = torch.randn(obs_dim, generator=g, dtype=dtype)
        self.noise = noise
        self.latent_dim = latent_dim

    def sample(self, n, seed=1):
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.latent_dim, generator=g, dtype=self.W.dtype)
        return z @ self.W.T + self.b + self.noise * torch.randn(n, len(self.b), generator=g, dtype=self.W.dtype)

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.latent_dim), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.W.T + self.b, self.noise).to_event(1), obs=x)

    def posterior(self, x):
        """Mean (n, L) and covariance (L, L) of p(z | x)."""
        precision = torch.eye(self.latent_dim, dtype=x.dtype) + self.W.T @ self.W / self.noise**2
        cov = torch.linalg.inv(precision)
        mean = (x - self.b) @ self.W @ cov / self.noise**2
        return mean, cov

    def log_evidence(self, x):
        cov = self.W @ self.W.T + self.noise**2 * torch.eye(len(self.b), dtype=x.dtype)
        return dist.MultivariateNormal(self.b, cov).log_prob(x)

    def guide(self, x, scale_factor=1.0):
        """The exact posterior, its covariance scaled by ``scale_factor**2``."""
        mean, cov = self.posterior(x)
        tril = torch.linalg.cholesky(cov) * scale_factor
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.MultivariateNormal(mean, scale_tril=tril))
