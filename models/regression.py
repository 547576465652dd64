"""Bayesian linear regression with a Gaussian prior and known noise: the conjugate model whose
posterior is Gaussian in closed form (Bishop 2006, Pattern Recognition and Machine Learning,
section 3.3)."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule

from ppl_vae.programs.nn import check_width, keeps_arguments, unique_name


class BayesianRegression(PyroModule):
    """Bayesian linear regression, conjugate (known noise): global w and b, response y.

    w ~ N(0, s0^2 I), b ~ N(0, s0^2), y_i | x_i ~ N(x_i . w + b, sigma^2) with known sigma.

    Called as ``model(x, y)`` with features ``x`` ``(batch, num_features)`` and responses ``y``
    ``(batch,)``. The latents ``"w"`` ``(num_features,)`` and ``"b"`` ``()`` are global (outside
    the data plate), so mini-batches scale only the likelihood. :meth:`exact_posterior` gives the
    conjugate answer.

    Parameters
    ----------
    num_features : int
    prior_scale : float
        s0.
    noise : float
        The known noise standard deviation sigma.
    """

    @keeps_arguments
    def __init__(self, num_features: int, prior_scale: float = 10.0, noise: float = 1.0):
        if float(prior_scale) <= 0 or float(noise) <= 0:
            raise ValueError(f"prior_scale and noise must be positive, got {prior_scale}, {noise}")
        super().__init__(name=unique_name("bayesian_regression"))
        self.num_features = int(num_features)
        self.prior_scale, self.noise = float(prior_scale), float(noise)

    @classmethod
    def from_dataset(cls, dataset, **options):
        if dataset.train_targets is None:
            raise ValueError(f"BayesianRegression needs responses; {dataset.name!r} has no "
                             "targets (use --data regression or a Dataset with train_targets)")
        options.setdefault("noise", float(dataset.info.get("noise", 1.0)))
        return cls(dataset.obs_dim, **options)

    def exact_posterior(self, x: torch.Tensor, y: torch.Tensor) -> dist.MultivariateNormal:
        """The conjugate posterior of ``(w, b)`` given all of ``(x, y)``, event shape
        ``(num_features + 1,)`` (the intercept last)."""
        _check(x, y, self.num_features)
        design = torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1)
        eye = torch.eye(design.shape[1], dtype=x.dtype, device=x.device)
        precision = design.T @ design / self.noise**2 + eye / self.prior_scale**2
        cov = torch.linalg.inv(precision)
        mean = cov @ design.T @ y / self.noise**2
        return dist.MultivariateNormal(mean, precision_matrix=precision)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None):
        _check(x, y, self.num_features)
        s0 = x.new_tensor(self.prior_scale)
        w_prior = dist.Normal(x.new_zeros(()), s0).expand([self.num_features]).to_event(1)
        w = pyro.sample("w", w_prior)
        b = pyro.sample("b", dist.Normal(x.new_zeros(()), s0))
        with pyro.plate("data", x.shape[0]):
            # (x * w).sum(-1) rather than x @ w: w may carry a leading draw dimension (K, 1, p).
            loc = (x * w).sum(-1) + b
            return pyro.sample("y", dist.Normal(loc, x.new_tensor(self.noise)), obs=y)


def _check(x, y, num_features):
    check_width(x, num_features, "BayesianRegression")
    if y is not None and tuple(y.shape) != (x.shape[0],):
        raise ValueError(f"BayesianRegression: y must have shape ({x.shape[0]},) (one response "
                         f"per row of x), got {tuple(y.shape)}")


__all__ = ["BayesianRegression"]
