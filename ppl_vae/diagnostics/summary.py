"""``diagnose``: every posterior check on one trained model/guide (or several runs), with a
plain-language verdict per check."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import arviz_stats
import numpy as np
import pandas as pd

from ppl_vae.diagnostics.calibration import calibration_table
from ppl_vae.diagnostics.collapse import Reconstruction, reconstruction_gain, reference_value
from ppl_vae.diagnostics.convergence import Convergence, convergence
from ppl_vae.diagnostics.gaps import inference_gaps
from ppl_vae.diagnostics.latent import kl_summary, latent_table, mutual_information
from ppl_vae.diagnostics.psis import KHAT_THRESHOLDS, joint_khat, khat_shares, pointwise_psis
from ppl_vae.diagnostics.sbc import SBCResult, sbc
from ppl_vae.diagnostics.verdicts import (
    ADVICE,
    STATUSES,
    calibration_rows,
    collapse_rows,
    convergence_row,
    row,
)
from ppl_vae.evaluation.arviz import runs_from, to_arviz

__all__ = ["STATUSES", "Diagnostics", "diagnose", "posterior_summary"]


@dataclass
class Diagnostics:
    """What :func:`diagnose` found.

    Attributes
    ----------
    tree : xarray.DataTree
        The ``to_arviz`` export the per-point checks were computed on.
    pointwise : pandas.DataFrame
        Per (chain, point): k-hat, category, PSIS ESS, log p(x) estimate, ELBO, ELBO gap.
    latent : pandas.DataFrame
        Per latent dimension: KL, activity, active.
    mutual_information : float
        I_q(x; z) in nats (NaN where it could not be computed).
    posterior : pandas.DataFrame
        ``arviz_stats.summary`` of the global latents and of the local latents of the worst
        points (ESS and R-hat meaningful only with several runs).
    gaps : pandas.DataFrame or None
        Amortization / approximation gaps on a subsample.
    sbc : SBCResult or None
    checks : pandas.DataFrame
        One row per check: ``check``, ``value``, ``status`` (ok / warning / failing), ``why``,
        ``advice`` (what to do next, empty when ok).
    calibration : pandas.DataFrame or None
        Per latent dimension: SBC ECDF band, interval coverage, z-scores and contraction
        (:func:`~ppl_vae.diagnostics.calibration.calibration_table`).
    convergence : Convergence or None
        The ELBO slope at the end of training (needs the training history).
    reconstruction : Reconstruction or None
        Reconstruction term against the decoder fed the prior mean.
    mi_reason : str or None
        Why the mutual information does not apply (no local latents), else None.
    num_points : int
    reference_mi : float or None
        I(x; z) of a reference model of the same kind, when one was given.
    """

    tree: object
    pointwise: pd.DataFrame
    latent: pd.DataFrame
    mutual_information: float
    posterior: pd.DataFrame
    gaps: pd.DataFrame | None = None
    sbc: SBCResult | None = None
    checks: pd.DataFrame = field(default_factory=pd.DataFrame)
    calibration: pd.DataFrame | None = None
    convergence: Convergence | None = None
    reconstruction: Reconstruction | None = None
    mi_reason: str | None = None
    num_points: int = 0
    reference_mi: float | None = None

    def summary(self) -> dict:
        """Headline numbers (floats)."""
        out = khat_shares(self.pointwise)
        out.update(kl_summary(self.latent))
        out["mean_elbo_gap"] = float(self.pointwise["elbo_gap"].mean())
        out["mutual_information"] = self.mutual_information
        if self.reconstruction is not None:
            out["recon_gain"] = self.reconstruction.gain
        return out

    def __str__(self) -> str:
        return self.checks.to_string(index=False)


def posterior_summary(tree, *, worst: list | None = None) -> pd.DataFrame:
    """``arviz_stats.summary`` of global latents and of local latents at the points ``worst``."""
    sites_global = json.loads(tree.attrs.get("global_sites", "[]"))
    sites_local = json.loads(tree.attrs.get("local_sites", "[]"))
    plate = tree.attrs.get("data_plate", "data")
    chains = tree["posterior"].sizes["chain"]
    kind = "all" if chains > 1 else "stats"
    frames = []
    if sites_global:
        frames.append(arviz_stats.summary(tree, var_names=sites_global, kind=kind,
                                          round_to="none"))
    if sites_local and worst:
        frames.append(arviz_stats.summary(tree, var_names=sites_local, kind=kind,
                                          coords={plate: list(worst)}, round_to="none"))
    return pd.concat(frames) if frames else pd.DataFrame()


def diagnose(model=None, guide=None, data=None, *, runs=None, num_draws: int = 200,
             gaps: bool = True, gap_points: int = 32, gap_steps: int = 5000,
             calibrate: bool = True, sbc_draws: int = 99, num_worst: int = 5,
             data_plate: str | None = None, seed: int | None = 0, settings: dict | None = None,
             tree=None, history=None, reference=None) -> Diagnostics:
    """Run every posterior check.

    Parameters
    ----------
    model, guide, data, runs, num_draws, data_plate, seed, settings
        As for :func:`ppl_vae.to_arviz` (``runs`` gives several chains).
    gaps : bool
        Also split the inference gap on ``gap_points`` points (at most ``gap_steps`` refinement
        steps; each point is refined until its ELBO stops improving).
    calibrate : bool
        Also run simulation-based calibration with ``sbc_draws`` guide draws per simulation.
    num_worst : int
        Points with the largest k-hat whose local latents enter ``posterior``.
    tree : xarray.DataTree, optional
        A ready ``to_arviz`` export to use instead of drawing a new one.
    history : pandas.DataFrame, optional
        ``fit``'s history, for the convergence check (taken from a ``FitResult`` model).
    reference : Diagnostics or mapping, optional
        A trained model of the same kind: its ``mutual_information`` is the yardstick of this
        one's (the report gives the fraction).

    Returns
    -------
    Diagnostics
        The checks and their verdicts; the latent, gap and SBC checks use the first run.
    """
    chains = runs_from(model, guide, runs)
    m0, g0, s0 = chains[0]
    if tree is None:
        tree = to_arviz(model, guide, data, runs=runs, num_draws=num_draws, seed=seed,
                        data_plate=data_plate, settings=settings)
    # The plate to_arviz resolved (or the one the given export was made with).
    data_plate = data_plate if data_plate is not None else tree.attrs["data_plate"]
    pointwise = pointwise_psis(tree)
    latent = latent_table(m0, g0, data, data_plate=data_plate, seed=seed)
    mi, mi_reason, recon = float("nan"), None, None
    try:
        mi = mutual_information(m0, g0, data, data_plate=data_plate, seed=seed)
    except ValueError as exc:
        mi_reason = _first_line(exc)
    if latent.shape[0]:
        try:
            recon = reconstruction_gain(m0, g0, data, data_plate=data_plate, seed=seed)
        except ValueError:
            recon = None  # a local prior without a mean: the check does not apply
    if history is None:
        history = getattr(model if runs is None else runs[0], "history", None)
    first = pointwise[pointwise["chain"] == pointwise["chain"].iloc[0]]
    worst = first.nlargest(num_worst, "k_hat")["point"].tolist()
    posterior = posterior_summary(tree, worst=worst)
    gap_table, sbc_result, skipped = None, None, []
    # The two optional checks need more of the programs (reparameterised local sites, a way to
    # feed simulations to the guide); when a model does not allow them the report says why.
    if gaps and latent.shape[0]:
        try:
            gap_table = inference_gaps(m0, g0, data, num_points=gap_points, steps=gap_steps,
                                       data_plate=data_plate, seed=seed)
        except ValueError as exc:
            skipped.append(_row("Inference gaps", "not computed", "warning", _first_line(exc)))
    if calibrate:
        try:
            sbc_result = sbc(m0, g0, data, num_draws=sbc_draws, data_plate=data_plate,
                             seed=seed)
        except ValueError as exc:
            skipped.append(_row("Simulation-based calibration", "not computed", "warning",
                                _first_line(exc)))
    result = Diagnostics(tree, pointwise, latent, mi, posterior, gap_table, sbc_result,
                         calibration=None if sbc_result is None else calibration_table(sbc_result),
                         convergence=convergence(history), reconstruction=recon,
                         mi_reason=mi_reason, num_points=int(pointwise["point"].nunique()),
                         reference_mi=reference_value(reference, "mutual_information"))
    result.checks = pd.concat([verdicts(result, num_chains=len(chains)), pd.DataFrame(skipped)],
                              ignore_index=True)
    return result


def _first_line(exc) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _row(check, value, status, why, advice=""):
    return row(check, value, status, why, advice)


def verdicts(diag: Diagnostics, *, num_chains: int = 1) -> pd.DataFrame:
    """Plain-language verdict for every check (thresholds stated in each ``why``)."""
    rows = [r for r in [convergence_row(diag.convergence)] if r is not None]
    s = khat_shares(diag.pointwise)
    hi, mid = s["share_khat_gt_0.7"], s["share_khat_gt_0.5"]
    if s["share_exact"] == 1.0:
        rows.append(_row("Pareto k-hat", "constant weights", "ok",
                         "the guide equals the posterior at every point (constant ratios)"))
    else:
        status = "failing" if hi > 0.1 else "warning" if hi > 0 or mid > 0.25 else "ok"
        rows.append(_row("Pareto k-hat", f"{mid:.1%} > 0.5, {hi:.1%} > 0.7", status,
                         "k-hat > 0.7 means q misses posterior mass there and importance "
                         "sampling (IWAE, reweighting) is unreliable; failing above 10% of points,"
                         " warning if any point is above 0.7 or over 25% above 0.5",
                         f"{ADVICE['family']}, or {ADVICE['particles']}"))
    joint = joint_khat(diag.tree)
    if joint is not None:
        worst = float(np.max(joint))
        status = ("ok" if worst <= KHAT_THRESHOLDS[0] else
                  "warning" if worst <= KHAT_THRESHOLDS[1] else "failing")
        rows.append(_row("Joint k-hat (global latents)",
                         "exact" if np.isneginf(worst) else f"{worst:.2f}", status,
                         "k-hat of the whole-data ratio p(x, z, globals) / q: the per-point k-hat "
                         "is conditional on the global draws, this one covers them too",
                         ADVICE["family"]))
    gap = float(diag.pointwise["elbo_gap"].mean())
    status = "ok" if gap < 1.0 else "warning" if gap < 5.0 else "failing"
    rows.append(_row("ELBO gap", f"{gap:.3f} nats per point", status,
                     "log p(x) (importance-weighted) minus the ELBO: what a better guide could "
                     "gain; ok below 1 nat, failing above 5",
                     f"{ADVICE['family']}, or {ADVICE['particles']}"))
    rows += collapse_rows(diag.latent, kl_summary(diag.latent), diag.mutual_information,
                          diag.mi_reason, max(diag.num_points, 2), diag.reconstruction,
                          diag.reference_mi)
    if diag.gaps is not None:
        am, ap = diag.gaps["amortization_gap"].mean(), diag.gaps["approximation_gap"].mean()
        status = "warning" if am > max(ap, 0.5) else "ok"
        if status == "warning":
            why = ("the encoder is the bottleneck: per-point optimisation closes most of the gap "
                   "(a larger encoder or more training helps)")
        elif am > ap:
            why = ("both gaps are small (amortization below 0.5 nats), the encoder's share is "
                   "the larger one")
        else:
            why = ("the amortization gap is small next to the approximation gap (the family "
                   "limits the fit, not the encoder)")
        rows.append(_row("Inference gaps", f"amortization {am:.3f}, approximation {ap:.3f} nats",
                         status, why, ADVICE["encoder"]))
    if diag.calibration is not None:
        rows += calibration_rows(diag.calibration, diag.sbc.simulation)
    if num_chains > 1:
        if "r_hat" in diag.posterior and len(diag.posterior):
            worst = float(diag.posterior["r_hat"].max())
            status = "ok" if worst < 1.01 else "warning" if worst < 1.1 else "failing"
            rows.append(_row("R-hat across runs", f"max {worst:.3f}", status,
                             "runs with different seeds should agree on the same posterior; "
                             "local latents of separate VAEs are only identified up to rotation",
                             ADVICE["train"]))
        by_chain = diag.pointwise.groupby("chain")["log_px"].mean()
        spread = float(by_chain.max() - by_chain.min())
        rows.append(_row("Runs agree on log p(x)", f"spread {spread:.3f} nats",
                         "ok" if spread < 1.0 else "warning",
                         "difference between the best and worst run's mean log p(x)",
                         ADVICE["train"]))
    return pd.DataFrame(rows)
