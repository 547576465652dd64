"""``jit=True`` / ``"auto"`` / ``"compile"``: Pyro's ELBOs recorded once per input signature
(:class:`ppl_vae.recording.compile.TraceOnce`).

:class:`TracedELBO` wraps an eager Pyro ELBO. Its loss is a *traceable* function of the batch:
one that computes the reported loss value from tensors instead of ``.item()`` (Pyro's eager
``Trace_ELBO`` and ``TraceMeanField_ELBO`` read values on the host, which a recorded graph would
freeze at their first value). The gradient is the inner ELBO's own surrogate, so the estimator is
exactly the eager one; with the same seed, ``jit=True`` draws the same random numbers as
``jit=False``.

Replaces Pyro 1.9.2's ``JitTrace*_ELBO`` classes, which use the deprecated ``torch.jit.trace``;
``JitTraceMeanField_ELBO`` moreover re-traces on every step (its cache check reads an attribute it
never sets) and leaks about 2 MiB per step.

Modes: ``"record"`` (``jit=True``) replays the recorded graph and raises when the programs turn
out not to be static; ``"auto"`` (``fit``'s default) does the same but falls back to the eager
ELBO with one :class:`~ppl_vae.recording.compile.JitFallbackWarning` naming why; ``"compile"``
(``jit="compile"``) also compiles the recorded graph with ``torch.compile`` (Inductor).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import pyro.infer
import torch
from pyro.infer.util import is_identically_zero

from ppl_vae.estimators.registry import JIT_CHOICES, check_jit, set_recorder
from ppl_vae.recording.compile import TraceOnce
from ppl_vae.recording.private import elbo_trace, elbo_traces, particle_surrogate

__all__ = ["TracedELBO", "MODES", "JIT_CHOICES", "LOSSES", "check_jit", "mc_loss",
           "mean_field_loss", "enum_loss", "record_elbo"]

MODES = ("record", "auto", "compile")


def mc_loss(elbo: pyro.infer.Trace_ELBO, model, guide, *args, **kwargs) -> torch.Tensor:
    """Negative Monte Carlo ELBO, log q - log p summed over sites (Kingma & Welling 2014,
    estimator A), with the gradient of Pyro's surrogate (score-function terms included)."""
    value, surrogate, reparameterized = 0.0, 0.0, True
    for model_trace, guide_trace in elbo_traces(elbo, model, guide, args, kwargs):
        surrogate_particle = particle_surrogate(elbo, model_trace, guide_trace)
        value = value + guide_trace.log_prob_sum() - model_trace.log_prob_sum()
        surrogate = surrogate + surrogate_particle
        reparameterized = reparameterized and not any(
            not is_identically_zero(site["score_parts"].score_function)
            for site in guide_trace.nodes.values() if site["type"] == "sample")
    value, surrogate = value / elbo.num_particles, surrogate / elbo.num_particles
    if reparameterized:
        # Without score-function terms the surrogate *is* the negative ELBO (the same sums, up
        # to the order of additions): one expression instead of two, a tenth of the ops of a
        # recorded VAE step (the unused value is dropped from the graph).
        return surrogate
    # Value of the ELBO, gradient of the surrogate: they differ only for non-reparameterized sites.
    return value.detach() + (surrogate - surrogate.detach())


def mean_field_loss(elbo: pyro.infer.TraceMeanField_ELBO, model, guide, *args, **kwargs):
    """Negative ELBO with closed-form KL terms (Kingma & Welling 2014, estimator B). The
    mean-field ELBO needs reparameterized guides, so its surrogate *is* its value."""
    loss = 0.0
    for model_trace, guide_trace in elbo_traces(elbo, model, guide, args, kwargs):
        surrogate_particle = particle_surrogate(elbo, model_trace, guide_trace)
        loss = loss + surrogate_particle
    return loss / elbo.num_particles


def enum_loss(elbo: pyro.infer.TraceEnum_ELBO, model, guide, *args, **kwargs):
    """``TraceEnum_ELBO``'s differentiable loss, which already stays on the device."""
    return elbo.differentiable_loss(model, guide, *args, **kwargs)


