"""Every private Pyro and torch name that ppl-vae uses outside its recording wing, in one place.

A Pyro or torch upgrade is one file to read: each name below says what it is, the versions it
was checked against, and what to do when an upgrade moves or removes it. Nothing else in
``ppl_vae`` imports or reads a private attribute of Pyro or torch (``tests/test_compat.py``
scans the sources); the recording and compiling wing (``ppl_vae/recording/``, until it moves:
``estimators/jit.py``, ``compile.py``, ``graph_rewrites.py``, ``value_reads.py``,
``guards.py``, ``inductor.py``, ``train/fused.py``) has its own private-names module.

Checked with Pyro 1.9.1 and 1.9.2, torch 2.5 to 2.13 (CPU and CUDA builds).

Two kinds of private names stay where they are, because they are definitions, not uses: the
``_pyro_sample`` / ``_pyro_post_sample`` hooks of ``Messenger`` subclasses (the extension
protocol Pyro documents for writing handlers) and :class:`ppl_vae.estimators.mean_field.
MeanFieldELBO`'s override of ``TraceMeanField_ELBO._get_trace`` (see :func:`parent_trace`).
"""

from __future__ import annotations

import torch
from pyro.distributions import MaskedDistribution
from pyro.infer import ELBO
from pyro.infer.tracegraph_elbo import _compute_elbo
from pyro.poutine.subsample_messenger import _Subsample

__all__ = [
    "Subsample",
    "compute_tracegraph_elbo",
    "default_validate_args",
    "elbo_traces",
    "mask_of",
    "module_children",
    "module_parameters",
    "parent_trace",
    "validates_args",
]

Subsample = _Subsample
"""The distribution of a plate's subsample site (``pyro.poutine.subsample_messenger._Subsample``).

``pyro.plate(name, size, subsample_size)`` records a ``sample`` site named after the plate whose
``fn`` is this class; ppl-vae recognises plates by it (to feed chosen indices, to skip them
when wrapping latents). Checked: Pyro 1.9.1, 1.9.2. On upgrade: if it is renamed, find the class
of ``poutine.trace(lambda: pyro.plate("p", 10, 3)).get_trace().nodes["p"]["fn"]`` and alias it
here.
"""


def compute_tracegraph_elbo(model_trace, guide_trace):
    """``(elbo, surrogate_elbo)`` of one particle, as ``TraceGraph_ELBO`` forms them
    (``pyro.infer.tracegraph_elbo._compute_elbo``): the ELBO's value and the surrogate whose
    gradient is the Rao-Blackwellised score-function estimator (baselines applied).

    Checked: Pyro 1.9.1, 1.9.2 (a module-level function taking the two traces). On upgrade: if
    its signature changes, ``tests/test_estimators_tracegraph.py`` fails against
    ``TraceGraph_ELBO.loss_and_grads``; follow the new signature here.
    """
    return _compute_elbo(model_trace, guide_trace)


def elbo_traces(elbo: ELBO, model, guide, args, kwargs):
    """The particles of ``elbo``: ``(model_trace, guide_trace, ...)`` per particle, one tuple
    when particles are vectorized (``pyro.infer.ELBO._get_traces``, a generator).

    It applies the ELBO's ``num_particles``, ``vectorize_particles`` and ``max_plate_nesting``
    and calls the subclass' ``_get_trace`` (ppl-vae's estimators add terms there). Checked: Pyro
    1.9.1, 1.9.2. On upgrade: if it is renamed, loop ``elbo._get_trace`` ``num_particles``
    times (or wrap the programs in a particle plate when vectorized) here.
    """
    return elbo._get_traces(model, guide, args, kwargs)


def parent_trace(cls: type, elbo: ELBO, model, guide, args, kwargs):
    """``(model_trace, guide_trace)`` of one particle from the class after ``cls`` in
    ``type(elbo)``'s method order (``super(cls, elbo)._get_trace``), for a subclass that
    overrides Pyro's per-particle hook ``ELBO._get_trace`` to check the traces
    (:class:`~ppl_vae.estimators.mean_field.MeanFieldELBO`).

    Checked: Pyro 1.9.1, 1.9.2 (``_get_traces`` calls ``self._get_trace`` once per particle).
    On upgrade: if the hook is renamed, rename the override in ``estimators/mean_field.py`` and
    the call here; ``tests/test_guides_mean_field.py`` fails until both agree.
    """
    return super(cls, elbo)._get_trace(model, guide, args, kwargs)


def default_validate_args() -> bool:
    """Whether torch distributions validate their arguments by default
    (``torch.distributions.Distribution._validate_args``, the flag that
    ``Distribution.set_default_validate_args`` and ``pyro.enable_validation`` set; torch has no
    public getter). Checked: torch 2.5 to 2.13. On upgrade: if torch adds a getter, call it."""
    return bool(torch.distributions.Distribution._validate_args)


def validates_args(distribution) -> bool:
    """Whether this distribution instance validates its arguments (its ``_validate_args``, set
    from ``validate_args=`` at construction, else the default). Checked: torch 2.5 to 2.13. On
    upgrade: if the attribute moves, read the instance's validation setting here."""
    return bool(distribution._validate_args)


def mask_of(distribution: MaskedDistribution):
    """The mask of a ``pyro.distributions.MaskedDistribution`` (its ``_mask``: a bool tensor or a
    Python bool), which Pyro keeps private. Checked: Pyro 1.9.1, 1.9.2. On upgrade: if it moves,
    read it here (``MaskedDistribution.__init__`` stores it)."""
    return distribution._mask


def module_parameters(module: torch.nn.Module) -> dict:
    """The dict in which ``module`` holds its own parameters (``nn.Module._parameters``; the
    dict itself, since ppl-vae finds modules by following references to it with ``gc``).

    ``module.parameters(recurse=False)`` is not the same: Pyro's ``ELBOModule`` answers
    ``parameters()`` with every parameter its programs touch. Checked: torch 2.5 to 2.13. On
    upgrade: if the slot is renamed, use the new name here and in :func:`module_children`.
    """
    return module._parameters


def module_children(module: torch.nn.Module) -> dict:
    """The dict in which ``module`` holds its direct submodules (``nn.Module._modules``; the
    dict itself, see :func:`module_parameters`). Checked: torch 2.5 to 2.13. On upgrade: as for
    :func:`module_parameters`."""
    return module._modules
