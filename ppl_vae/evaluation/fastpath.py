"""The per-point passes' fast path: the same numbers as the plain Pyro passes, computed with
less work where the work is provably the same.

- :func:`log_prob`: a site's log-density. A Bernoulli likelihood on logits summed over its event
  dimensions (the VAE's ``Bernoulli(logits=decoder(z)).to_event(1)``, K draws x N points x 784
  pixels per chunk) is ``sum_d x_d l_d - softplus(l_d)``: one fused ``softplus`` pass and a
  contraction, where torch's ``Bernoulli.log_prob`` expands the observation to the draws' shape
  and runs ``binary_cross_entropy_with_logits`` element by element (3x slower at 200 draws of
  784 pixels). Same formula, so the same value up to rounding (tested against torch's in float32
  and float64); any other distribution, or one that validates its arguments, takes torch's.
- :func:`guide_latents`: the guide's draws alone, for passes that need only the latents
  (simulation-based calibration ranks them), where the plain pass also traces and scores the
  model on them. In a particle plate the guide draws all K before the model draws anything, so
  for a fixed seed the latents are the very ones the plain pass returns; programs drawn one draw
  at a time interleave the guide's and the model's random numbers and keep the plain pass.

:func:`plain_path` turns all of it off (the benchmark measures both paths in one session).
What remains of a pass at 784 pixels is the model's own work -- the decoder on K x N draws --
which only a fused (compiled) graph or another device makes cheaper.
"""

from __future__ import annotations

import contextlib

import pyro
import torch
import torch.nn.functional as F
from pyro.poutine.util import site_is_subsample
from torch.distributions import Bernoulli, Independent

from ppl_vae.compat import validates_args
from ppl_vae.programs.checks import data_dim

__all__ = ["enabled", "guide_latents", "log_prob", "plain_path"]

_PLAIN = [False]


@contextlib.contextmanager
def plain_path():
    """Within this block every pass takes the plain Pyro path (for the benchmark's before and
    after in one process, and for checks of the fast path against it)."""
    before, _PLAIN[0] = _PLAIN[0], True
    try:
        yield
    finally:
        _PLAIN[0] = before


def enabled() -> bool:
    """Whether the fast path is on (off inside :func:`plain_path`)."""
    return not _PLAIN[0]


def log_prob(fn, value: torch.Tensor) -> torch.Tensor:
    """``fn.log_prob(value)``, through :func:`_bernoulli_logits` where that is the same sum."""
    fast = None if _PLAIN[0] else _bernoulli_logits(fn, value)
    return fn.log_prob(value) if fast is None else fast


def _bernoulli_logits(fn, value: torch.Tensor) -> torch.Tensor | None:
    """``Independent(Bernoulli(logits=l), r).log_prob(x)`` as ``<x, l> - sum softplus(l)`` over
    the ``r`` event dimensions, or None where ``fn`` is not exactly that (a subclass with its
    own ``log_prob``, probabilities instead of logits, argument validation on, an observation
    whose event shape is broadcast)."""
    if not isinstance(fn, Independent) or type(fn).log_prob is not Independent.log_prob:
        return None
    base, r = fn.base_dist, fn.reinterpreted_batch_ndims
    if (not isinstance(base, Bernoulli) or type(base).log_prob is not Bernoulli.log_prob
            or "logits" not in vars(base) or validates_args(fn) or validates_args(base)):
        return None
    logits = base.logits
    event = logits.shape[logits.dim() - r:]
    if (r < 1 or value.dim() < r or value.shape[value.dim() - r:] != event
            or value.dtype != logits.dtype):
        return None
    flat_l, flat_x = logits.flatten(-r), value.flatten(-r)
    # softplus(l) = log(1 + e^l), which torch returns as l itself above ``threshold``: there
    # the dropped e^-l is below the rounding of l in the logits' precision.
    threshold = 40.0 if logits.dtype == torch.float64 else 20.0
    norm = F.softplus(flat_l, threshold=threshold).sum(-1)
    dot = torch.einsum("...d,...d->...", flat_l, flat_x)
    shape = torch.broadcast_shapes(logits.shape[:logits.dim() - r], value.shape[:value.dim() - r])
    return (dot - norm).expand(shape)


def guide_latents(guide_program, model_trace, batch, data_plate: str):
    """The guide's latent draws (the sites the model samples too, auxiliary ones left out) in
    the order of ``model_trace`` and their data-plate dimensions, or None where a guide site's
    data-plate dimension differs from the model's (the plain pass reads the model's).

    Parameters
    ----------
    guide_program : callable
        The guide as the plain pass runs it (in its particle plate, subsample fixed).
    model_trace : pyro.poutine.Trace
        A trace of the model on data like ``batch`` (the simulation), for the site names,
        their order and their plates.
    batch : tuple of tensors
    data_plate : str

    Returns
    -------
    (dict of str -> tensor, dict of str -> int or None) or None
    """
    if _PLAIN[0]:
        return None
    with pyro.validation_enabled(False):
        gtr = pyro.poutine.trace(guide_program).get_trace(*batch)
    latents, dims = {}, {}
    for name, site in model_trace.nodes.items():
        if (site["type"] != "sample" or site_is_subsample(site) or site["is_observed"]
                or site["infer"].get("was_observed") or name not in gtr.nodes):
            continue
        g = gtr.nodes[name]
        if data_dim(g, data_plate) != data_dim(site, data_plate):
            return None
        latents[name], dims[name] = g["value"], data_dim(site, data_plate)
    return latents, dims
