"""Training objectives other than the ELBO, used during training only: composable terms.

A term changes what training optimizes, never what validation, evaluation or a diagnostic
measures (they use the programs as given: the true ELBO). Two are built in:

- :class:`KLWarmup` (Bowman et al. 2016, "Generating sentences from a continuous space", CoNLL;
  Sønderby et al. 2016, "Ladder variational autoencoders", NeurIPS) trains on
  E_q[log p(x | z)] - beta * KL(q(z | x) || p(z)) with beta rising linearly from 0 to 1 over the
  first ``epochs`` epochs, so that the decoder learns to use z before the KL term can push q
  onto the prior (posterior collapse). Every latent site's ``scale`` is multiplied by beta in
  both model and guide: the Monte Carlo estimators then weight log p(z) - log q(z) by beta, and
  ``TraceMeanField_ELBO`` its closed-form KL (which needs equal scales on both sides).
- :class:`FreeBits` (Kingma et al. 2016).

The term protocol (:class:`ObjectiveTerm`), for a term of your own: a frozen object with

``programs(model, guide, context) -> (model, guide)``
    the programs training runs (wrapped in handlers); ``context`` is a :class:`TermContext`:
    the data plate, the steps per epoch and ``context.step()``, the optimizer step the loss
    is computed for (``None`` outside training: the pre-flight runs and the first trace).
``columns(context) -> dict``
    history columns for the epoch that just ended (``context.step()``: its last step); they
    say when ``train_elbo`` is not the ELBO.
``settings() -> dict``
    what the run records (JSON values; compared by a resume).
``recordable : bool``
    whether a recorded or compiled step keeps the term right (a weight that changes with the
    step is read once by a recording: such terms train eagerly).
``warmup_epochs : int``
    epochs early stopping waits out (the objective is still changing).

A weight that follows the step is a pure function of it (:meth:`KLWarmup.weight`), read by
the handler at each site: no handler is changed per step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import pyro
import torch
from pyro.poutine.messenger import Messenger

from ppl_vae.programs.util import unwrap_distribution

__all__ = ["FreeBits", "KLWarmup", "ObjectiveTerm", "TermContext", "term_option",
           "TERMS"]


def term_option(default, doc: str, *, flag: str | None = None, choices=None, cli=None):
    """A declared field of a term (its default, one-line doc, allowed values, CLI flag and the
    flag's ``text -> value``): :mod:`ppl_vae.train.options` builds the CLI flags and the docs
    table from them."""
    return field(default=default, metadata={"doc": doc, "flag": flag, "choices": choices,
                                            "cli": cli})


@runtime_checkable
class ObjectiveTerm(Protocol):
    """What ``Objective(terms=...)`` takes; see the module docstring."""

    recordable: bool
    warmup_epochs: int

    def programs(self, model: Callable, guide: Callable,
                 context: TermContext) -> tuple[Callable, Callable]: ...

    def columns(self, context: TermContext) -> dict: ...

    def settings(self) -> dict: ...


@dataclass(frozen=True)
class TermContext:
    """What a term knows of the run: the data plate's name, the optimizer steps per epoch, and
    ``step()``: the step the next loss is for (None outside training)."""

    data_plate: str
    steps_per_epoch: int
    step: Callable[[], int | None]


def _check_count(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


@dataclass(frozen=True)
class KLWarmup:
    """KL warm-up: the latent sites' terms weighted by ``weight(step)``, rising linearly from
    1 / (epochs * steps per epoch) to 1 over the first ``epochs`` epochs.

    Parameters
    ----------
    epochs : int
        Epochs of warm-up (>= 1).
    """

    epochs: int = term_option(0, "KL warm-up: latent terms weighted 0 -> 1 over these epochs "
                              "(0: none)", flag="--kl-warmup-epochs",
                              cli={"type": int, "metavar": "EPOCHS"})
    # A recorded step would keep the first step's weight (a Python number in each site's scale).
    recordable = False

    def __post_init__(self):
        _check_count("kl_warmup_epochs", self.epochs, 1)

    @property
    def warmup_epochs(self) -> int:
        return self.epochs

    @staticmethod
    def weight(step: int | None, warmup_steps: int) -> float:
        """beta at optimizer step ``step`` (0-based): min(1, (step + 1) / warmup_steps); 1
        outside training (``step`` None)."""
        if step is None:
            return 1.0
        return min(1.0, (int(step) + 1) / max(1, int(warmup_steps)))

    def programs(self, model, guide, context: TermContext):
        steps = self.epochs * context.steps_per_epoch
        beta = _StepWeight(context.step, steps)
        return _Handled(model, _ScaleLatents(beta)), _Handled(guide, _ScaleLatents(beta))

    def columns(self, context: TermContext) -> dict:
        steps = self.epochs * context.steps_per_epoch
        return {"kl_weight": self.weight(context.step(), steps)}

    def settings(self) -> dict:
        return {"kl_warmup_epochs": self.epochs}


class _StepWeight:
    """beta as a function of the step the context reports (read at each site)."""

    def __init__(self, step: Callable[[], int | None], warmup_steps: int):
        self.step, self.warmup_steps = step, warmup_steps

    def __call__(self) -> float:
        return KLWarmup.weight(self.step(), self.warmup_steps)


class _ScaleLatents(Messenger):
    """Scale every latent (non-observed) sample site by ``beta()``."""

    def __init__(self, beta: Callable[[], float]):
        super().__init__()
        self.beta = beta

    def _process_message(self, msg):
        if msg["type"] == "sample" and not msg["is_observed"]:
            beta = self.beta()
            if beta != 1.0:
                msg["scale"] = msg["scale"] * beta


class _Handled(torch.nn.Module):
    """A Pyro program run under a handler (a ``torch.nn.Module`` so that the ELBO module owns
    the program's parameters, as :class:`~ppl_vae.programs.handlers.ScaledProgram` does)."""

    def __init__(self, program: Callable, handler: Messenger):
        super().__init__()
        self.program = program
        self.handler = handler

    def forward(self, *batch):
        with self.handler:
            return self.program(*batch)


@dataclass(frozen=True)
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
    distributions are recorded by the wrapped guide and read by the wrapped model. Active from
    the first training step on.

    Parameters
    ----------
    nats : float
        lambda, per group (> 0).
    per : {"dim", "site"}
        The groups: every dimension of every local latent site, or every site.
    """

    nats: float = term_option(None, "free bits: no latent group pushed below NATS of KL in "
                              "training (none: the plain ELBO)", flag="--free-bits",
                              cli={"type": float, "metavar": "NATS"})
    per: str = term_option("dim", "free bits' groups: each latent dimension, or each site",
                           flag="--free-bits-per", choices=("dim", "site"))
    # The correction's shape is fixed by a recording: free bits train eagerly.
    recordable = False
    warmup_epochs = 0

    def __post_init__(self):
        nats = self.nats
        if isinstance(nats, bool) or not isinstance(nats, int | float):
            raise TypeError(f"free_bits must be a real number, got {nats!r} "
                            f"({type(nats).__name__})")
        if not math.isfinite(nats) or nats <= 0:
            raise ValueError(f"free_bits must be finite and > 0, got {nats}")
        object.__setattr__(self, "nats", float(nats))
        if self.per not in ("dim", "site"):
            raise ValueError(f"free_bits_per must be 'dim' or 'site', got {self.per!r}")

    def programs(self, model, guide, context: TermContext):
        run = _FreeBitsRun(self, context)
        return _Handled(model, _AddCorrection(run)), _Handled(guide, _RecordGuide(run))

    def columns(self, context: TermContext) -> dict:
        return {"free_bits": self.nats}  # train_elbo is the free-bits objective

    def settings(self) -> dict:
        return {"free_bits": self.nats, "free_bits_per": self.per}


class _FreeBitsRun:
    """One run's free bits: the guide's distributions of the current step."""

    def __init__(self, term: FreeBits, context: TermContext):
        self.nats, self.per, self.context = term.nats, term.per, context
        self.guide_fns: dict = {}

    def correction(self, msg) -> torch.Tensor | None:
        """relu(lambda - batch-mean KL) summed over groups, shaped to broadcast over the data
        plate (one share per point), or None for a site outside the data plate."""
        frame = next((f for f in msg["cond_indep_stack"]
                      if f.name == self.context.data_plate), None)
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
    def __init__(self, run: _FreeBitsRun):
        super().__init__()
        self.run = run

    def _postprocess_message(self, msg):
        if msg["type"] == "sample" and not msg["is_observed"]:
            self.run.guide_fns[msg["name"]] = msg["fn"]


class _AddCorrection(Messenger):
    def __init__(self, run: _FreeBitsRun):
        super().__init__()
        self.run = run

    def _postprocess_message(self, msg):
        if msg["type"] != "sample" or msg["is_observed"] or self.run.context.step() is None:
            return
        extra = self.run.correction(msg)
        if extra is not None:
            # Inside the plates of the site: the loss gains +relu(...), i.e. log factor -relu.
            pyro.factor(f"_free_bits_{msg['name']}", -extra.expand(msg["fn"].batch_shape))


# The built-in terms, in the order the CLI lists their flags.
TERMS = (KLWarmup, FreeBits)
