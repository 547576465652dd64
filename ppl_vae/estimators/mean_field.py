"""Pyro's ``TraceMeanField_ELBO`` (the ``analytic`` estimator), refusing a guide site without
``rsample`` by name.

Pyro raises a bare ``NotImplementedError("All distributions in the guide must be fully
reparameterized.")`` from inside the loss; this says which site and which estimators accept it,
when the traces are made (so ``jit=True``, which records the same traces, says it too).
"""

from __future__ import annotations

from typing import final

from pyro.infer import TraceMeanField_ELBO

from ppl_vae.compat import parent_trace
from ppl_vae.estimators._traces import refuse_non_reparameterized

__all__ = ["MeanFieldELBO"]


@final
class MeanFieldELBO(TraceMeanField_ELBO):
    """``TraceMeanField_ELBO`` with a clear error for non-reparameterizable guide sites.

    Parameters
    ----------
    accepting : callable
        ``accepting() -> list of str``: the estimators to name in that error.
    **options
        As for :class:`pyro.infer.TraceMeanField_ELBO`.
    """

    def __init__(self, *, accepting, **options):
        super().__init__(**options)
        self.accepting = accepting

    def _get_trace(self, model, guide, args, kwargs):
        model_trace, guide_trace = parent_trace(MeanFieldELBO, self, model, guide, args, kwargs)
        refuse_non_reparameterized("analytic", guide_trace, self.accepting)
        return model_trace, guide_trace
