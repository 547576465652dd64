"""``compare``: several trained runs on the same held-out points, as one table and one figure.

Leave-one-out (``arviz_stats.loo``) does not apply to amortized local latents: each point has
its own latent, so "leaving a point out" removes its latent too and the PSIS-LOO weights are
the guide's importance ratios, not leave-one-out ratios. Runs are compared instead by their
held-out importance-weighted log p(x) per point, paired over the same points: the standard
error of a mean paired difference ``sd(d_i) / sqrt(N)`` is far below that of either mean when
the runs agree on which points are hard.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyro
import torch
from scipy.special import logsumexp

from ppl_vae.data.tensors import as_tensors, check_finite
from ppl_vae.diagnostics.latent import active_units, latent_table
from ppl_vae.diagnostics.psis import psis_table
from ppl_vae.evaluation.chunks import chunk_draws, global_draws, map_chunks, plan_points
from ppl_vae.evaluation.latents import eval_mode
from ppl_vae.programs.util import program_dtype
from ppl_vae.train.result import FitResult
from ppl_vae.train.run_dir import load_run

__all__ = ["Comparison", "compare", "paired_difference"]

BAD_KHAT = 0.7
MIN_PSIS_DRAWS = 25  # PSIS fits the tail of K / 5 draws and needs 5 of them


def paired_difference(a, b) -> tuple[float, float]:
    """Mean of ``a_i - b_i`` and its standard error ``sd(a - b) / sqrt(N)`` (``ddof=1``)."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if d.ndim != 1 or len(d) < 2:
        raise ValueError(f"paired differences need two 1-D arrays of >= 2 points, got {d.shape}")
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))


@dataclass
class Comparison:
    """What :func:`compare` returns.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per run (index: its name): ``log_px`` (mean held-out importance-weighted log
        p(x) per point, nats) and ``log_px_se``; ``diff`` and ``diff_se``: the paired difference
        to the reference run (the first) and its standard error; ``elbo``, ``kl``,
        ``active_units``, ``khat_bad_share`` (share of points with k-hat > 0.7: log p(x) of
        those points is unreliable; NaN with fewer than 25 samples), ``train_seconds``,
        ``epochs``.
    pointwise : pandas.DataFrame
        ``log_px`` per point (rows) and run (columns).
    """

    table: pd.DataFrame
    pointwise: pd.DataFrame

    def figure(self):
        """Two panels: mean log p(x) per run and the paired difference to the reference, each
        with +- 2 standard errors."""
        import matplotlib.pyplot as plt

        t = self.table
        fig, axes = plt.subplots(1, 2, figsize=(9, 0.5 + 0.45 * len(t)), sharey=True)
        y = np.arange(len(t))
        axes[0].errorbar(t["log_px"], y, xerr=2 * t["log_px_se"], fmt="o")
        axes[0].set_xlabel("held-out log p(x) per point (nats)")
        axes[1].errorbar(t["diff"], y, xerr=2 * t["diff_se"], fmt="o", color="C1")
        axes[1].axvline(0.0, color="grey", lw=0.8)
        axes[1].set_xlabel(f"paired difference to {t.index[0]!r} (nats, +-2 se)")
        axes[0].set_yticks(y, [str(i) for i in t.index])
        axes[0].invert_yaxis()
        fig.tight_layout()
        return fig

    def __repr__(self) -> str:
        return self.table.to_string(float_format=lambda v: f"{v:.4g}")

    def _repr_html_(self) -> str:
        return self.table.to_html(float_format=lambda v: f"{v:.4g}")


def _runs(runs) -> dict:
    """``{name: FitResult or run folder}``."""
    items = runs.items() if isinstance(runs, Mapping) else \
        [(None, r) for r in runs] if isinstance(runs, Sequence) and not isinstance(runs, str) \
        else None
    if items is None:
        raise TypeError("runs must be a list or dict of FitResults or run folders")
    out = {}
    for i, (name, run) in enumerate(items):
        if not isinstance(run, FitResult | str | Path):
            raise TypeError(f"runs[{name or i}] is a {type(run).__name__}, not a FitResult or a "
                            "run folder")
        label = name or (Path(run).name if isinstance(run, str | Path) else f"run {i}")
        out[label if label not in out else f"{label} ({i})"] = run
    if len(out) < 2:
        raise ValueError(f"compare needs at least two runs, got {len(out)}")
    return out


@contextlib.contextmanager
def _own_param_store():
    """Each run is evaluated with its own parameters in Pyro's global param store (programs
    that share ``pyro.param`` / ``pyro.module`` names would otherwise read one another's); the
    caller's store is put back afterwards."""
    store = pyro.get_param_store()
    saved = store.get_state()
    try:
        yield saved["constraints"]
    finally:
        store.clear()
        store.set_state(saved)


def _activate(run, constraints: dict, model, guide):
    """(model, guide, history) of one run, its parameters alone in the param store."""
    pyro.clear_param_store()
    if not isinstance(run, FitResult):
        loaded = load_run(run, model=model, guide=guide)
        return loaded.model, loaded.guide, loaded.history
    params = run.params.get("pyro_params", {})
    unknown = [n for n in params if n not in constraints]
    if unknown:
        raise ValueError(f"compare: the param store does not know the constraints of {unknown}; "
                         "compare run folders (FitResult.save) instead")
    pyro.get_param_store().set_state({
        "params": {n: v.detach().clone().requires_grad_() for n, v in params.items()},
        "constraints": {n: constraints[n] for n in params}})
    for key, program in (("model", run.model), ("guide", run.guide)):
        if key in run.params and isinstance(program, torch.nn.Module):
            program.load_state_dict(run.params[key])
    return run.model, run.guide, run.history


