"""The inference gap of an amortized guide and its split (Cremer, Li & Duvenaud 2018,
"Inference suboptimality in variational autoencoders", ICML).

log p(x) - ELBO(q_amortized) = [log p(x) - ELBO(q*)] + [ELBO(q*) - ELBO(q_amortized)]
                             =  approximation gap   +  amortization gap

where q* is the best member of the guide's family for that data point. q* is found by
optimising free per-point copies of the guide's distribution parameters, starting from the
encoder's output; log p(x) is estimated by the importance-weighted bound (Burda et al. 2016)
with many draws from the better of the two guides.
"""

from __future__ import annotations

import contextlib
import warnings

import pandas as pd
import pyro
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch.distributions import biject_to

from ppl_vae.data.tensors import as_tensors, check_finite
from ppl_vae.estimators._bound import log_mean_exp
from ppl_vae.evaluation.chunks import ELEMENT_BUDGET, chunk_draws, global_draws, plan_points
from ppl_vae.evaluation.pointwise import draw
from ppl_vae.programs.analysis import analyze_programs
from ppl_vae.programs.random import seeded
from ppl_vae.programs.util import module_parameters, program_dtype, unwrap_distribution
from ppl_vae.recording.compile import TraceOnce
from ppl_vae.recording.jit import mc_loss

__all__ = ["inference_gaps", "log_evidence", "RefinedGuide"]


def log_evidence(model, guide, data, *, num_samples: int = 1000, data_plate: str = "data",
                 seed: int | None = 0) -> pd.DataFrame:
    """Per data point: importance-weighted log p(x_i), the ELBO and the ELBO gap.

    Returns
    -------
    pandas.DataFrame
        One row per data point: ``log_px`` = log mean_k p(x_i, z_k) / q(z_k | x_i) with K =
        ``num_samples`` (a lower bound that tightens with K), ``elbo`` = mean_k log ratio and
        ``elbo_gap`` = log_px - elbo (nats).
    """
    dtype, device = program_dtype(model, guide)
    batch = as_tensors(data, dtype=dtype, device=device, name="data")
    check_finite(batch)
    # Chunks as the programs' analysis plans them (all N points, draws one by one where they
    # do not vectorize, enumerated sites summed out), the global draws shared by all chunks.
    plan = plan_points(model, guide, batch, num_draws=num_samples, data_plate=data_plate)
    globals_ = global_draws(plan, model, guide, batch, num_draws=num_samples, seed=seed)
    lw = torch.cat([chunk_draws(plan, model, guide, batch, start, num_draws=num_samples,
                                seed=seed, globals_=globals_).log_weights.double()
                    for start in plan.starts()], 1)
    iw, elbo = log_mean_exp(lw, 0), lw.mean(0)
    return pd.DataFrame({"log_px": iw.cpu().numpy(), "elbo": elbo.cpu().numpy(),
                         "elbo_gap": (iw - elbo).cpu().numpy()})


