"""A linear-Gaussian latent model whose posterior and evidence are known in closed form, shared
by the tests: z ~ N(0, I_L), x | z ~ N(W z + b, s^2 I_D)."""

import pyro
import pyro.distributions as dist
import torch


class LinearGaussian:
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