class TracedELBO(pyro.infer.ELBO):
    """A Pyro ELBO whose loss-and-gradient is recorded once per input signature and replayed.

    Parameters
    ----------
    inner : pyro.infer.ELBO
        The eager estimator (``Trace_ELBO``, ``TraceMeanField_ELBO``, ``TraceEnum_ELBO``).
    loss : callable
        ``loss(inner, model, guide, *args, **kwargs) -> 0-dim tensor``, traceable (no host
        reads that change the result): :func:`mc_loss`, :func:`mean_field_loss`,
        :func:`enum_loss`.
    mode : {"record", "auto", "compile"}
        ``"record"``: replay the recorded graph, raise ``ValueError`` when the programs are not
        static. ``"auto"``: the same, but fall back to ``inner`` (eager) with one warning
        instead of raising. ``"compile"``: compile the recorded graph with Inductor (raises
        like ``"record"``).
    max_programs : int
        Recorders kept for at most this many (model, guide) pairs, least recently used dropped.

    Notes
    -----
    Calling it as ``elbo(model, guide)`` gives Pyro's ``ELBOModule``; its forward returns a loss
    whose ``backward()`` delivers the recorded gradients. Same contract as Pyro's JIT ELBOs:
    static model structure per input shape, tensors passed as positional arguments.
    """

    def __init__(self, inner: pyro.infer.ELBO, loss: Callable[..., torch.Tensor], *,
                 mode: str = "record", max_programs: int = 4):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        super().__init__(
            num_particles=inner.num_particles,
            max_plate_nesting=inner.max_plate_nesting,
            vectorize_particles=inner.vectorize_particles,
        )
        self.inner = inner
        self.loss_function = loss
        self.mode = mode
        self.max_programs = int(max_programs)
        self._recorders: OrderedDict[tuple[int, int], tuple] = OrderedDict()
        # jit="auto" compiles in the background (ppl_vae.recording.background); False: the
        # recorded step only (tests of recording alone, benchmarks of it).
        self.background = True

    def recorder(self, model, guide) -> TraceOnce:
        """The :class:`TraceOnce` for this (model, guide) pair (created on first use)."""
        key = (id(model), id(guide))
        found = self._recorders.get(key)
        # ids can be reused after garbage collection: compare the objects, not just the ids.
        if found is not None and found[0] is model and found[1] is guide:
            self._recorders.move_to_end(key)
            return found[2]
        recorder = TraceOnce(self._traceable(model, guide), (model, guide),
                             backend="inductor" if self.mode == "compile" else None,
                             fallback=self._eager(model, guide) if self.mode == "auto" else None,
                             background=self.mode == "auto" and self.background)
        self._recorders[key] = (model, guide, recorder)
        while len(self._recorders) > self.max_programs:
            self._recorders.popitem(last=False)
        return recorder

    def step_recorder(self, model, guide) -> TraceOnce:
        """A new recorder of this ELBO's loss and gradient for (model, guide) whose graphs are
        replayed as recorded, never compiled (same checks as :meth:`recorder`): what
        ``jit="compile"``'s fused training step (:mod:`ppl_vae.recording.fused`) compiles
        together with its optimizer (``jit="auto"``'s uses :meth:`recorder`, which does not
        compile either)."""
        return TraceOnce(self._traceable(model, guide), (model, guide))

    def _eager(self, model, guide) -> Callable[..., torch.Tensor]:
        inner = self.inner

        def eager(*args, **kwargs):
            return inner.differentiable_loss(model, guide, *args, **kwargs)

        return eager

    def _traceable(self, model, guide) -> Callable[..., torch.Tensor]:
        inner, loss = self.inner, self.loss_function

        def fn(*args, **kwargs):
            return loss(inner, model, guide, *args, **kwargs)

        return fn

    def _get_trace(self, model, guide, args, kwargs):
        return elbo_trace(self.inner, model, guide, args, kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """Negative ELBO (0-dim tensor) whose gradient is the inner estimator's."""
        return self.recorder(model, guide)(*args, **kwargs)

    def loss(self, model, guide, *args, **kwargs) -> float:
        """Negative ELBO as a float (synchronises with the device)."""
        with torch.no_grad():
            return float(self.differentiable_loss(model, guide, *args, **kwargs))

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """Negative ELBO as a float, with its gradient accumulated into the parameters (for
        ``pyro.infer.SVI``)."""
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if loss.requires_grad:
            loss.backward()
        return float(loss.detach())


#: The traceable losses an :class:`~ppl_vae.estimators.registry.EstimatorSpec` can name as its
#: ``recorded_loss``.
LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "mc": mc_loss, "mean_field": mean_field_loss, "enum": enum_loss,
}


def record_elbo(elbo: pyro.infer.ELBO, loss_name: str, jit) -> TracedELBO:
    """``elbo`` recorded with the loss :data:`LOSSES` names (``jit`` True, ``"auto"`` or
    ``"compile"``): what :func:`ppl_vae.make_elbo` returns for ``jit != False``."""
    return TracedELBO(elbo, LOSSES[loss_name], mode="record" if jit is True else jit)


# Training opts into the wing by importing it: from then on make_elbo(jit=...) records.
set_recorder(record_elbo)