class RefinedGuide(Messenger):
    """Replace the distribution of every local guide site by one with free parameters.

    The parameters start at the values the guide produced on the batch and are held as
    unconstrained tensors (``self.free``), one copy per data point, so optimising them fits
    q separately for each point. Global sites are left to the guide. ``self.axes`` gives each
    free tensor's data-point axis (for per-point bookkeeping).
    """

    def __init__(self, init_trace, data_plate: str):
        super().__init__()
        self.specs, self.free, self.axes = {}, {}, {}
        empty = []
        for name, site in init_trace.nodes.items():
            if site["type"] != "sample" or site_is_subsample(site) or site["is_observed"]:
                continue
            dim = next((f.dim for f in site["cond_indep_stack"] if f.name == data_plate), None)
            if dim is None:
                continue
            fn, reinterpreted, mask = unwrap_distribution(site["fn"], through_mask=True)
            if not fn.has_rsample:
                raise ValueError(f"site {name!r}: its guide distribution {type(fn).__name__} has "
                                 "no reparameterised sampler, so it cannot be refined by gradient")
            params = {}
            batch_shape = fn.batch_shape
            for key, constraint in fn.arg_constraints.items():
                if key not in fn.__dict__ or not isinstance(fn.__dict__[key], torch.Tensor):
                    continue  # lazily derived parametrisations (probs vs logits) are skipped
                value = fn.__dict__[key].detach()
                # One copy per point even where the guide shares a parameter across points.
                event = value.shape[value.dim() - constraint.event_dim:]
                value = value.expand(batch_shape + event)
                transform = biject_to(constraint)
                # A Parameter, so that the refinement's recorded step takes it as an input.
                free = torch.nn.Parameter(transform.inv(value).clone())
                params[key] = (free, transform)
                self.free[f"{name}.{key}"] = free
                self.axes[f"{name}.{key}"] = len(site["fn"].batch_shape) + dim
            if not params:
                empty.append(f"{name} ({type(fn).__name__})")
            self.specs[name] = (type(fn), params, reinterpreted, mask)
        if empty:
            raise ValueError(f"site(s) {', '.join(empty)}: no tensor parameters to refine per "
                             "point (the distribution derives them lazily); inference_gaps needs "
                             "distributions built from explicit parameters such as Normal(loc, "
                             "scale)")

    def _pyro_sample(self, msg):
        spec = self.specs.get(msg["name"])
        if spec is None or msg["is_observed"]:
            return
        cls, params, reinterpreted, mask = spec
        fn = cls(**{k: t(free) for k, (free, t) in params.items()}, validate_args=False)
        if mask is not None:
            fn = fn.mask(mask)
        if reinterpreted:
            fn = fn.to_event(reinterpreted)
        shape = msg["fn"].batch_shape
        msg["fn"] = fn.expand(torch.broadcast_shapes(shape, fn.batch_shape))

    def parameters(self):
        return list(self.free.values())

    def snapshot(self) -> dict:
        return {k: v.detach().clone() for k, v in self.free.items()}

    def keep(self, snapshot: dict, rows: torch.Tensor) -> None:
        """Copy the current values of the points ``rows`` (bool, (N,)) into ``snapshot``."""
        for key, value in self.free.items():
            snapshot[key] = torch.where(self._rows(rows, key), value.detach(), snapshot[key])

    def restore(self, snapshot: dict) -> None:
        with torch.no_grad():
            for key, value in self.free.items():
                value.copy_(snapshot[key])

    def _rows(self, rows, key):
        value, axis = self.free[key], self.axes[key]
        shape = [1] * value.dim()
        shape[axis] = rows.shape[0]
        return rows.reshape(shape)


