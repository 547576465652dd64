"""Non-amortized mean-field Normal guides in unconstrained space, AutoNormal's family (ADVI:
Kucukelbir, Tran, Ranganath, Gelman & Blei 2017), written out for the zoo's models with global
latents so that the CLI can build them from the data set alone."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.nn import PyroModule
from torch import nn
from torch.nn.functional import softplus

from ppl_vae.models.eight_schools import school_vector
from ppl_vae.programs.nn import keeps_arguments, unique_name

# softplus^-1(0.1): every site starts with a small scale, as AutoNormal's init_scale=0.1 does.
_INIT_RAW_SCALE = -2.2521684610440903


def mean_field_site(name: str, loc: torch.Tensor, raw_scale: torch.Tensor, support,
                    event_dim: int = 0):
    """Sample site ``name`` from N(loc, softplus(raw_scale)^2) mapped onto ``support`` by
    ``biject_to`` (the change of variables AutoNormal uses)."""
    base = dist.Normal(loc, softplus(raw_scale))
    if support is not constraints.real:
        base = dist.TransformedDistribution(base, dist.transforms.biject_to(support))
    return pyro.sample(name, base.to_event(event_dim) if event_dim else base)


def _raw_scales(*shape) -> nn.Parameter:
    return nn.Parameter(torch.full(shape, _INIT_RAW_SCALE))


class RegressionGuide(PyroModule):
    """Mean-field guide for regression: q(w) q(b) = N(m_w, diag s_w^2) N(m_b, s_b^2).

    Called as ``guide(x, y)``; sites ``"w"`` ``(num_features,)`` and ``"b"`` ``()``. For a
    Gaussian posterior the optimal mean-field means equal the exact posterior mean, and the
    optimal variances are the reciprocal diagonal of the posterior precision.
    """

    @keeps_arguments
    def __init__(self, num_features: int):
        super().__init__(name=unique_name("regression_guide"))
        self.num_features = int(num_features)
        self.w_loc = nn.Parameter(torch.zeros(self.num_features))
        self.w_raw_scale = _raw_scales(self.num_features)
        self.b_loc = nn.Parameter(torch.zeros(()))
        self.b_raw_scale = _raw_scales()

    @classmethod
    def from_dataset(cls, dataset, **options):
        return cls(dataset.obs_dim, **options)

    def scales(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Standard deviations of q(w) ``(num_features,)`` and q(b) ``()``."""
        return softplus(self.w_raw_scale), softplus(self.b_raw_scale)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None):
        mean_field_site("w", self.w_loc, self.w_raw_scale, constraints.real, event_dim=1)
        mean_field_site("b", self.b_loc, self.b_raw_scale, constraints.real)


class EightSchoolsGuide(PyroModule):
    """Mean-field guide for eight_schools: q(mu) q(log tau) prod_j q(theta~_j), all Normal.

    Called as ``guide(sigma, y)``. The per-school factors q(theta~_j) are not amortized: the
    guide keeps the schools' ``(sigma_j, y_j)`` it was built for and looks each incoming row up
    among them, so shuffled mini-batches and row subsets get their own school's parameters, and
    an unknown school is refused. tau is LogNormal under q (a Normal on log tau, mapped by
    ``biject_to(positive)``).

    Parameters
    ----------
    sigma : tensor, shape (J,) or (J, 1)
        The schools' standard errors.
    y : tensor, shape (J,)
        The schools' estimated effects.
    """

    @keeps_arguments
    def __init__(self, sigma: torch.Tensor, y: torch.Tensor):
        super().__init__(name=unique_name("eight_schools_guide"))
        sigma = school_vector(torch.as_tensor(sigma), "sigma")
        y = torch.as_tensor(y)
        if tuple(y.shape) != tuple(sigma.shape):
            raise ValueError(f"EightSchoolsGuide: y must have shape {tuple(sigma.shape)}, got "
                             f"{tuple(y.shape)}")
        self.register_buffer("schools", torch.stack([sigma, y], dim=-1).float())
        j = sigma.shape[0]
        self.mu_loc = nn.Parameter(torch.zeros(()))
        self.mu_raw_scale = _raw_scales()
        self.tau_loc = nn.Parameter(torch.zeros(()))
        self.tau_raw_scale = _raw_scales()
        self.theta_loc = nn.Parameter(torch.zeros(j))
        self.theta_raw_scale = _raw_scales(j)

    @classmethod
    def from_dataset(cls, dataset, **options):
        if dataset.train_targets is None:
            raise ValueError(f"EightSchoolsGuide needs (sigma, y) data; {dataset.name!r} has no "
                             "targets (use --data eight_schools)")
        return cls(dataset.train, dataset.train_targets, **options)

    def school_index(self, sigma: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Index of each row's school among those the guide was built for, shape ``(n,)``."""
        rows = torch.stack([sigma, y], dim=-1).to(self.schools.dtype)
        gap = (rows[:, None, :] - self.schools[None, :, :]).abs().amax(-1)
        best, index = gap.min(dim=1)
        unknown = best > 1e-4 * (1 + rows.abs().amax(-1))
        if bool(unknown.any()):
            bad = torch.nonzero(unknown).flatten()[:10].tolist()
            raise ValueError(f"EightSchoolsGuide: rows {bad} are not among the schools it was "
                             "built for (its per-school factors are not amortized)")
        return index

    def forward(self, sigma: torch.Tensor, y: torch.Tensor):
        sigma = school_vector(sigma, "sigma")
        index = self.school_index(sigma, y)
        mean_field_site("mu", self.mu_loc, self.mu_raw_scale, constraints.real)
        mean_field_site("tau", self.tau_loc, self.tau_raw_scale, constraints.positive)
        with pyro.plate("data", sigma.shape[0]):
            mean_field_site("theta_tilde", self.theta_loc[index], self.theta_raw_scale[index],
                            constraints.real)


__all__ = ["EightSchoolsGuide", "RegressionGuide", "mean_field_site"]
