"""Guides that join an amortized guide for local latents with a global guide for the sites
outside the data plate (the global/local split of stochastic variational inference, Hoffman et
al. 2013; amortized local posteriors as in Kingma & Welling 2014; AutoNormal is ADVI,
Kucukelbir et al. 2017)."""

from __future__ import annotations

import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.infer.autoguide import AutoNormal
from pyro.nn import PyroModule
from torch import nn

from ppl_vae.programs.nn import keeps_arguments, unique_name

from .mean_field import _INIT_RAW_SCALE, mean_field_site
from .mlp import MLPEncoder


def global_part(model, data_plate: str = "data"):
    """``model`` with every site inside the plate ``data_plate`` hidden: what an autoguide over
    the global latents should see."""

    def in_data_plate(msg) -> bool:
        return any(frame.name == data_plate for frame in msg["cond_indep_stack"])

    return poutine.block(model, hide_fn=in_data_plate)


class LocalGlobalGuide(PyroModule):
    """An autoguide over ``model``'s global latents followed by an amortized local guide.

    ``guide(*batch)`` runs the autoguide on the global sites (those outside ``data_plate``),
    then ``local_guide(*batch)``, which samples the local ones (inside ``data_plate``). The
    local guide must not depend on the global draws (q factorises as q(globals) q(z | x)).

    Parameters
    ----------
    model : callable
        The generative program; the autoguide is built on :func:`global_part` of it.
    local_guide : callable
        Amortized guide for the local sites (for example ``MLPEncoder``).
    autoguide : type
        An autoguide class taking the model as first argument (default ``AutoNormal``).
    data_plate : str
    **autoguide_options
        Passed to the autoguide (for example ``init_scale``).
    """

    @keeps_arguments
    def __init__(self, model, local_guide, *, autoguide=AutoNormal, data_plate: str = "data",
                 **autoguide_options):
        super().__init__(name=unique_name("local_global_guide"))
        self.local = local_guide
        self.global_guide = autoguide(global_part(model, data_plate), **autoguide_options)

    def forward(self, *batch):
        self.global_guide(*batch)
        return self.local(*batch)


class GlobalLocalGuide(PyroModule):
    """Guide for global_local_vae: mean-field q(b) q(sigma) and an MLP encoder for q(z | x).

    With an MLP encoder for z and
    mean-field Normals (sigma LogNormal) for the globals; the CLI's version of
    ``LocalGlobalGuide(model, MLPEncoder(...))``.

    Sites: ``"b"`` ``(obs_dim,)``, ``"sigma"`` ``()``, ``"z"`` ``(batch, latent_dim)`` in plate
    ``"data"``.

    Parameters
    ----------
    obs_dim, latent_dim : int
    hidden : int or sequence of int
        Encoder hidden widths.
    """

    @keeps_arguments
    def __init__(self, obs_dim: int, latent_dim: int = 2, hidden=64):
        super().__init__(name=unique_name("global_local_guide"))
        self.obs_dim = int(obs_dim)
        self.encoder = MLPEncoder(obs_dim, latent_dim, hidden)
        self.b_loc = nn.Parameter(torch.zeros(self.obs_dim))
        self.b_raw_scale = nn.Parameter(torch.full((self.obs_dim,), _INIT_RAW_SCALE))
        self.sigma_loc = nn.Parameter(torch.zeros(()))
        self.sigma_raw_scale = nn.Parameter(torch.full((), _INIT_RAW_SCALE))

    @classmethod
    def from_dataset(cls, dataset, **options):
        return cls(dataset.obs_dim, **options)

    def forward(self, x: torch.Tensor):
        mean_field_site("b", self.b_loc, self.b_raw_scale, constraints.real, event_dim=1)
        mean_field_site("sigma", self.sigma_loc, self.sigma_raw_scale, constraints.positive)
        return self.encoder(x)


__all__ = ["GlobalLocalGuide", "LocalGlobalGuide", "global_part"]

