"""Verdict rows of the checks that judge whether the model learned at all: convergence,
posterior collapse by information, reconstruction against the data mean, and calibration.

A verdict is a :class:`Verdict` (``check, value, status, why, advice``) with a :class:`Status`;
``advice`` says what to do next when the status is not ok (the report's top line collects them,
each linked to its check). The checks table (``Diagnostics.checks``, ``diagnostics_checks.csv``)
holds one row per verdict (:meth:`Verdict.as_row`), with the statuses written as ``ok``,
``warning``, ``failing``; a check that could not be computed reads ``warning`` there, with the
reason in ``why`` ("not computed: ..."), and :meth:`Verdict.from_row` reads it back.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import final

import pandas as pd

from ppl_vae.diagnostics.latent import ACTIVITY_THRESHOLD, KL_THRESHOLD

__all__ = ["ADVICE", "STATUSES", "Status", "Verdict", "calibration_rows", "collapse_rows",
           "convergence_row", "row", "verdict_table"]

STATUSES = ("ok", "warning", "failing")
NOT_COMPUTED = "not computed"


@final
class Status(enum.Enum):
    """How a check came out. ``value`` is the name written in the checks table."""

    PASS = "ok"
    WARN = "warning"
    FAIL = "failing"
    NOT_COMPUTED = NOT_COMPUTED

    @property
    def label(self) -> str:
        """The status column's string: a check that was not computed is a ``warning`` (nothing
        is known about it, so the user should look)."""
        return "warning" if self is Status.NOT_COMPUTED else self.value

    @property
    def severity(self) -> int:
        """0 for ok, 1 for warning or not computed, 2 for failing (the report's worst)."""
        return STATUSES.index(self.label)

    @classmethod
    def from_label(cls, label) -> Status:
        """``label`` as a Status (a Status is returned as it is); ``ValueError`` otherwise."""
        if isinstance(label, Status):
            return label
        try:
            return cls(label)
        except ValueError:
            raise ValueError(f"a check's status must be one of {[s.value for s in cls]}, "
                             f"got {label!r}") from None


@final
@dataclass(frozen=True)
class Verdict:
    """One check's verdict.

    Attributes
    ----------
    check : str
        The check's name (the report's row and anchor).
    value : str
        What was measured, in words and numbers.
    status : Status
    why : str
        The threshold or reasoning behind the status (for ``NOT_COMPUTED``: "not computed:
        <reason>").
    advice : str
        What to do next; shown only when the status is not ``PASS``.
    """

    check: str
    value: str
    status: Status
    why: str
    advice: str = ""

    def __post_init__(self):
        if not isinstance(self.status, Status):
            raise TypeError(f"Verdict.status must be a Status, got {self.status!r} for check "
                            f"{self.check!r} (use Status.from_label for a table's string)")

    @classmethod
    def not_computed(cls, check: str, reason: str | BaseException, advice: str = "") -> Verdict:
        """The verdict of a check that raised instead of computing: its reason (an exception's
        first line), never lost."""
        if isinstance(reason, BaseException):
            text = str(reason).strip()
            reason = text.splitlines()[0] if text else type(reason).__name__
        return cls(check, NOT_COMPUTED, Status.NOT_COMPUTED, f"{NOT_COMPUTED}: {reason}", advice)

    def as_row(self) -> dict:
        """The checks table's row (statuses as ``ok`` / ``warning`` / ``failing``)."""
        return {"check": self.check, "value": self.value, "status": self.status.label,
                "why": self.why, "advice": self.advice if self.status is not Status.PASS else ""}

    @classmethod
    def from_row(cls, row) -> Verdict:
        """A row of a checks table (a mapping, e.g. read back from ``diagnostics_checks.csv``)."""
        status = Status.from_label(row["status"])
        value = "" if _missing(row.get("value")) else str(row["value"])
        if status is Status.WARN and value.startswith(NOT_COMPUTED):
            status = Status.NOT_COMPUTED
        advice = row.get("advice")
        return cls(str(row["check"]), value, status, "" if _missing(row.get("why")) else
                   str(row["why"]), "" if _missing(advice) else str(advice))


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def verdict_table(verdicts) -> pd.DataFrame:
    """The checks table of ``verdicts`` (an iterable of :class:`Verdict`)."""
    return pd.DataFrame([v.as_row() for v in verdicts],
                        columns=["check", "value", "status", "why", "advice"])

ADVICE = {
    "train": "train longer: fit(..., epochs='auto') or more epochs (ppl-vae run --epochs auto)",
    "warmup": ("use KL warm-up or free bits: fit(..., objective=Objective(terms=[KLWarmup(...), "
               "FreeBits(...)])) (--kl-warmup-epochs, --free-bits); free bits make the code used "
               "but may cost held-out log p(x) where the decoder explains x alone: "
               "ppl_vae.compare (ppl-vae compare) shows both"),
    "family": "a richer guide family, such as the `flow` guide (--guide flow)",
    "particles": "more particles or an importance-weighted estimator (--num-particles, iwae)",
    "encoder": "a larger encoder or longer training (the encoder lags the per-point optimum)",
    "draws": ("estimate k-hat from more draws first (diagnose(..., num_draws=2000); ppl-vae "
              "report --num-draws 2000): with few draws a point's k-hat is noisy and the "
              "reliable range is smaller"),
}


def row(check, value, status, why, advice: str = "") -> dict:
    """The checks-table row of a verdict; ``status`` a :class:`Status` or its table string
    (``ValueError`` for anything else)."""
    return Verdict(check, value, Status.from_label(status), why, advice).as_row()


def convergence_row(conv) -> dict | None:
    """The "Convergence" row from a :class:`~ppl_vae.diagnostics.convergence.Convergence`."""
    if conv is None:
        return None
    series = "validation" if conv.column == "val_elbo" else "training"
    value = (f"{conv.gain_last_10pct:+.3f} nats per point over the last 10% of {conv.epochs} "
             f"epochs (slope {conv.slope:+.4f} +- {conv.slope_se:.4f} per epoch)")
    if conv.still_improving:
        return row("Convergence", value, "warning",
                   f"still improving: the {series} ELBO gained {conv.gain_last_10pct:.3f} nats "
                   f"per point over the last 10% of the epochs, a slope {conv.z:.1f} standard "
                   f"errors above zero over the last {conv.window} epochs{conv.lr_note}; the "
                   "model has not finished learning and every other check describes an "
                   "unfinished fit", _longer(conv.stopped_by))
    return row("Convergence", value, "ok",
               f"the {series} ELBO's slope over the last {conv.window} epochs{conv.lr_note} is "
               "within its noise (or below 0.02 nats per point per 10% of the epochs)"
               + ("; more epochs at the final learning rate would gain nothing measurable"
                  if conv.lr_note else ""))


def _longer(stopped_by) -> str:
    """How to train longer, given what ended this run (the advice must change the run)."""
    if stopped_by == "patience":
        return ("the stopping rule ended a run still rising by less than its tolerance per "
                "patience epochs: train again with a larger patience or a smaller tolerance "
                "(fit(..., loop=Loop(patience=..., tolerance=...)); --patience, --tolerance)")
    if stopped_by == "max_epochs":
        return "train longer: raise the epoch budget (fit(..., loop=Loop(max_epochs=...)); --max-epochs)"
    if stopped_by == "time_budget":
        return "train longer: raise the time budget (fit(..., loop=Loop(time_budget=...)); --time-budget)"
    return ADVICE["train"]


def collapse_rows(latent: pd.DataFrame, kl: dict, mi: float, mi_reason: str | None, num_points,
                  recon, reference_mi: float | None) -> list[dict]:
    """Active units, KL, mutual information (against log N and a reference) and the
    reconstruction against the decoder fed the prior mean."""
    rows = []
    if recon is not None:
        scale = max(0.1, 0.01 * abs(recon.recon_prior_mean))
        status = "failing" if recon.gain < scale else "ok"
        rows.append(row("Reconstruction vs data mean",
                        f"E_q log p(x|z) {recon.recon:.3f}, at the prior mean "
                        f"{recon.recon_prior_mean:.3f} nats (gain {recon.gain:+.3f})", status,
                        "the code z must make reconstructions better than the decoder fed the "
                        f"prior mean (failing below max(0.1 nats, 1% of it) = {scale:.3f}): "
                        + ("it does not, so z is unused or the decoder untrained, whatever else "
                           "holds" if status == "failing" else "it does"),
                        f"{ADVICE['train']}; if it stays, {ADVICE['warmup']}"))
    if kl["num_dims"]:
        rows.append(_active_units_row(kl, mi, recon))
        near_zero = not kl["kl_total"] >= 0.1
        rows.append(row("KL(q || prior)", f"{kl['kl_total']:.3f} nats",
                        "warning" if near_zero else "ok",
                        "near zero: z carries almost nothing about x" if near_zero else
                        "total over dimensions; near zero would mean z carries no information",
                        ADVICE["warmup"]))
    rows.append(_mi_row(mi, mi_reason, num_points, reference_mi))
    return rows


def _active_units_row(kl: dict, mi: float, recon) -> dict:
    """Unused dimensions are what the ELBO does with more dimensions than the data needs (each
    costs KL and buys nothing): they are flagged only when the code as a whole carries too little,
    judged by the mutual information and the reconstruction gain, not by the count."""
    active, dims = kl["active_units"], kl["num_dims"]
    definition = (f"a dimension is active when the encoder mean varies with x (Cov > "
                  f"{ACTIVITY_THRESHOLD}, Burda et al. 2016) and its KL to the prior is not "
                  f"near zero (>= {KL_THRESHOLD} nats)")
    value = f"{active} of {dims}"
    if active == 0:
        return row("Active units", value, "failing",
                   f"{definition}; none is: posterior collapse, z carries nothing about x",
                   ADVICE["warmup"])
    starved = (math.isfinite(mi) and mi < 0.1) or (
        recon is not None and recon.gain < max(0.1, 0.01 * abs(recon.recon_prior_mean)))
    if active < dims and starved:
        return row("Active units", value, "warning",
                   f"{definition}; {dims - active} sit on the prior and the active ones carry "
                   "too little (mutual information below 0.1 nats or no reconstruction gain): "
                   "partial collapse", ADVICE["warmup"])
    if active < dims:
        return row("Active units", value, "ok",
                   f"{definition}; {dims - active} of {dims} sit on the prior while the {active} "
                   "active ones carry the information (mutual information and reconstruction "
                   "gain are healthy): the ELBO leaves the dimensions it does not need unused "
                   "(each would cost KL and buy nothing), which is not collapse")
    return row("Active units", value, "ok", f"{definition}; every one is")


def _mi_row(mi, reason, num_points, reference_mi) -> dict:
    if reason is not None:
        return row("Mutual information I(x; z)", "does not apply", "ok", reason)
    if not math.isfinite(mi):
        return row("Mutual information I(x; z)", "not computed", "warning",
                   "the guide's local density cannot be evaluated pairwise (e.g. a conditional "
                   "flow), so I(x; z) was not estimated")
    ceiling = math.log(num_points)
    value = f"{mi:.3f} nats = {mi / ceiling:.0%} of log N = {ceiling:.2f}"
    status, why = ("warning", "below 0.1 nats the latent is nearly unused") if mi < 0.1 else (
        "ok", "how much the code tells apart data points (at most log N)")
    if reference_mi is not None and reference_mi > 0:
        share = mi / reference_mi
        value += f"; {share:.0%} of the reference's {reference_mi:.3f}"
        if share < 0.5:
            status = "failing" if share < 0.2 else "warning"
            why = (f"a trained model of the same kind reaches {reference_mi:.3f} nats; this one "
                   f"carries {share:.0%} of that information (warning below 50%, failing below "
                   "20%)")
        else:
            why += f"; {share:.0%} of what the reference model reaches"
    return row("Mutual information I(x; z)", value, status, why,
               f"{ADVICE['train']}, or {ADVICE['warmup']}")


def calibration_rows(table: pd.DataFrame | None, simulation: str) -> list[dict]:
    """SBC (ECDF with simultaneous bands and chi-square), interval coverage, z-scores and
    contraction, from :func:`~ppl_vae.diagnostics.calibration.calibration_table`."""
    if table is None or not len(table):
        return []
    n = len(table)

    def status(failed):
        return "ok" if failed == 0 else "warning" if failed <= max(1, n // 10) else "failing"

    rows = []
    bad = int((~(table["ecdf_ok"] & table["passed"])).sum())
    rows.append(row("Simulation-based calibration", f"{bad} of {n} dimensions fail", status(bad),
                    "ranks of simulated latents among guide draws must be uniform: the ECDF of "
                    "the ranks inside its simultaneous band (Säilynoja et al. 2022) and a "
                    f"chi-square test, family-wise level {table['ci_prob'].iloc[0]:.4g} per "
                    f"dimension; {simulation}", _calibration_advice(table)))
    cov_cols = [c for c in table if c.startswith("coverage_") and c != "coverage_ok"]
    bad = int((~table["coverage_ok"]).sum())
    worst = {c: float(table[c].min()) for c in cov_cols}
    rows.append(row("Interval coverage",
                    ", ".join(f"{c.split('_')[1]}: min {v:.0%}" for c, v in worst.items()),
                    status(bad), f"central intervals of the guide at levels "
                    f"{', '.join(c.split('_')[1] for c in cov_cols)} must contain the simulated "
                    f"latent that often ({bad} of {n} dimensions off beyond their binomial "
                    "error, Bonferroni)", _calibration_advice(table)))
    bad = int((~table["zscore_ok"]).sum())
    problems = sorted({p for p in table["problem"] if p})
    rows.append(row("Posterior z-scores and contraction",
                    f"mean z in [{table['z_mean'].min():+.2f}, {table['z_mean'].max():+.2f}], "
                    f"mean z^2 in [{table['z_ms'].min():.2f}, {table['z_ms'].max():.2f}], "
                    f"contraction median {table['contraction'].median():.2f}", status(bad),
                    "per dimension (Schad, Betancourt & Vasishth 2021): z = (posterior mean - "
                    "truth) / posterior sd has mean 0 and mean square 1 under calibration; "
                    "contraction 1 - Var_q / Var_prior is what the data taught"
                    + (f"; found: {'; '.join(problems)}" if problems else ""),
                    _calibration_advice(table)))
    return rows


def _calibration_advice(table) -> str:
    text = " ".join(table["problem"])
    if "overconfident" in text:
        return ADVICE["family"] + ", or " + ADVICE["particles"]
    if "biased" in text:
        return ADVICE["encoder"] + ", or " + ADVICE["family"]
    return ADVICE["family"]
