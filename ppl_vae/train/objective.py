"""Training objectives other than the ELBO, used during training only: KL warm-up.

KL warm-up (Bowman et al. 2016, "Generating sentences from a continuous space", CoNLL;
Sønderby et al. 2016, "Ladder variational autoencoders", NeurIPS) trains on
E_q[log p(x | z)] - beta * KL(q(z | x) || p(z)) with beta rising linearly from 0 to 1 over the
first ``kl_warmup_epochs`` epochs, so that the decoder learns to use z before the KL term can
push q onto the prior (posterior collapse). It is done by scaling every latent site's
``scale`` by beta in both model and guide: the Monte Carlo estimators then weight
log p(z) - log q(z) by beta, and ``TraceMeanField_ELBO`` its closed-form KL (which it scales by
the guide site's scale and which needs equal scales on both sides). Observed sites keep scale 1.
Validation, evaluation and every diagnostic use the true ELBO (beta = 1).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from pyro.poutine.messenger import Messenger

__all__ = ["KLWarmup", "WarmupProgram"]


class KLWarmup(Messenger):
    """Scale every latent (non-observed) sample site by ``beta``.

    Parameters
    ----------
    warmup_steps : int
        Optimizer steps over which beta rises linearly from 1 / warmup_steps to 1.
    """

    def __init__(self, warmup_steps: int):
        super().__init__()
        self.warmup_steps = max(1, int(warmup_steps))
        self.beta = 1.0

    def set_step(self, step: int) -> float:
        """beta for the optimizer step ``step`` (0-based): min(1, (step + 1) / warmup_steps)."""
        self.beta = min(1.0, (int(step) + 1) / self.warmup_steps)
        return self.beta

    def _process_message(self, msg):
        if msg["type"] == "sample" and not msg["is_observed"] and self.beta != 1.0:
            msg["scale"] = msg["scale"] * self.beta


class WarmupProgram(torch.nn.Module):
    """A Pyro program run under a shared :class:`KLWarmup` (a ``torch.nn.Module`` so that the
    ELBO module owns the program's parameters, as :class:`~ppl_vae.programs.handlers.ScaledProgram`
    does)."""

    def __init__(self, program: Callable, warmup: KLWarmup):
        super().__init__()
        self.program = program
        self.warmup = warmup

    def forward(self, *batch):
        with self.warmup:
            return self.program(*batch)
