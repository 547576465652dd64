"""A model with a Bernoulli and a Gaussian latent per data point whose IWAE bound and its exact
gradient are computed by enumerating the discrete draws of all K particles and integrating the
Gaussian ones by Gauss-Hermite quadrature (test helper).

Model: z_i ~ Bernoulli(sigmoid(t)), u_i ~ N(0, 1), x_i | z_i, u_i ~ N(u_i + mu z_i, 0.6^2).
Guide: q(z_i | x_i) = Bernoulli(sigmoid(a x_i + c)),
       q(u_i | x_i, z_i) = N(b x_i + d z_i + e, exp(ls)^2)    (u depends on the discrete draw).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pyro
import pyro.distributions as dist
import torch

SIGMA = 0.6
PARAMS = ("t", "mu", "a", "c", "b", "d", "e", "ls")
GUIDE_PARAMS = ("a", "c", "b", "d", "e", "ls")
INIT = {"t": 0.3, "mu": 1.5, "a": 0.8, "c": -0.2, "b": 0.4, "d": -0.5, "e": 0.1, "ls": -0.3}


def data(dtype=torch.float64):
    return torch.tensor([-0.7, 0.4, 1.9], dtype=dtype)


def make_programs(init=INIT, reparameterized_u=True):
    def param(name, like):
        return pyro.param(name, like.new_tensor(init[name]))

    def model(x):
        t, mu = param("t", x), param("mu", x)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Bernoulli(logits=t.expand(x.shape)))
            u = pyro.sample("u", dist.Normal(x.new_zeros(()), 1.0).expand(x.shape))
            pyro.sample("x", dist.Normal(u + mu * z, SIGMA), obs=x)

    def guide(x):
        a, c, b = param("a", x), param("c", x), param("b", x)
        d, e, ls = param("d", x), param("e", x), param("ls", x)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Bernoulli(logits=a * x + c))
            q_u = dist.Normal(b * x + d * z + e, ls.exp())
            if not reparameterized_u:
                q_u = q_u.has_rsample_(False)
            pyro.sample("u", q_u)

    return model, guide


def exact_bound_and_gradient(x, k, nodes=20, init=INIT):
    """(sum_i L_K(x_i), its gradient w.r.t. PARAMS), float64, by enumeration and quadrature."""
    p = {n: torch.tensor(float(init[n]), dtype=torch.float64, requires_grad=True) for n in PARAMS}
    xd = x.double()
    gh_x, gh_w = np.polynomial.hermite_e.hermegauss(nodes)  # weight exp(-e^2 / 2)
    eps1, w1 = torch.tensor(gh_x), torch.tensor(gh_w / math.sqrt(2 * math.pi))
    eps = torch.stack(torch.meshgrid(*([eps1] * k), indexing="ij"), -1).reshape(-1, k)
    w_eps = torch.stack(torch.meshgrid(*([w1] * k), indexing="ij"), -1).reshape(-1, k).prod(-1)
    total = 0.0
    for combo in itertools.product((0.0, 1.0), repeat=k):
        z = torch.tensor(combo, dtype=torch.float64)  # (K,)
        q_z = dist.Bernoulli(logits=p["a"] * xd[:, None] + p["c"])  # (N, 1)
        log_qz = q_z.log_prob(z).sum(-1)  # (N,): probability of this K-tuple
        loc = p["b"] * xd[:, None] + p["d"] * z + p["e"]  # (N, K)
        u = loc[:, None, :] + p["ls"].exp() * eps  # (N, nodes^K, K), reparameterized
        log_w = (dist.Bernoulli(logits=p["t"]).log_prob(z) + dist.Normal(0.0, 1.0).log_prob(u)
                 + dist.Normal(u + p["mu"] * z, SIGMA).log_prob(xd[:, None, None])
                 - dist.Bernoulli(logits=p["a"] * xd[:, None, None] + p["c"]).log_prob(z)
                 - dist.Normal(loc[:, None, :], p["ls"].exp()).log_prob(u))
        bound = torch.logsumexp(log_w, -1) - math.log(k)  # (N, nodes^K)
        total = total + (log_qz.exp() * (bound * w_eps).sum(-1)).sum()
    grads = torch.autograd.grad(total, [p[n] for n in PARAMS])
    return float(total.detach()), torch.stack(grads)


def gradient_draws(estimator, x, k, *, calls, repeat, vectorize=True, reparameterized_u=True,
                   minibatch_scale=1):
    """``calls`` gradient estimates of -L_K on ``x`` repeated ``repeat`` times, divided by
    ``repeat`` (each is the mean of ``repeat`` independent per-point estimates). Rows in
    PARAMS order, float64. ``minibatch_scale`` > 1 treats the rows as a mini-batch of a data
    set that many times larger (``ScaledProgram``) and divides the gradient by it again."""
    from ppl_vae.estimators.registry import make_elbo
    from ppl_vae.programs.handlers import ScaledProgram

    pyro.clear_param_store()
    model, guide = make_programs(reparameterized_u=reparameterized_u)
    n = len(x) * repeat * minibatch_scale
    model, guide = ScaledProgram(model, n, "data"), ScaledProgram(guide, n, "data")
    loss_fn = make_elbo(estimator, num_particles=k, vectorize_particles=vectorize,
                        max_plate_nesting=1)(model, guide)
    xs = x.repeat(repeat)
    loss_fn(xs)
    params = [pyro.param(n).unconstrained() for n in PARAMS]
    rows = []
    for _ in range(calls):
        grads = torch.autograd.grad(loss_fn(xs), params, allow_unused=True)
        rows.append(torch.stack([torch.zeros((), dtype=torch.float64) if g is None else g.double()
                                 for g in grads]) / (repeat * minibatch_scale))
    return torch.stack(rows)