def inference_gaps(model, guide, data, *, num_points: int = 32, steps: int = 5000,
                   lr: float = 0.05, num_particles: int = 16, num_samples: int = 1000,
                   check_every: int = 25, tolerance: float = 1e-3, num_check: int = 64,
                   data_plate: str = "data", seed: int | None = 0) -> pd.DataFrame:
    """Split each point's inference gap into amortization and approximation parts.

    Parameters
    ----------
    model, guide : callable
        Trained programs. The guide's local sites must have reparameterised distributions.
    data : tensor, ndarray, DataFrame or tuple
        Data; the first ``num_points`` rows are used.
    steps : int
        At most this many Adam steps of the per-point refinement (``num_particles`` vectorized
        ELBO particles, initial learning rate ``lr``).
    check_every, tolerance, num_check : int, float, int
        Every ``check_every`` steps each point's ELBO is estimated with ``num_check`` draws
        (the same random numbers each time, so that estimates are comparable); a point whose
        ELBO did not rise by more than ``tolerance`` nats for two checks has stopped improving.
        When every point has, the best parameters so far are restored and the learning rate is
        divided by 5; the refinement ends when that no longer helps at lr / 100 (each point keeps
        the parameters of its best check) or after ``steps`` steps.
    num_samples : int
        Draws for the final ELBO and importance-weighted estimates (fresh random numbers).

    Returns
    -------
    pandas.DataFrame
        One row per point: ``elbo_amortized``, ``elbo_refined``, ``log_px`` (the IWAE estimate
        with the refined q, the one closest to the posterior, hence the least noisy),
        ``amortization_gap`` = elbo_refined - elbo_amortized, ``approximation_gap`` = log_px -
        elbo_refined, ``inference_gap`` = their sum (nats), ``refine_steps`` (steps taken).
        Where the refined ELBO came out below the amortized one, the amortized q is kept as q*.
    """
    dtype, device = program_dtype(model, guide)
    batch = as_tensors(data, dtype=dtype, device=device, name="data")
    check_finite(batch)
    analysis = analyze_programs(model, guide, batch, data_plate=data_plate)
    if analysis.chunk_points is not None:
        raise ValueError(
            f"inference gaps refine each point's q on a slice of the rows; the programs fix "
            f"which points a pass holds ({analysis.data_plate.sizing} plate "
            f"{analysis.data_plate.name!r}" + (f", per-row parameters {list(analysis.per_row_params)}"
                                               if analysis.per_row_params else "") + ")")
    batch = tuple(t[:num_points] for t in batch)
    data_plate = analysis.data_plate.name
    with seeded(seed):
        # The analysis decides how draws are taken: a guide like the deep Markov model's
        # (torch.cat of an RNN state and z) cannot draw over an extra plate, so one by one.
        nesting, vectorized = analysis.nesting, analysis.vectorizes
        with torch.no_grad(), pyro.validation_enabled(False):
            init = poutine.trace(guide).get_trace(*batch)
        refine = RefinedGuide(init, data_plate)
        if not refine.specs:
            raise ValueError(f"guide: no local latent sites inside the plate {data_plate!r}")
        refined_guide = refine(guide)
        draws = {"nesting": nesting, "data_plate": data_plate, "vectorized": vectorized,
                 "enumerate_model": bool(analysis.enumerated)}
        taken = _refine(model, guide, refined_guide, refine, batch, steps=steps, lr=lr,
                        num_particles=num_particles, check_every=check_every,
                        tolerance=tolerance, num_check=num_check, draws=draws)
        amortized = _log_weights(model, guide, batch, num_samples, draws)
        refined = _log_weights(model, refined_guide, batch, num_samples, draws)
    elbo_a, elbo_r = amortized.mean(0), refined.mean(0)
    iw_a, iw_r = log_mean_exp(amortized, 0), log_mean_exp(refined, 0)
    # Where refinement did not help (a noisy optimiser), the amortized q stays the best one.
    better = elbo_r >= elbo_a
    elbo_r = torch.where(better, elbo_r, elbo_a)
    log_px = torch.where(better, iw_r, iw_a)
    table = pd.DataFrame({
        "elbo_amortized": elbo_a.cpu().numpy(), "elbo_refined": elbo_r.cpu().numpy(),
        "log_px": log_px.cpu().numpy(),
    })
    table["amortization_gap"] = table["elbo_refined"] - table["elbo_amortized"]
    table["approximation_gap"] = table["log_px"] - table["elbo_refined"]
    table["inference_gap"] = table["log_px"] - table["elbo_amortized"]
    table["refine_steps"] = taken
    return table


def _refine(model, guide, refined_guide, refine, batch, *, steps, lr, num_particles,
            check_every, tolerance, num_check, draws: dict) -> int:
    """Adam on the per-point parameters until every point's ELBO stops improving (see
    :func:`inference_gaps`); leaves each point at its best check. Returns the steps taken.

    The step is recorded (:class:`~ppl_vae.recording.compile.TraceOnce`, checked against the
    eager ELBO, eager where the programs cannot be recorded) with the trained programs'
    parameters held fixed: thousands of steps then replay the decoder on the draws and its
    gradient for the per-point parameters alone, without Pyro's handlers, the encoder (whose
    output the refined guide replaces) or the gradients of the trained weights."""
    elbo = Trace_ELBO(num_particles=num_particles, vectorize_particles=draws["vectorized"],
                      max_plate_nesting=draws["nesting"])
    params = refine.parameters()

    def objective(*batch):
        # Trace_ELBO's own differentiable_loss reads the loss on the host (its NaN warning),
        # which no recording can replay: the same surrogate, kept on the device.
        return mc_loss(elbo, model, refined_guide, *batch)

    def point_elbos(*batch):
        return draw(model, refined_guide, batch, num_samples=num_check, **draws).log_weights

    holder = (torch.nn.ParameterList(params),)
    loss = TraceOnce(objective, holder, fallback=objective, warn=False)
    check = TraceOnce(point_elbos, holder, fallback=point_elbos, warn=False)
    with _held_fixed(model, guide):
        return _refine_loop(refine, batch, loss, check, params, steps=steps, lr=lr,
                            check_every=check_every, tolerance=tolerance)


