"""Training objectives other than the ELBO, used during training only: KL warm-up and free bits.

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

import pyro
import torch
from pyro.poutine.messenger import Messenger

from ppl_vae.programs.util import unwrap_distribution

__all__ = ["FreeBits", "KLWarmup", "WarmupProgram"]


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


class FreeBits:
    """Free bits (Kingma et al. 2016, "Improved variational inference with inverse
    autoregressive flow", NeurIPS): train on E_q[log p(x | z)] - sum_g max(lambda, KL_g), where
    KL_g is the batch-mean KL of group g (one latent dimension, or one latent site), so that no
    group is pushed below ``lambda`` nats (a collapsed unit gets no gradient toward the prior).

    Done without touching the estimator: the loss gains N * sum_g relu(lambda - KL_g), added as
    a ``pyro.factor`` next to each local latent site of the model (inside the data plate, one
    equal share per point, so the data-plate scale N / B makes it N * relu(...)). With KL_g
    computed as the estimator computes it (closed form where torch has it, else log q - log p
    at the same draw), the ELBO's KL term and the correction cancel below lambda. The guide's
    distributions are recorded by :meth:`guide` and read by :meth:`model`.

    Parameters
    ----------
    nats : float
        lambda, per group.
    per : {"dim", "site"}
        The groups: every dimension of every local latent site, or every site.
    """

    def __init__(self, nats: float, per: str = "dim"):
        self.nats, self.per = float(nats), per
        self.data_plate: str | None = None  # set once fit knows it; inactive until then
        self.guide_fns: dict = {}

    def guide(self, program: Callable) -> Callable:
        return _FreeBitsProgram(program, _RecordGuide(self))

    def model(self, program: Callable) -> Callable:
        return _FreeBitsProgram(program, _AddCorrection(self))

    def correction(self, msg) -> torch.Tensor | None:
        """relu(lambda - batch-mean KL) summed over groups, shaped to broadcast over the data
        plate (one share per point), or None for a site outside the data plate."""
        frame = next((f for f in msg["cond_indep_stack"] if f.name == self.data_plate), None)
        q_fn = self.guide_fns.get(msg["name"])
        if frame is None or q_fn is None:
            return None
        q, rq, _ = unwrap_distribution(q_fn)
        p, _, _ = unwrap_distribution(msg["fn"])
        z = msg["value"]
        if self.per == "dim" and (q.event_shape or p.event_shape):
            raise ValueError(f"free_bits per dimension: site {msg['name']!r} has a multivariate "
                             f"guide or prior ({type(q).__name__}); use free_bits_per='site'")
        try:
            kl = torch.distributions.kl_divergence(q, p)
        except NotImplementedError:
            kl = q.log_prob(z) - p.log_prob(z)
        kl = kl.reshape(kl.shape[: kl.dim() - rq] + (-1,)) if rq else kl.unsqueeze(-1)
        if self.per == "site":
            kl = kl.sum(-1, keepdim=True)
        # kl: site batch dims + (groups,); mean over the data-plate dim, relu, sum over groups.
        mean = kl.mean(dim=frame.dim - 1, keepdim=True)
        return torch.relu(self.nats - mean).sum(-1)


class _RecordGuide(Messenger):
    def __init__(self, owner: FreeBits):
        super().__init__()
        self.owner = owner

    def _postprocess_message(self, msg):
        if msg["type"] == "sample" and not msg["is_observed"]:
            self.owner.guide_fns[msg["name"]] = msg["fn"]


class _AddCorrection(Messenger):
    def __init__(self, owner: FreeBits):
        super().__init__()
        self.owner = owner

    def _postprocess_message(self, msg):
        if msg["type"] != "sample" or msg["is_observed"] or self.owner.data_plate is None:
            return
        extra = self.owner.correction(msg)
        if extra is not None:
            # Inside the plates of the site: the loss gains +relu(...), i.e. log factor -relu.
            pyro.factor(f"_free_bits_{msg['name']}", -extra.expand(msg["fn"].batch_shape))


class _FreeBitsProgram(torch.nn.Module):
    def __init__(self, program: Callable, handler: Messenger):
        super().__init__()
        self.program = program
        self.handler = handler

    def forward(self, *batch):
        with self.handler:
            return self.program(*batch)