def _held_out(runs: dict, data, model, guide):
    """The data: given, or the test split of the run folders, which must hold the same."""
    if data is not None:
        return data
    missing = [name for name, run in runs.items() if isinstance(run, FitResult)]
    if missing:
        raise ValueError(f"data: pass the held-out data (runs {missing} are FitResults, which "
                         "carry none)")
    folders = {name: load_run(run, model=model, guide=guide) for name, run in runs.items()}
    (first_name, first), *others = folders.items()
    held = as_tensors(first.data("test"))
    for name, folder in others:
        other = as_tensors(folder.data("test"))
        if len(other) != len(held) or not all(a.shape == b.shape and torch.equal(a, b.to(a.dtype))
                                              for a, b in zip(held, other, strict=True)):
            raise ValueError(f"data: run {name!r} has another test split than {first_name!r} "
                             f"({folder.config['data']!r}, {first.config['data']!r}); pass the "
                             "held-out data to compare them on")
    return first.data("test")


def _one_run(model, guide, data, num_samples: int, seed) -> dict:
    dtype, device = program_dtype(model, guide)
    tensors = as_tensors(data, dtype=dtype, device=device, name="data")
    check_finite(tensors)
    with eval_mode(model, guide), torch.no_grad():
        plan = plan_points(model, guide, tensors, num_draws=num_samples)
        globals_ = global_draws(plan, model, guide, tensors, num_draws=num_samples, seed=seed)

        def one(start):
            d = chunk_draws(plan, model, guide, tensors, start, num_draws=num_samples, seed=seed,
                            globals_=globals_)
            # In the programs' dtype: psis reads its rounding level from it.
            return {"lw": d.log_weights.T.cpu().numpy(),
                    "kl": (d.log_q - d.log_prior).double().mean(0).cpu().numpy()}

        parts = map_chunks(one, plan.starts())
        table = latent_table(model, guide, tensors, data_plate=plan.data_plate, seed=seed)
    lw = np.concatenate([p["lw"] for p in parts])
    if lw.shape[1] >= MIN_PSIS_DRAWS:
        points = psis_table(lw, np.arange(len(lw)))
    else:  # too few draws for a tail fit: no k-hat, the estimates alone
        lw = lw.astype(np.float64)
        points = pd.DataFrame({"k_hat": np.nan, "elbo": lw.mean(1),
                               "log_px": logsumexp(lw, axis=1) - np.log(lw.shape[1])})
    return {"points": points, "kl": float(np.concatenate([p["kl"] for p in parts]).mean()),
            "active_units": active_units(table), "has_global": plan.has_global}


def compare(runs, data=None, *, model=None, guide=None, num_samples: int = 100,
            seed: int | None = 0) -> Comparison:
    """Compare trained runs on the same held-out points.

    Parameters
    ----------
    runs : list or dict of FitResult or run folder
        Two or more; a dict names them (else a folder's name, or ``run i``). The first is the
        reference of the paired differences.
    data : tensor, ndarray, DataFrame or tuple, optional
        Held-out points, the same for every run. Default: the test split of the run folders
        (which must share their data).
    model, guide : optional
        For run folders that name user programs (as :func:`ppl_vae.load`).
    num_samples : int
        Importance samples K per point: log p(x_i) is estimated by log mean_k p(x_i, z_k) /
        q(z_k | x_i) (the IWAE bound, tighter with K).
    seed : int, optional
        Seeds the draws of every run alike.

    Returns
    -------
    Comparison
        ``.table``, ``.pointwise`` and ``.figure()``.

    Notes
    -----
    Each run is evaluated with its own parameters alone in Pyro's param store (a FitResult's
    ``params``, a folder's trained values); the caller's store is restored afterwards.
    """
    entries = _runs(runs)
    rows, pointwise = {}, {}
    with _own_param_store() as constraints:
        data = _held_out(entries, data, model, guide)
        results = {}
        for name, run in entries.items():
            m, g, history = _activate(run, constraints, model, guide)
            results[name] = (_one_run(m, g, data, num_samples, seed), history)
    for name, (result, history) in results.items():
        if result["has_global"]:
            warnings.warn(f"compare: run {name!r} has global latents: its log p(x) per point is "
                          "conditional on the shared global draws (their KL is not in it)",
                          UserWarning, stacklevel=2)
        p = result["points"]
        pointwise[name] = p["log_px"].to_numpy()
        n = len(p)
        rows[name] = {
            "log_px": float(p["log_px"].mean()),
            "log_px_se": float(p["log_px"].std(ddof=1) / np.sqrt(n)),
            "elbo": float(p["elbo"].mean()), "kl": result["kl"],
            "active_units": result["active_units"],
            "khat_bad_share": float((p["k_hat"] > BAD_KHAT).mean())
            if p["k_hat"].notna().all() else np.nan,
            "train_seconds": float(history["seconds"].sum()) if "seconds" in history else np.nan,
            "epochs": int(history["epoch"].max()) if "epoch" in history and len(history) else 0,
        }
    reference = next(iter(pointwise))
    for name in rows:
        rows[name]["diff"], rows[name]["diff_se"] = paired_difference(pointwise[name],
                                                                      pointwise[reference])
    columns = ["log_px", "log_px_se", "diff", "diff_se", "elbo", "kl", "active_units",
               "khat_bad_share", "train_seconds", "epochs"]
    table = pd.DataFrame.from_dict(rows, orient="index")[columns]
    table.index.name = "run"
    return Comparison(table, pd.DataFrame(pointwise))