@contextlib.contextmanager
def _held_fixed(*programs):
    """The programs' trained parameters (their modules' and the param store's) without
    ``requires_grad`` for the block, then as they were."""
    held = {id(p): p for p in module_parameters(*programs).values()}
    # The store's unconstrained leaves: a constrained param's value is computed from its leaf,
    # and only a leaf's requires_grad can be set.
    held.update({id(p): p for _, p in pyro.get_param_store().named_parameters()
                 if p.requires_grad})
    for p in held.values():
        p.requires_grad_(False)
    try:
        with warnings.catch_warnings():
            # pyro.module's note that a parameter without requires_grad stays out of the
            # param store: these are held fixed on purpose, for the block only.
            warnings.filterwarnings("ignore", ".* was not registered in the param store")
            yield
    finally:
        for p in held.values():
            p.requires_grad_(True)


def _refine_loop(refine, batch, loss, check, params, *, steps, lr, check_every,
                 tolerance) -> int:
    """:func:`_refine`'s loop: ``loss(*batch)`` its (recorded) step, ``check(*batch)`` the
    (recorded) log weights (K, N) of its checks."""
    optim = torch.optim.Adam(params, lr=lr)
    check_seed = int(torch.randint(0, 2**31 - 1, ()))

    def score():
        # Common random numbers: the same draws' noise on every check, so two checks differ
        # through the parameters only.
        with seeded(check_seed), torch.no_grad():
            return check(*batch).double().mean(0)

    best, kept = score(), refine.snapshot()
    stale = torch.zeros_like(best, dtype=torch.long)
    taken, rate = 0, lr
    while taken < steps:
        for _ in range(min(check_every, steps - taken)):
            value = loss(*batch)
            # Gradients only for the per-point copies: the trained programs stay untouched.
            for p, g in zip(params, torch.autograd.grad(value, params), strict=True):
                p.grad = g
            optim.step()
            taken += 1
        current = score()
        improved = current > best + tolerance
        refine.keep(kept, improved)
        best = torch.where(improved, current, best)
        stale = torch.where(improved, torch.zeros_like(stale), stale + 1)
        if bool((stale >= 2).all()):
            # Every point has stopped improving at this rate: restart from the best points at a
            # smaller one (Adam's steps do not shrink with the gradient, so near the optimum a
            # fixed rate keeps jittering around it), until the smallest rate has been tried.
            if rate <= lr / 100:
                break
            rate /= 5
            refine.restore(kept)
            optim = torch.optim.Adam(params, lr=rate)
            stale.zero_()
    refine.restore(kept)
    return taken


def _log_weights(model, guide, batch, num_samples, draws: dict) -> torch.Tensor:
    """Log importance weights (K, N) of K draws, drawn in blocks of draws so that memory stays
    near ELEMENT_BUDGET elements per drawn tensor (1000 draws of 32 MNIST rows would be 100 MB
    per tensor at once)."""
    width = max(1, sum(t[0].numel() for t in batch)) * batch[0].shape[0]
    block = max(1, ELEMENT_BUDGET // width)
    parts = [draw(model, guide, batch, num_samples=min(block, num_samples - k),
                  **draws).log_weights.double()
             for k in range(0, num_samples, block)]
    return torch.cat(parts)
